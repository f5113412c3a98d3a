# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by up.sh / down.sh, which source this file
# Shared settings and helpers for up.sh / down.sh. Sourced, not executed.
#
# Every setting can be overridden from the environment; the defaults are what
# the Rust integration tests expect to find in $STATE/env anyway, so tests
# should read that file rather than hard-code them.

INTEROP_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# State lives outside the repository: configs, certificates, logs, queue, mail.
STATE="${MISSIVE_INTEROP_DIR:-/tmp/missive-interop}"

OIDC_PORT="${MISSIVE_INTEROP_OIDC_PORT:-9470}"
SUBMISSION_PORT="${MISSIVE_INTEROP_SUBMISSION_PORT:-10587}" # STARTTLS required
SMTPS_PORT="${MISSIVE_INTEROP_SMTPS_PORT:-10465}"           # implicit TLS
PLAIN_PORT="${MISSIVE_INTEROP_PLAIN_PORT:-10026}"           # no TLS at all (for tls: none)
SINK_PORT="${MISSIVE_INTEROP_SINK_PORT:-10025}"             # smtp-sink, accepts everything
SINK_TEMPFAIL_PORT="${MISSIVE_INTEROP_SINK_TEMPFAIL_PORT:-10027}" # smtp-sink, 450 on RCPT
SINK_PERMFAIL_PORT="${MISSIVE_INTEROP_SINK_PERMFAIL_PORT:-10028}" # smtp-sink, 500 on RCPT

ACCESS_TOKEN_TTL="${MISSIVE_INTEROP_ACCESS_TOKEN_TTL:-60}"
SHORT_ACCESS_TOKEN_TTL="${MISSIVE_INTEROP_SHORT_ACCESS_TOKEN_TTL:-5}"
# Dovecot only accepts access tokens carrying this scope (empty: any scope).
REQUIRED_SCOPE="${MISSIVE_INTEROP_REQUIRED_SCOPE-smtp}"

OAUTH_USER="alice@missive.test"
CLIENT_ID="missive"
CLIENT_SECRET="missive-secret"
SHORT_CLIENT_ID="missive-short"
STRICT_CLIENT_ID="missive-oidc" # standard OpenID behaviour: exact redirect URI, offline_access needs prompt=consent
# Registered for missive-oidc; nothing listens there except `missive auth` in a test.
STRICT_REDIRECT_URI="http://127.0.0.1:${MISSIVE_INTEROP_OIDC_REDIRECT_PORT:-9471}/callback"
DOVECOT_CLIENT_ID="dovecot"
DOVECOT_CLIENT_SECRET="dovecot-secret"
PASSWORD_USER="carol@missive.test"
PASSWORD="carol-password"

LOG_DIR="$STATE/log"
RUN_DIR="$STATE/run"
TLS_DIR="$STATE/tls"
MAILDIR="$STATE/maildir" # the single Maildir every message is delivered to
DOVECOT_DIR="$STATE/dovecot"
DOVECOT_CONF="$DOVECOT_DIR/dovecot.conf"
POSTFIX_CONF_DIR="$STATE/postfix/etc"
POSTFIX_QUEUE_DIR="$STATE/postfix/spool"
POSTFIX_DATA_DIR="$STATE/postfix/data"
SASL_SOCKET="$POSTFIX_QUEUE_DIR/private/auth"

# Uid/gid that owns delivered mail (Postfix's virtual(8) refuses uids < 100).
MAIL_UID=65534
MAIL_GID=65534

SINKS=(sink sink-tempfail sink-permfail)

log() { printf '[interop %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# proc_running PID: true while PID exists and is not a zombie. Our daemons
# are orphans reparented to PID 1, which may reap them only seconds later.
proc_running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }" # field 3 (state) follows the parenthesised command name
  [[ ${stat:0:1} != Z ]]
}

# pid_alive NAME PATTERN: true if $RUN_DIR/NAME.pid names a running process
# whose command line contains PATTERN (guards against recycled pids).
pid_alive() {
  local pidfile="$RUN_DIR/$1.pid" pid
  [[ -f $pidfile ]] || return 1
  pid="$(<"$pidfile")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  proc_running "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# signal_pid NAME PATTERN: SIGTERM the recorded process, print its pid.
signal_pid() {
  local pid
  if pid_alive "$1" "$2"; then
    pid="$(<"$RUN_DIR/$1.pid")"
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    echo "$pid"
  fi
  rm -f "$RUN_DIR/$1.pid"
}

# wait_gone SECONDS PID...: wait for the processes to end, then SIGKILL the rest.
wait_gone() {
  local secs=$1 pid i
  shift
  for pid in "$@"; do
    for ((i = 0; i < secs * 10; i++)); do
      proc_running "$pid" || break
      sleep 0.1
    done
    if proc_running "$pid"; then
      log "pid $pid ignored SIGTERM, killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# port_open PORT: true if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

stop_all() {
  # Signal everything first, then wait: stopping one by one takes seconds each.
  local pids=() s pid port i
  pid="$(signal_pid oidc server.mjs)" && [[ -n $pid ]] && pids+=("$pid")
  for s in "${SINKS[@]}"; do
    pid="$(signal_pid "$s" smtp-sink)" && [[ -n $pid ]] && pids+=("$pid")
  done
  if [[ -f $POSTFIX_CONF_DIR/main.cf ]] && postfix -c "$POSTFIX_CONF_DIR" status >/dev/null 2>&1; then
    log "stopping postfix"
    postfix -c "$POSTFIX_CONF_DIR" stop >/dev/null 2>&1 || true
  fi
  if [[ -f $DOVECOT_DIR/run/master.pid ]]; then
    pid="$(<"$DOVECOT_DIR/run/master.pid")"
    if [[ $pid =~ ^[0-9]+$ ]] && proc_running "$pid" &&
      tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF dovecot; then
      log "stopping dovecot (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  fi
  if ((${#pids[@]})); then
    wait_gone 5 "${pids[@]}"
  fi
  # Postfix's stop returns before its daemons have closed their sockets; wait
  # until our ports are free so that a following start can bind them.
  for port in "$SUBMISSION_PORT" "$SMTPS_PORT" "$PLAIN_PORT" "$OIDC_PORT" "$SINK_PORT" "$SINK_TEMPFAIL_PORT" "$SINK_PERMFAIL_PORT"; do
    for ((i = 0; i < 50; i++)); do
      port_open "$port" || break
      sleep 0.1
    done
  done
}
