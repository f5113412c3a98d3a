#!/usr/bin/env bash
# Brings up missive's real-server interop harness on 127.0.0.1:
#
#   * OAuth2/OIDC server (panva oidc-provider, tests/interop/oidc/) on :9470
#   * Dovecot, used only as Postfix's SASL service (oauth2 introspection + passwd-file)
#   * Postfix: submission with STARTTLS required (:10587), implicit TLS (:10465),
#     plain no-TLS (:10026); everything delivered to one Maildir, $STATE/maildir
#   * smtp-sink on :10025 (accept + discard), :10027 (450 on RCPT), :10028 (500 on RCPT)
#
# and writes $STATE/env (shell KEY=value) and $STATE/env.json for the tests.
#
# Idempotent: stops what a previous run started, keeps the generated
# certificates, starts everything afresh (the OIDC server keeps its grants in
# memory, so every run mints a new refresh token). Needs root (apt-get, Postfix,
# Dovecot). State dir: $MISSIVE_INTEROP_DIR, default /tmp/missive-interop.
set -Eeuo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

START_SECONDS=$SECONDS

if [[ $(id -u) -ne 0 ]]; then
  echo "up.sh must run as root (it installs packages and starts Postfix/Dovecot)" >&2
  exit 1
fi

# On any failure: show the tail of every log, so CI output says what broke.
print_logs() {
  local f
  for f in "$LOG_DIR"/*.log; do
    [[ -s $f ]] || continue
    echo "----- tail -n 40 $f -----" >&2
    tail -n 40 "$f" >&2 || true
  done
}
# A half-started harness would only confuse the tests: stop what we started.
on_error() {
  local rc=$?
  trap - ERR
  echo "interop up.sh FAILED (exit $rc) at line ${BASH_LINENO[0]}: $BASH_COMMAND" >&2
  print_logs
  stop_all >/dev/null 2>&1 || true
  exit "$rc"
}
trap on_error ERR

die() {
  trap - ERR
  echo "interop up.sh FAILED: $*" >&2
  print_logs
  stop_all >/dev/null 2>&1 || true
  exit 1
}

# --------------------------------------------------------------------------
# 1. Packages.
# --------------------------------------------------------------------------
install_packages() {
  local need=()
  command -v dovecot >/dev/null || need+=(dovecot-core)
  { [[ -x /usr/sbin/postfix ]] && [[ -x /usr/sbin/smtp-sink ]]; } || need+=(postfix)
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  command -v python3 >/dev/null || need+=(python3) # env.json, self-check
  # Debian 12's nodejs is 18.x, which oidc-provider 8 supports; the machine
  # image normally has Node 20 already.
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
  ((${#need[@]})) || return 0

  log "installing: ${need[*]}"
  # "No configuration": the package must not write /etc/postfix/main.cf nor
  # start a system-wide Postfix; ours runs from its own config directory.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  # Keep maintainer scripts from starting the system Dovecot/Postfix (there is
  # no systemd; invoke-rc.d would try SysV scripts). Only if the image has no
  # policy already, and removed again afterwards.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  {
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}"
  } >>"$LOG_DIR/apt.log" 2>&1 || rc=$?
  if ((own_policy)); then rm -f /usr/sbin/policy-rc.d; fi
  if ((rc != 0)); then
    die "apt-get failed (exit $rc), see $LOG_DIR/apt.log"
  fi
}

# --------------------------------------------------------------------------
# 2. TLS: a private CA and a server certificate for localhost / 127.0.0.1.
# --------------------------------------------------------------------------
make_tls() {
  # Reuse what a previous run made while it is valid for at least a day and
  # was issued by the CA next to it.
  if [[ -s $TLS_DIR/ca.crt && -s $TLS_DIR/server.crt && -s $TLS_DIR/server.key ]] &&
    openssl x509 -in "$TLS_DIR/server.crt" -noout -checkend 86400 >/dev/null 2>&1 &&
    openssl verify -CAfile "$TLS_DIR/ca.crt" "$TLS_DIR/server.crt" >/dev/null 2>&1; then
    return 0
  fi
  log "generating test CA and server certificate"
  # Explicit extension sections instead of openssl.cnf defaults: rustls/webpki
  # rejects an end-entity certificate that is a CA or has no SAN, and wants a
  # CA with keyCertSign.
  cat >"$TLS_DIR/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  (
    trap - ERR # the parent's trap reports the failure once
    umask 077
    openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -config "$TLS_DIR/openssl.cnf" -extensions ca_ext \
      -subj "/O=missive interop/CN=missive interop test CA" \
      -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt"
    openssl req -new -newkey rsa:2048 -nodes -sha256 \
      -config "$TLS_DIR/openssl.cnf" -subj "/O=missive interop/CN=localhost" \
      -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr"
    openssl x509 -req -in "$TLS_DIR/server.csr" -sha256 -days 825 \
      -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
      -extfile "$TLS_DIR/openssl.cnf" -extensions server_ext -out "$TLS_DIR/server.crt"
  ) >>"$LOG_DIR/tls.log" 2>&1
  rm -f "$TLS_DIR/server.csr"
  # Certificates are public; clients running as any user must read the CA.
  chmod 644 "$TLS_DIR/ca.crt" "$TLS_DIR/server.crt"
}

# --------------------------------------------------------------------------
# 3. OAuth2 server.
# --------------------------------------------------------------------------
start_oidc() {
  local dir="$INTEROP_SRC/oidc" want have=""
  # npm ci wipes node_modules every time; skip it when the lock file is
  # unchanged since the last successful install.
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [[ -f $dir/node_modules/.missive-lock.sha256 ]]; then
    have="$(<"$dir/node_modules/.missive-lock.sha256")"
  fi
  if [[ $want != "$have" || ! -d $dir/node_modules/oidc-provider ]]; then
    log "npm ci (oidc-provider)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >>"$LOG_DIR/npm.log" 2>&1 ||
      die "npm ci failed, see $LOG_DIR/npm.log"
    echo "$want" >"$dir/node_modules/.missive-lock.sha256"
  fi

  log "starting OIDC server on 127.0.0.1:$OIDC_PORT"
  # setsid: own session, so the daemon outlives this script and no terminal
  # signal reaches it.
  OIDC_PORT="$OIDC_PORT" \
    OIDC_ACCESS_TOKEN_TTL="$ACCESS_TOKEN_TTL" \
    OIDC_SHORT_ACCESS_TOKEN_TTL="$SHORT_ACCESS_TOKEN_TTL" \
    OIDC_DEFAULT_USER="$OAUTH_USER" \
    OIDC_CC_USER="$OAUTH_USER" \
    OIDC_CLIENT_ID="$CLIENT_ID" OIDC_CLIENT_SECRET="$CLIENT_SECRET" \
    OIDC_SHORT_CLIENT_ID="$SHORT_CLIENT_ID" \
    OIDC_STRICT_CLIENT_ID="$STRICT_CLIENT_ID" OIDC_STRICT_REDIRECT_URI="$STRICT_REDIRECT_URI" \
    OIDC_DOVECOT_CLIENT_ID="$DOVECOT_CLIENT_ID" OIDC_DOVECOT_CLIENT_SECRET="$DOVECOT_CLIENT_SECRET" \
    NODE_ENV=test \
    setsid node "$dir/server.mjs" >>"$LOG_DIR/oidc.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/oidc.pid"
}

# --------------------------------------------------------------------------
# 4. Dovecot (SASL only).
# --------------------------------------------------------------------------
write_dovecot_conf() {
  mkdir -p "$DOVECOT_DIR/run" "$DOVECOT_DIR/state"
  cat >"$DOVECOT_DIR/users" <<EOF
# passwd-file for AUTH PLAIN / LOGIN (plain-text scheme: test data only)
$PASSWORD_USER:{PLAIN}$PASSWORD::::::
EOF
  chmod 640 "$DOVECOT_DIR/users"
  chgrp dovecot "$DOVECOT_DIR/users"

  cat >"$DOVECOT_DIR/oauth2.conf.ext" <<EOF
# Token check: RFC 7662 introspection against the interop OIDC server. The
# credentials in the URL become HTTP Basic auth (client_secret_basic).
introspection_mode = post
introspection_url = http://$DOVECOT_CLIENT_ID:$DOVECOT_CLIENT_SECRET@127.0.0.1:$OIDC_PORT/token/introspection
# The server puts the mailbox into an "email" claim; it must equal the SASL
# user name (XOAUTH2 user=, OAUTHBEARER a=), lower-cased.
username_attribute = email
username_format = %Lu
active_attribute = active
active_value = true
scope = $REQUIRED_SCOPE
timeout_msecs = 5000
max_parallel_connections = 10
EOF
  chmod 640 "$DOVECOT_DIR/oauth2.conf.ext"
  chgrp dovecot "$DOVECOT_DIR/oauth2.conf.ext"

  cat >"$DOVECOT_CONF" <<EOF
# Generated by tests/interop/up.sh. Dovecot here is only the SASL server for
# Postfix: no IMAP/POP3/LMTP listeners.
protocols =
listen = 127.0.0.1
base_dir = $DOVECOT_DIR/run
state_dir = $DOVECOT_DIR/state
instance_name = missive-interop
log_path = $LOG_DIR/dovecot.log
info_log_path = $LOG_DIR/dovecot.log
debug_log_path = $LOG_DIR/dovecot.log
ssl = no

auth_mechanisms = plain login xoauth2 oauthbearer
# Postfix talks to us over a local socket and enforces TLS itself (AUTH is not
# offered before STARTTLS on the TLS ports); the no-TLS port needs plain auth.
disable_plaintext_auth = no
# Default is 2 s per failed attempt, per client IP: every test client is
# 127.0.0.1, so one rejected token would slow down every later test.
auth_failure_delay = 0
auth_verbose = yes
auth_debug = ${MISSIVE_INTEROP_DOVECOT_DEBUG:-no}
auth_cache_size = 0
auth_username_format = %Lu

passdb {
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%Lu $DOVECOT_DIR/users
}
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $DOVECOT_DIR/oauth2.conf.ext
}
# Never consulted for SASL-only use, but Dovecot wants one.
userdb {
  driver = static
  args = uid=$MAIL_UID gid=$MAIL_GID home=/nonexistent
}

# Auth penalty: after a failed login Dovecot delays the next authentications
# from the same IP by 2, 4, 8, 15 s (tracked by anvil), independently of
# auth_failure_delay; with every test on 127.0.0.1 that stalls whole test runs
# and makes Postfix give up ("454 4.7.0 ... Connection lost to authentication
# server"). With mode = 0 the master does not create this listener at all, and
# the auth process runs without penalties.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}

service auth {
  unix_listener $SASL_SOCKET {
    mode = 0660
    user = postfix
    group = postfix
  }
}
EOF
}

start_dovecot() {
  log "starting dovecot"
  # Start from an empty base_dir: a stale anvil-auth-penalty socket left by
  # some other configuration makes the auth process retry connecting to it
  # for 5 s on its first request. Without the socket (ENOENT) the penalty
  # code gives up at once, silently.
  rm -rf "$DOVECOT_DIR/run"
  mkdir -p "$DOVECOT_DIR/run"
  rm -f "$SASL_SOCKET"
  dovecot -c "$DOVECOT_CONF" >>"$LOG_DIR/dovecot.log" 2>&1 || die "dovecot failed to start"
}

# --------------------------------------------------------------------------
# 5. Postfix.
# --------------------------------------------------------------------------
write_postfix_conf() {
  mkdir -p "$POSTFIX_CONF_DIR" "$POSTFIX_QUEUE_DIR" "$POSTFIX_DATA_DIR"
  chown postfix:postfix "$POSTFIX_DATA_DIR"
  install -d -o "$MAIL_UID" -g "$MAIL_GID" -m 755 "$MAILDIR"

  cat >"$POSTFIX_CONF_DIR/main.cf" <<EOF
# Generated by tests/interop/up.sh: a loopback-only Postfix that accepts
# authenticated submissions and delivers every recipient, any domain, to local
# Maildirs. Nothing is ever relayed outward.
compatibility_level = 3.6
queue_directory = $POSTFIX_QUEUE_DIR
data_directory = $POSTFIX_DATA_DIR
mail_owner = postfix
setgid_group = postdrop

myhostname = mail.missive.test
mydomain = missive.test
myorigin = \$mydomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
biff = no
append_dot_mydomain = no

# Logging without syslog (postlogd, see master.cf).
maillog_file = $LOG_DIR/postfix.log
maillog_file_prefixes = $LOG_DIR

# Delivery: every domain is a virtual mailbox domain (static:all matches any
# domain) and every recipient maps to ONE Maildir, $MAILDIR (virtual(8) does
# not allow regexp \$1 substitution, so no per-recipient folders; each copy
# carries Delivered-To: / X-Original-To: with its envelope recipient). Every
# other route is an error, so nothing can leave the machine.
virtual_mailbox_domains = static:all
virtual_mailbox_base = $STATE
virtual_mailbox_maps = static:$(basename "$MAILDIR")/
virtual_uid_maps = static:$MAIL_UID
virtual_gid_maps = static:$MAIL_GID
virtual_transport = virtual
local_transport = error:5.1.1 local delivery is disabled in the interop harness
default_transport = error:5.7.1 outbound delivery is disabled in the interop harness
relay_transport = error:5.7.1 outbound delivery is disabled in the interop harness
alias_maps =
alias_database =
local_recipient_maps =
message_size_limit = 52428800
virtual_mailbox_limit = 104857600

# Only authenticated clients may send (per-service overrides in master.cf).
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
smtpd_sasl_auth_enable = no
smtpd_sasl_type = dovecot
smtpd_sasl_path = $SASL_SOCKET
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_sasl_authenticated_header = no
broken_sasl_auth_clients = no

# OAuth2 bearer tokens (Microsoft's run to 2-4 KB) arrive as the SASL initial
# response on the AUTH command line: the default 2048-byte line limit would
# cut them; continuation lines are bounded by smtpd_sasl_response_limit.
line_length_limit = 65536
smtpd_sasl_response_limit = 65536

smtpd_tls_cert_file = $TLS_DIR/server.crt
smtpd_tls_key_file = $TLS_DIR/server.key
smtpd_tls_security_level = none
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes

# Tests run many sessions from 127.0.0.1, some of them failing on purpose:
# no tarpitting, no per-client caps.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_junk_command_limit = 1000
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_auth_rate_limit = 0
EOF

  # chroot column is "n" everywhere: no copying of libraries/configs into the
  # queue dir, and absolute paths (SASL socket, certs) just work.
  cat >"$POSTFIX_CONF_DIR/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$SUBMISSION_PORT inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
127.0.0.1:$SMTPS_PORT inet n - n - - smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
127.0.0.1:$PLAIN_PORT inet n - n - - smtpd
  -o syslog_name=postfix/plain
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
  -o smtpd_sasl_auth_enable=yes
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
virtual    unix  -       n       n       -       -       virtual
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
EOF

  # Creates the queue directories (incl. private/, where Dovecot's socket
  # goes) with Postfix's ownership and modes, and checks the config.
  postfix -c "$POSTFIX_CONF_DIR" check >>"$LOG_DIR/postfix-start.log" 2>&1 ||
    die "postfix check failed, see $LOG_DIR/postfix-start.log"
}

start_postfix() {
  log "starting postfix"
  postfix -c "$POSTFIX_CONF_DIR" start >>"$LOG_DIR/postfix-start.log" 2>&1 ||
    die "postfix failed to start, see $LOG_DIR/postfix-start.log"
}

# --------------------------------------------------------------------------
# 6. smtp-sink instances (for throughput and failure-reply tests).
# --------------------------------------------------------------------------
start_sink() {
  local name=$1 port=$2
  shift 2
  # -u nobody: required when started as root. -m: connections served at once.
  # backlog 1000 so benchmark bursts queue instead of being refused.
  setsid smtp-sink -u nobody -m 1000 -h sink.missive.test "$@" "127.0.0.1:$port" 1000 \
    >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

# --------------------------------------------------------------------------
# Readiness.
# --------------------------------------------------------------------------
wait_for() { # DESCRIPTION SECONDS COMMAND...
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@"; then return 0; fi
    sleep 0.1
  done
  die "timed out after ${secs}s waiting for $what"
}

sasl_socket_ready() { [[ -S $SASL_SOCKET ]]; }

# --------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------
mkdir -p "$STATE" "$LOG_DIR" "$RUN_DIR" "$TLS_DIR"
chmod 755 "$STATE"
# No env file unless this run succeeds: tests must not find a stale one.
rm -f "$STATE/env" "$STATE/env.json"
# Fresh logs per run (previous ones kept as *.log.old for post-mortems).
for f in "$LOG_DIR"/*.log; do
  if [[ -e $f ]]; then mv -f "$f" "$f.old"; fi
done
install_packages

stop_all # a previous run's daemons (no-op on a fresh machine)

for port in "$OIDC_PORT" "$SUBMISSION_PORT" "$SMTPS_PORT" "$PLAIN_PORT" "$SINK_PORT" "$SINK_TEMPFAIL_PORT" "$SINK_PERMFAIL_PORT"; do
  if port_open "$port"; then
    die "127.0.0.1:$port is already in use by another program (override with MISSIVE_INTEROP_*_PORT)"
  fi
done

make_tls
start_oidc
write_postfix_conf
write_dovecot_conf
start_dovecot
start_postfix
start_sink sink "$SINK_PORT"
start_sink sink-tempfail "$SINK_TEMPFAIL_PORT" -r RCPT
start_sink sink-permfail "$SINK_PERMFAIL_PORT" -f RCPT

wait_for "OIDC server" 30 curl -fsS -o /dev/null "http://127.0.0.1:$OIDC_PORT/test/health"
wait_for "Dovecot auth socket $SASL_SOCKET" 20 sasl_socket_ready
for port in "$SUBMISSION_PORT" "$SMTPS_PORT" "$PLAIN_PORT" "$SINK_PORT" "$SINK_TEMPFAIL_PORT" "$SINK_PERMFAIL_PORT"; do
  wait_for "127.0.0.1:$port" 20 port_open "$port"
done

# End-to-end self-check, which also warms up Dovecot's auth process: AUTH
# PLAIN (Postfix -> Dovecot passwd-file) and AUTH XOAUTH2 with a fresh token
# (Postfix -> Dovecot -> token introspection) on the no-TLS port.
log "self-check: AUTH PLAIN and XOAUTH2 through Postfix"
python3 - "$OIDC_PORT" "$PLAIN_PORT" "$CLIENT_ID" "$CLIENT_SECRET" "$PASSWORD_USER" "$PASSWORD" \
  >>"$LOG_DIR/self-check.log" 2>&1 <<'PY' || die "self-check failed, see $LOG_DIR/self-check.log"
import base64, json, smtplib, sys, urllib.parse, urllib.request
oidc, smtp_port, cid, secret, user, password = sys.argv[1:]
def post(path, data, headers):
    req = urllib.request.Request(f"http://127.0.0.1:{oidc}{path}", data=data, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)
grant = post("/test/grant", b'{"user": "selfcheck@missive.test"}', {"content-type": "application/json"})
basic = base64.b64encode(f"{cid}:{secret}".encode()).decode()
tok = post("/token", urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]}).encode(),
           {"authorization": f"Basic {basic}", "content-type": "application/x-www-form-urlencoded"})
for mech, ir in (("PLAIN", f"\0{user}\0{password}"), ("XOAUTH2", f"user=selfcheck@missive.test\x01auth=Bearer {tok['access_token']}\x01\x01")):
    with smtplib.SMTP("127.0.0.1", int(smtp_port), timeout=20) as s:
        s.ehlo("selfcheck.missive.test")
        code, text = s.docmd("AUTH", f"{mech} {base64.b64encode(ir.encode()).decode()}")
        print(mech, code, text.decode())
        if code != 235:
            sys.exit(f"AUTH {mech} failed: {code} {text.decode()}")
PY

# A refresh token for alice, as if she had consented in a browser. Tests that
# use it concurrently would trip rotation reuse detection: each test that
# refreshes should mint its own (POST $INTEROP_OAUTH_TEST_GRANT_URL).
grant_json="$(curl -fsS -X POST -H 'content-type: application/json' -d '{}' \
  "http://127.0.0.1:$OIDC_PORT/test/grant")" || die "could not mint a refresh token"
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
REFRESH_TOKEN="$(json_field refresh_token <<<"$grant_json")"
GRANT_ID="$(json_field grant_id <<<"$grant_json")"

ISSUER="http://127.0.0.1:$OIDC_PORT"
# Values never contain whitespace or quotes, except INTEROP_OAUTH_SCOPE which
# is single-quoted; env.json carries the same keys for non-shell readers.
env_tmp="$STATE/env.tmp"
cat >"$env_tmp" <<EOF
INTEROP_DIR=$STATE
INTEROP_LOG_DIR=$LOG_DIR
INTEROP_SMTP_HOST=127.0.0.1
INTEROP_SMTP_TLS_NAME=localhost
INTEROP_SMTP_SUBMISSION_PORT=$SUBMISSION_PORT
INTEROP_SMTP_SMTPS_PORT=$SMTPS_PORT
INTEROP_SMTP_PLAIN_PORT=$PLAIN_PORT
INTEROP_SMTP_CA_FILE=$TLS_DIR/ca.crt
INTEROP_MAILDIR=$MAILDIR
INTEROP_SMTP_USER=$PASSWORD_USER
INTEROP_SMTP_PASSWORD=$PASSWORD
INTEROP_OAUTH_USER=$OAUTH_USER
INTEROP_OAUTH_ISSUER=$ISSUER
INTEROP_OAUTH_TOKEN_URL=$ISSUER/token
INTEROP_OAUTH_AUTHORIZATION_URL=$ISSUER/auth
INTEROP_OAUTH_INTROSPECTION_URL=$ISSUER/token/introspection
INTEROP_OAUTH_REVOCATION_URL=$ISSUER/token/revocation
INTEROP_OAUTH_CLIENT_ID=$CLIENT_ID
INTEROP_OAUTH_CLIENT_SECRET=$CLIENT_SECRET
INTEROP_OAUTH_SHORT_CLIENT_ID=$SHORT_CLIENT_ID
INTEROP_OAUTH_OIDC_CLIENT_ID=$STRICT_CLIENT_ID
INTEROP_OAUTH_OIDC_REDIRECT_URI=$STRICT_REDIRECT_URI
INTEROP_OAUTH_ACCESS_TOKEN_TTL=$ACCESS_TOKEN_TTL
INTEROP_OAUTH_SHORT_ACCESS_TOKEN_TTL=$SHORT_ACCESS_TOKEN_TTL
INTEROP_OAUTH_SCOPE='openid email offline_access smtp'
INTEROP_OAUTH_REQUIRED_SCOPE=$REQUIRED_SCOPE
INTEROP_OAUTH_CC_USER=$OAUTH_USER
INTEROP_OAUTH_DOVECOT_CLIENT_ID=$DOVECOT_CLIENT_ID
INTEROP_OAUTH_DOVECOT_CLIENT_SECRET=$DOVECOT_CLIENT_SECRET
INTEROP_OAUTH_REFRESH_TOKEN=$REFRESH_TOKEN
INTEROP_OAUTH_GRANT_ID=$GRANT_ID
INTEROP_OAUTH_TEST_GRANT_URL=$ISSUER/test/grant
INTEROP_OAUTH_TEST_REVOKE_URL=$ISSUER/test/revoke
INTEROP_OAUTH_MINT_CMD=$INTEROP_SRC/oidc/mint.mjs
INTEROP_SINK_PORT=$SINK_PORT
INTEROP_SINK_TEMPFAIL_PORT=$SINK_TEMPFAIL_PORT
INTEROP_SINK_PERMFAIL_PORT=$SINK_PERMFAIL_PORT
EOF
python3 - "$env_tmp" "$STATE/env.json.tmp" <<'PY'
import json, shlex, sys
out = {}
for line in open(sys.argv[1]):
    key, _, value = line.rstrip("\n").partition("=")
    out[key] = shlex.split(value)[0] if value else ""
json.dump(out, open(sys.argv[2], "w"), indent=2)
PY
chmod 644 "$env_tmp" "$STATE/env.json.tmp"
mv -f "$env_tmp" "$STATE/env"
mv -f "$STATE/env.json.tmp" "$STATE/env.json"

log "ready in $((SECONDS - START_SECONDS))s: source $STATE/env (or read $STATE/env.json)"
