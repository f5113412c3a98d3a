#!/usr/bin/env python3
"""End-to-end smoke test of the interop harness (tests/interop/up.sh).

Standard library only. Reads $MISSIVE_INTEROP_DIR/env (default
/tmp/missive-interop/env), then exercises the OAuth2 server, Postfix + Dovecot
(XOAUTH2, OAUTHBEARER, PLAIN, LOGIN over STARTTLS / implicit TLS / no TLS) and
the smtp-sink instances. Prints every server reply that matters verbatim
(`-v` also prints the raw SMTP dialogue of the rejection cases) and ends with
"N passed, N failed"; exit status 1 if anything failed.
"""

import base64
import http.cookiejar
import json
import os
import secrets
import shlex
import smtplib
import socket
import ssl
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import hashlib
from email.message import EmailMessage

VERBOSE = "-v" in sys.argv[1:]
STATE = os.environ.get("MISSIVE_INTEROP_DIR", "/tmp/missive-interop")


def load_env(path):
    env = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


try:
    E = load_env(os.path.join(STATE, "env"))
    socket.create_connection(("127.0.0.1", int(E["INTEROP_OAUTH_ISSUER"].rsplit(":", 1)[1])), timeout=2).close()
except (OSError, KeyError) as exc:
    sys.exit(f"smoke.py: the interop harness is not up ({exc}); run tests/interop/up.sh first")
HOST = E["INTEROP_SMTP_HOST"]
USER = E["INTEROP_OAUTH_USER"]
RCPT = "bob@missive.test"
RESULTS = []  # (name, ok, detail)


def check(name):
    """Decorator: run a check, record pass/fail, keep going."""

    def wrap(fn):
        t0 = time.monotonic()
        try:
            detail = fn()
            RESULTS.append((name, True, detail))
            print(f"PASS {name} ({time.monotonic() - t0:.2f}s)" + (f": {detail}" if detail else ""))
        except Exception as exc:  # noqa: BLE001 - a smoke test reports everything
            RESULTS.append((name, False, repr(exc)))
            print(f"FAIL {name}: {exc!r}")
            if VERBOSE:
                traceback.print_exc()
        return fn

    return wrap


# ---------------------------------------------------------------- OAuth2 ----

def http_post(url, form=None, json_body=None, basic=None):
    headers = {}
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["content-type"] = "application/json"
    else:
        data = urllib.parse.urlencode(form or {}).encode()
        headers["content-type"] = "application/x-www-form-urlencoded"
    if basic:
        # RFC 6749 §2.3.1: form-urlencode id and secret before base64.
        cred = f"{urllib.parse.quote(basic[0], safe='')}:{urllib.parse.quote(basic[1], safe='')}"
        headers["authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


CLIENT = (E["INTEROP_OAUTH_CLIENT_ID"], E["INTEROP_OAUTH_CLIENT_SECRET"])


def refresh(rt, auth="basic", client=CLIENT):
    form = {"grant_type": "refresh_token", "refresh_token": rt}
    if auth == "basic":
        return http_post(E["INTEROP_OAUTH_TOKEN_URL"], form, basic=client)
    form.update(client_id=client[0], client_secret=client[1])
    return http_post(E["INTEROP_OAUTH_TOKEN_URL"], form)


def mint(**body):
    status, out = http_post(E["INTEROP_OAUTH_TEST_GRANT_URL"], json_body=body)
    assert status == 200, (status, out)
    return out


def introspect(token):
    status, out = http_post(
        E["INTEROP_OAUTH_INTROSPECTION_URL"],
        {"token": token},
        basic=(E["INTEROP_OAUTH_DOVECOT_CLIENT_ID"], E["INTEROP_OAUTH_DOVECOT_CLIENT_SECRET"]),
    )
    assert status == 200, (status, out)
    return out


# ------------------------------------------------------------------ SMTP ----

def tls_context():
    ctx = ssl.create_default_context(cafile=E["INTEROP_SMTP_CA_FILE"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def xoauth2(user, token):
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def oauthbearer(user, token, port):
    # RFC 7628 GS2 header "n,a=<user>," then host/port/auth key-value pairs.
    s = f"n,a={user},\x01host={HOST}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(s.encode()).decode()


def message(subject, to=RCPT, sender=None):
    msg = EmailMessage()
    msg["From"] = sender or USER
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{secrets.token_hex(12)}@smoke.missive.test>"
    msg.set_content(f"smoke test: {subject}\n")
    return msg


def smtp_starttls(port=None):
    s = smtplib.SMTP(HOST, port or int(E["INTEROP_SMTP_SUBMISSION_PORT"]), timeout=15)
    s.ehlo("smoke.missive.test")
    s.starttls(context=tls_context())
    s.ehlo("smoke.missive.test")
    return s


def auth_initial(s, mech, initial):
    """AUTH with an initial response; returns (code, text) of the final reply."""
    code, text = s.docmd("AUTH", f"{mech} {initial}")
    if code == 334:
        # Failure challenge (XOAUTH2/OAUTHBEARER error JSON): answer it with an
        # empty line, as RFC 7628 §3.2.3 / Google's XOAUTH2 doc require.
        code, text = s.docmd("")
    return code, text


def send_and_quit(s, msg):
    refused = s.send_message(msg)
    assert not refused, refused
    s.quit()


class RawSmtp:
    """Minimal SMTP client that keeps every byte exchanged, for the report."""

    def __init__(self, port, implicit_tls=False):
        self.log = []
        sock = socket.create_connection((HOST, port), timeout=15)
        if implicit_tls:
            sock = tls_context().wrap_socket(sock, server_hostname=HOST)
        self.sock = sock
        self.buf = b""
        self.reply()

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            self.log.append(b"S: " + line)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), lines

    def cmd(self, text):
        data = text.encode() if isinstance(text, str) else text
        shown = data if len(data) < 120 else data[:100] + b"...(%d bytes)" % len(data)
        self.log.append(b"C: " + shown)
        self.sock.sendall(data + b"\r\n")
        return self.reply()

    def starttls(self):
        code, _ = self.cmd("STARTTLS")
        assert code == 220, code
        self.sock = tls_context().wrap_socket(self.sock, server_hostname=HOST)
        self.log.append(b"   [TLS established]")

    def close(self):
        try:
            self.cmd("QUIT")
        except (OSError, ConnectionError):
            pass
        self.sock.close()


def raw_auth(port, mech, initial, starttls=True, implicit_tls=False):
    c = RawSmtp(port, implicit_tls=implicit_tls)
    c.cmd("EHLO smoke.missive.test")
    if starttls:
        c.starttls()
        c.cmd("EHLO smoke.missive.test")
    code, lines = c.cmd(f"AUTH {mech} {initial}")
    first = (code, lines[-1])
    final = None
    if code == 334:
        final_code, final_lines = c.cmd("")
        final = (final_code, final_lines[-1])
    c.close()
    if VERBOSE:
        print("\n".join("      " + l.decode(errors="replace") for l in c.log))
    return first, final


def decode_334(line):
    return base64.b64decode(line[4:]).decode()


def maildir_find(message_id, recipient=RCPT, timeout=15.0):
    """Path of the delivered copy of message_id for recipient (one Maildir
    holds all mail; each copy starts with Delivered-To: <recipient>)."""
    new = os.path.join(E["INTEROP_MAILDIR"], "new")
    needle = message_id.encode()
    rcpt = f"Delivered-To: {recipient.lower()}".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isdir(new):
            for name in os.listdir(new):
                path = os.path.join(new, name)
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except FileNotFoundError:  # moved to cur/ by someone else
                    continue
                if needle in data and rcpt in data.split(b"\n\n", 1)[0]:
                    return path
        time.sleep(0.1)
    raise AssertionError(f"{message_id} for {recipient} not in {new} within {timeout}s")


SENT = []  # message ids expected in bob's Maildir

# ----------------------------------------------------------------- checks ----

state = {}


@check("refresh_token grant (client_secret_basic) rotates the refresh token")
def _():
    # Not INTEROP_OAUTH_REFRESH_TOKEN: refreshing rotates it, and the tests
    # may still want it. A fresh grant lets the smoke test run any number of
    # times against one up.sh.
    g = mint()
    rt0 = g["refresh_token"]
    status, out = refresh(rt0)
    assert status == 200, (status, out)
    assert out["token_type"] == "Bearer" and out["access_token"], out
    assert out["expires_in"] == int(E["INTEROP_OAUTH_ACCESS_TOKEN_TTL"]), out
    assert out["refresh_token"] != rt0, "refresh token did not rotate"
    state.update(rt0=rt0, rt1=out["refresh_token"], at=out["access_token"], grant=g["grant_id"])
    return f"expires_in={out['expires_in']} scope={out['scope']!r} keys={sorted(out)}"


@check("refresh_token grant (client_secret_post) rotates again")
def _():
    status, out = refresh(state["rt1"], auth="post")
    assert status == 200, (status, out)
    assert out["refresh_token"] not in (state["rt0"], state["rt1"])
    state.update(rt2=out["refresh_token"], at=out["access_token"])


@check("introspection (as Dovecot) of the access token")
def _():
    out = introspect(state["at"])
    assert out["active"] is True and out["email"] == USER, out
    assert "smtp" in out["scope"].split(), out
    return json.dumps(out, sort_keys=True)


@check("XOAUTH2 over STARTTLS (submission) delivers")
def _():
    s = smtp_starttls()
    assert "STARTTLS" not in s.esmtp_features, "STARTTLS still offered after TLS"
    auth_line = s.esmtp_features.get("auth", "")
    code, text = auth_initial(s, "XOAUTH2", xoauth2(USER, state["at"]))
    assert code == 235, (code, text)
    msg = message("xoauth2 starttls")
    send_and_quit(s, msg)
    SENT.append(msg["Message-ID"])
    return f"AUTH advertised after TLS: {auth_line!r}; reply {code} {text.decode()!r}"


@check("OAUTHBEARER over STARTTLS (submission) delivers")
def _():
    port = int(E["INTEROP_SMTP_SUBMISSION_PORT"])
    s = smtp_starttls()
    code, text = auth_initial(s, "OAUTHBEARER", oauthbearer(USER, state["at"], port))
    assert code == 235, (code, text)
    msg = message("oauthbearer starttls")
    send_and_quit(s, msg)
    SENT.append(msg["Message-ID"])
    return f"{code} {text.decode()!r}"


@check("XOAUTH2 over implicit TLS (smtps) delivers")
def _():
    s = smtplib.SMTP_SSL(HOST, int(E["INTEROP_SMTP_SMTPS_PORT"]), timeout=15, context=tls_context())
    s.ehlo("smoke.missive.test")
    code, text = auth_initial(s, "XOAUTH2", xoauth2(USER, state["at"]))
    assert code == 235, (code, text)
    msg = message("xoauth2 implicit tls")
    send_and_quit(s, msg)
    SENT.append(msg["Message-ID"])


@check("AUTH PLAIN over STARTTLS delivers")
def _():
    s = smtp_starttls()
    initial = base64.b64encode(f"\0{E['INTEROP_SMTP_USER']}\0{E['INTEROP_SMTP_PASSWORD']}".encode()).decode()
    code, text = s.docmd("AUTH", f"PLAIN {initial}")
    assert code == 235, (code, text)
    msg = message("plain starttls", sender=E["INTEROP_SMTP_USER"])
    send_and_quit(s, msg)
    SENT.append(msg["Message-ID"])


@check("AUTH LOGIN on the no-TLS port delivers")
def _():
    s = smtplib.SMTP(HOST, int(E["INTEROP_SMTP_PLAIN_PORT"]), timeout=15)
    s.ehlo("smoke.missive.test")
    assert "starttls" not in s.esmtp_features, s.esmtp_features
    code, text = s.docmd("AUTH", "LOGIN")
    assert code == 334, (code, text)
    code, text = s.docmd(base64.b64encode(E["INTEROP_SMTP_USER"].encode()).decode())
    assert code == 334, (code, text)
    code, text = s.docmd(base64.b64encode(E["INTEROP_SMTP_PASSWORD"].encode()).decode())
    assert code == 235, (code, text)
    msg = message("login plain port", sender=E["INTEROP_SMTP_USER"])
    send_and_quit(s, msg)
    SENT.append(msg["Message-ID"])
    return f"no-TLS EHLO features: {sorted(s.esmtp_features)}"


@check("client_credentials grant + XOAUTH2 delivers")
def _():
    status, out = http_post(
        E["INTEROP_OAUTH_TOKEN_URL"], {"grant_type": "client_credentials", "scope": "smtp"}, basic=CLIENT
    )
    assert status == 200, (status, out)
    assert "refresh_token" not in out, out
    info = introspect(out["access_token"])
    assert info["active"] and info["email"] == E["INTEROP_OAUTH_CC_USER"], info
    s = smtp_starttls()
    code, text = auth_initial(s, "XOAUTH2", xoauth2(E["INTEROP_OAUTH_CC_USER"], out["access_token"]))
    assert code == 235, (code, text)
    msg = message("client credentials", sender=E["INTEROP_OAUTH_CC_USER"])
    send_and_quit(s, msg)
    SENT.append(msg["Message-ID"])
    return f"token response keys={sorted(out)} expires_in={out['expires_in']} scope={out.get('scope')!r}"


@check("all messages landed in the Maildir")
def _():
    paths = [maildir_find(mid) for mid in SENT]
    assert len(paths) == len(SENT) >= 6, paths
    with open(paths[0], "rb") as f:
        head = f.read().split(b"\n\n", 1)[0].decode(errors="replace").splitlines()
    return f"{len(paths)} messages in {os.path.dirname(paths[0])}; first headers: {head[:3]}"


@check("AUTH is not offered before STARTTLS on submission; MAIL without it is refused")
def _():
    c = RawSmtp(int(E["INTEROP_SMTP_SUBMISSION_PORT"]))
    _, ehlo = c.cmd("EHLO smoke.missive.test")
    assert not any(l[4:].upper().startswith(b"AUTH") for l in ehlo), ehlo
    code, lines = c.cmd(f"AUTH XOAUTH2 {xoauth2(USER, state['at'])}")
    auth_reply = lines[-1].decode()
    code2, lines2 = c.cmd(f"MAIL FROM:<{USER}>")
    c.close()
    assert code >= 500 and code2 >= 500, (code, code2)
    return f"AUTH before TLS -> {auth_reply!r}; MAIL -> {lines2[-1].decode()!r}"


@check("unauthenticated relay is refused after STARTTLS")
def _():
    s = smtp_starttls()
    s.mail(USER)
    code, text = s.rcpt(RCPT)
    s.quit()
    assert code >= 500, (code, text)
    return f"RCPT -> {code} {text.decode()!r}"


REJECTIONS = {}


def record_rejection(key, first, final):
    REJECTIONS[key] = (first, final)
    out = f"first={first[0]} {first[1].decode()!r}"
    if first[0] == 334:
        out += f" (decoded {decode_334(first[1].decode())!r})"
    if final:
        out += f"; after empty line: {final[0]} {final[1].decode()!r}"
    return out


def sub_port():
    return int(E["INTEROP_SMTP_SUBMISSION_PORT"])


@check("garbage token, XOAUTH2: 334 <json> then 535")
def _():
    first, final = raw_auth(sub_port(), "XOAUTH2", xoauth2(USER, "garbage-" + secrets.token_urlsafe(16)))
    assert first[0] == 334 and final and final[0] == 535, (first, final)
    return record_rejection("xoauth2-garbage", first, final)


@check("garbage token, OAUTHBEARER: 334 <json> then 535")
def _():
    first, final = raw_auth(sub_port(), "OAUTHBEARER", oauthbearer(USER, "garbage", sub_port()))
    assert final is None or final[0] == 535, (first, final)
    assert first[0] in (334, 535), first
    return record_rejection("oauthbearer-garbage", first, final)


@check("expired access token is rejected (grant with access_token_ttl=1)")
def _():
    g = mint(access_token_ttl=1)
    status, out = refresh(g["refresh_token"])
    assert status == 200 and out["expires_in"] == 1, (status, out)
    time.sleep(2.2)
    assert introspect(out["access_token"]) == {"active": False}
    first, final = raw_auth(sub_port(), "XOAUTH2", xoauth2(USER, out["access_token"]))
    assert first[0] == 334 and final[0] == 535, (first, final)
    return record_rejection("xoauth2-expired", first, final)


@check("revoked access token (RFC 7009 revocation endpoint) is rejected")
def _():
    g = mint()
    status, out = refresh(g["refresh_token"])
    assert status == 200
    st, body = http_post(E["INTEROP_OAUTH_REVOCATION_URL"], {"token": out["access_token"]}, basic=CLIENT)
    assert st == 200, (st, body)
    first, final = raw_auth(sub_port(), "XOAUTH2", xoauth2(USER, out["access_token"]))
    assert final and final[0] == 535, (first, final)
    # The refresh token survives revocation of an access token.
    st, out2 = refresh(out["refresh_token"])
    assert st == 200, (st, out2)
    return record_rejection("xoauth2-revoked-at", first, final)


@check("token of another user is rejected (XOAUTH2 user mismatch)")
def _():
    first, final = raw_auth(sub_port(), "XOAUTH2", xoauth2("bob@missive.test", state["at"]))
    assert final and final[0] == 535, (first, final)
    return record_rejection("xoauth2-wrong-user", first, final)


@check("token without the smtp scope is rejected")
def _():
    g = mint(scope="openid email offline_access")
    status, out = refresh(g["refresh_token"])
    assert status == 200, (status, out)
    first, final = raw_auth(sub_port(), "XOAUTH2", xoauth2(USER, out["access_token"]))
    if E.get("INTEROP_OAUTH_REQUIRED_SCOPE"):
        assert final and final[0] == 535, (first, final)
    return record_rejection("xoauth2-no-smtp-scope", first, final)


@check("6000-byte garbage token gets a clean rejection (line length limits)")
def _():
    first, final = raw_auth(sub_port(), "XOAUTH2", xoauth2(USER, "x" * 6000))
    assert first[0] == 334 and final[0] == 535, (first, final)
    return record_rejection("xoauth2-long", first, final)


@check("wrong password, AUTH PLAIN: 535")
def _():
    initial = base64.b64encode(f"\0{E['INTEROP_SMTP_USER']}\0nope".encode()).decode()
    first, final = raw_auth(sub_port(), "PLAIN", initial)
    assert first[0] == 535, first
    return record_rejection("plain-wrong", first, final)


@check("garbage token over implicit TLS, XOAUTH2: 334 <json> then 535")
def _():
    first, final = raw_auth(int(E["INTEROP_SMTP_SMTPS_PORT"]), "XOAUTH2", xoauth2(USER, "garbage"),
                            starttls=False, implicit_tls=True)
    assert first[0] == 334 and final[0] == 535, (first, final)
    return record_rejection("xoauth2-garbage-smtps", first, final)


@check("reusing a rotated refresh token -> invalid_grant and the grant is revoked")
def _():
    # rt0 and rt1 were consumed by the first two checks; rt2 is current.
    status, out = refresh(state["rt0"])
    assert status == 400 and out["error"] == "invalid_grant", (status, out)
    reuse = out
    status, out = refresh(state["rt2"])
    assert status == 400 and out["error"] == "invalid_grant", (status, out)
    assert introspect(state["at"]) == {"active": False}
    first, final = raw_auth(sub_port(), "XOAUTH2", xoauth2(USER, state["at"]))
    assert final and final[0] == 535, (first, final)
    return f"reuse -> 400 {json.dumps(reuse)}; then current token -> 400 {json.dumps(out)}"


@check("/test/revoke revokes a grant")
def _():
    g = mint()
    st, out = http_post(E["INTEROP_OAUTH_TEST_REVOKE_URL"], json_body={"grant_id": g["grant_id"]})
    assert st == 200, (st, out)
    status, out = refresh(g["refresh_token"])
    assert status == 400 and out["error"] == "invalid_grant", (status, out)
    return f"refresh after revoke -> 400 {json.dumps(out)}"


@check("wrong client secret -> invalid_client")
def _():
    status, out = refresh(mint()["refresh_token"], client=(CLIENT[0], "wrong"))
    assert status == 401 and out["error"] == "invalid_client", (status, out)
    return f"{status} {json.dumps(out)}"


@check("short-TTL client issues 5 s access tokens")
def _():
    g = mint(client_id=E["INTEROP_OAUTH_SHORT_CLIENT_ID"])
    status, out = refresh(g["refresh_token"], client=(E["INTEROP_OAUTH_SHORT_CLIENT_ID"], CLIENT[1]))
    assert status == 200 and out["expires_in"] == int(E["INTEROP_OAUTH_SHORT_ACCESS_TOKEN_TTL"]), out
    return f"expires_in={out['expires_in']}"


@check("authorization code + PKCE with a loopback redirect (no UI)")
def _():
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    st8 = secrets.token_urlsafe(16)
    redirect_uri = "http://127.0.0.1:54321/oauth/callback"  # nothing listens: we stop at the redirect
    q = urllib.parse.urlencode({
        "response_type": "code", "client_id": CLIENT[0], "redirect_uri": redirect_uri,
        "scope": E["INTEROP_OAUTH_SCOPE"], "state": st8, "code_challenge": challenge,
        "code_challenge_method": "S256", "login_hint": USER,
    })
    url = f"{E['INTEROP_OAUTH_AUTHORIZATION_URL']}?{q}"

    class NoFollow(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoFollow)
    hops = 0
    while not url.startswith(redirect_uri):
        hops += 1
        assert hops < 10, "too many redirects"
        try:
            opener.open(url, timeout=10)
            raise AssertionError(f"expected a redirect from {url}")
        except urllib.error.HTTPError as err:
            assert err.code in (302, 303), (err.code, err.read())
            url = urllib.parse.urljoin(url, err.headers["location"])
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert params.get("state") == st8 and "code" in params, params
    status, out = http_post(E["INTEROP_OAUTH_TOKEN_URL"], {
        "grant_type": "authorization_code", "code": params["code"], "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }, basic=CLIENT)
    assert status == 200 and out.get("refresh_token"), (status, out)
    assert introspect(out["access_token"])["email"] == USER
    return f"{hops} redirects; token response keys={sorted(out)}"


def sink_dialogue(port):
    c = RawSmtp(port)
    c.cmd("EHLO smoke.missive.test")
    c.cmd(f"MAIL FROM:<{USER}>")
    code, lines = c.cmd(f"RCPT TO:<{RCPT}>")
    c.close()
    return code, lines[-1].decode()


@check("smtp-sink accepts and discards")
def _():
    s = smtplib.SMTP(HOST, int(E["INTEROP_SINK_PORT"]), timeout=15)
    s.ehlo("smoke.missive.test")
    feats = sorted(s.esmtp_features)
    s.send_message(message("sink"))
    s.quit()
    return f"EHLO features: {feats}"


@check("smtp-sink tempfail port answers 4xx on RCPT")
def _():
    code, line = sink_dialogue(int(E["INTEROP_SINK_TEMPFAIL_PORT"]))
    assert 400 <= code < 500, (code, line)
    return line


@check("smtp-sink permfail port answers 5xx on RCPT")
def _():
    code, line = sink_dialogue(int(E["INTEROP_SINK_PERMFAIL_PORT"]))
    assert 500 <= code < 600, (code, line)
    return line


passed = sum(1 for _, ok, _ in RESULTS if ok)
failed = len(RESULTS) - passed
print()
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
