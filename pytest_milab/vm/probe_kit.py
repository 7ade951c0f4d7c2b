# The in-machine probe kit. Runs inside a student's machine as `/usr/bin/python3 -I -S -c <this
# file>` in a clean environment, its program one JSON line on stdin (parts, digest key, nonce,
# egress) and the student's environment (`env -0`) on fd 3, with the standard library only. Its
# own HTTP goes where the program's egress says (a proxy and CA, or directly), never through
# proxy variables of the machine. It runs the
# parts a suite declared (pytest_milab.probe), acting as the machine's managed identity as the
# lab's own curl commands do, and prints one line framed by the run's nonce: status codes, error
# codes, token *claims* and keyed digests. Tokens and secret values never leave this process;
# nothing is written to disk except a temporary folder a command part asks for, which is removed.
import hashlib
import hmac
import json
import os
import shutil
import sys
import threading
import time
import urllib.parse

MARK = "MILAB-PROBE-RESULT "
IMDS = "http://169.254.169.254"
HIMDS = "http://localhost:40342"
HIMDS_KEY_DIR = "/var/opt/azcmagent/tokens/"
SECRET_FIELDS = {"value", "access_token", "refresh_token", "password", "client_secret",
                 "clientsecret", "secrettext", "id_token"}
CLAIMS = ("aud", "iss", "oid", "sub", "tid", "appid", "appidacr", "idtyp", "ver", "xms_mirid",
          "xms_az_rid", "iat", "nbf", "exp")
MAX_JSON = 65536  # bytes of JSON a part may return
KEY = [b""]  # the run's digest key
EGRESS = {}  # the grader's word on how to reach Azure: {"proxy": URL, "ca": file, "path": dirs}


def digest(text):
    """A keyed digest (HMAC-SHA256 with the run's key) and the length: comparable on the
    grader, useless to anyone else."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return {"hmac": hmac.new(KEY[0], data, hashlib.sha256).hexdigest(), "length": len(data)}


def redact(obj, fields=SECRET_FIELDS):
    """Replace secret-bearing fields by their keyed digest, recursively."""
    if isinstance(obj, dict):
        return {k: (digest(str(v)) if k.lower() in fields and isinstance(v, str)
                    else redact(v, fields)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, fields) for v in obj]
    return obj


# Metadata answers hold no secret `value` (a tag's value is one): only tokens are redacted.
METADATA_SECRETS = SECRET_FIELDS - {"value"}


def bounded(obj):
    text = json.dumps(obj, separators=(",", ":"))
    return obj if len(text) <= MAX_JSON else {"truncated": True, "bytes": len(text)}


def claims_of(token):
    import base64
    try:
        part = token.split(".")[1]
        payload = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except Exception:
        return {"undecodable": True}
    return {k: payload[k] for k in CLAIMS if k in payload}


RETRY_STATUSES = (429, 500, 502, 503, 504)
PER_HOST = 2  # HTTPS connections kept per host: a few TLS handshakes, not one per call
IMDS_TIMEOUT, IMDS_ATTEMPTS = 5, 3  # IMDS is link-local: slower than this, it is in trouble
_POOL = {}  # (host, port) -> idle HTTPS connections, kept alive between calls
_SLOTS = {}  # (host, port) -> _Slots
_POOL_LOCK = threading.Lock()
_PART = threading.local()  # the part this thread runs: `first` when another part waits for it


class _Slots:
    """At most PER_HOST calls at once to a host; a part that other parts wait for (`after`)
    goes before the others, then first come first served. (A part whose answer feeds the next
    call, say a secret its sign-in uses, is not left behind calls nothing waits for.)"""

    def __init__(self, count):
        self.free = count
        self.waiting = []  # (not first, arrival) of the calls waiting, in that order
        self.arrivals = 0
        self.cond = threading.Condition()

    def acquire(self):
        import heapq

        with self.cond:
            self.arrivals += 1
            ticket = (not getattr(_PART, "first", False), self.arrivals)
            heapq.heappush(self.waiting, ticket)
            while not (self.free and self.waiting[0] == ticket):
                self.cond.wait()
            heapq.heappop(self.waiting)
            self.free -= 1
            if self.free:
                self.cond.notify_all()  # the next in line may go too

    def release(self):
        with self.cond:
            self.free += 1
            self.cond.notify_all()
_CONTEXT = []
WANTED_HEADERS = ("location", "retry-after", "www-authenticate")  # what the kit reads of answers


def _proxy():
    """(host, port, headers) of the egress proxy the grader named, or None (directly)."""
    value = EGRESS.get("proxy")
    if not value:
        return None
    import base64

    parts = urllib.parse.urlsplit(value)
    headers = {}
    if parts.password is not None:
        creds = urllib.parse.unquote(parts.username or "") + ":" + \
            urllib.parse.unquote(parts.password)
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
    return parts.hostname, parts.port or 80, headers


_HEADER_NAME = None


def _parse_headers(fp, _class=None):
    """http.client's parse_headers without the email package's feed parser (a third of the
    probe's HTTP CPU): the same message (http.client.HTTPMessage, each header as the email
    parser stores it) for well-formed header lines; anything else is handed to that parser."""
    import http.client
    import re

    global _HEADER_NAME
    lines = []
    while True:
        line = fp.readline(http.client._MAXLINE + 1)
        if len(line) > http.client._MAXLINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            break
        lines.append(line)
        if len(lines) > http.client._MAXHEADERS:
            raise http.client.HTTPException(f"got more than {http.client._MAXHEADERS} headers")
    text = b"".join(lines).decode("iso-8859-1")
    cls = _class or http.client.HTTPMessage
    if _HEADER_NAME is None:
        _HEADER_NAME = re.compile(r"[\041-\071\073-\176]*:")
    headers = []  # [name, [first line's rest, continuation lines...]]
    # The feed parser ends lines at CRLF, LF or a lone CR only (not str.splitlines' others).
    plain = "\r" not in text.replace("\r\n", "")
    for line in text.split("\n") if plain else ():
        if not line:
            continue  # after the last LF
        line += "\n"
        if line[:1] in (" ", "\t") and headers:
            headers[-1][1].append(line)
        elif line.startswith(("From ", ":")) or not _HEADER_NAME.match(line):
            plain = False
            break
        else:
            name, _, rest = line.partition(":")
            headers.append([name, [rest.lstrip(" \t")]])
    if not plain:
        import email.parser

        return email.parser.Parser(_class=cls).parsestr(text)
    msg = cls()
    for name, parts in headers:
        msg.set_raw(name, "".join(parts).rstrip("\r\n"))
    msg.set_payload("")  # as the feed parser leaves a message without a body
    return msg


def _connection(scheme, host, port, timeout):
    """A new connection, whether requests on it name the absolute URL (plain proxy), and the
    headers each request on it carries (the plain proxy's credentials)."""
    import http.client

    proxy = _proxy()
    if scheme == "https":
        with _POOL_LOCK:  # one context (its CA file read once) for every thread
            if not _CONTEXT:
                import ssl
                _CONTEXT.append(ssl.create_default_context(cafile=EGRESS.get("ca") or None))
        if proxy:
            conn = http.client.HTTPSConnection(proxy[0], proxy[1], timeout=timeout,
                                               context=_CONTEXT[0])
            conn.set_tunnel(host, port, headers=proxy[2])
            return conn, False, {}
        return http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=_CONTEXT[0]), False, {}
    if proxy:
        return http.client.HTTPConnection(proxy[0], proxy[1], timeout=timeout), True, proxy[2]
    return http.client.HTTPConnection(host, port, timeout=timeout), False, {}


def _once(method, url, headers, data, timeout):
    """One HTTP exchange: (status, headers, body). HTTPS connections are reused (kept alive,
    at most PER_HOST at once per host); a kept one found closed is replaced once."""
    import http.client

    parts = urllib.parse.urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    port = parts.port or (443 if scheme == "https" else 80)
    path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    key = (host, port)
    pooled = scheme == "https"
    if pooled:
        with _POOL_LOCK:
            slot = _SLOTS.get(key)
            if slot is None:
                slot = _SLOTS[key] = _Slots(PER_HOST)
        slot.acquire()
    try:
        for fresh in (False, True):
            conn = None
            if pooled and not fresh:
                with _POOL_LOCK:
                    idle = _POOL.get(key) or []
                    conn = idle.pop() if idle else None
            reused, absolute, extra = conn is not None, False, {}
            if conn is None:
                conn, absolute, extra = _connection(scheme, host, port, timeout)
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(method, url if absolute else path, body=data,
                             headers={"User-Agent": "milab-probe", **headers, **extra})
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if reused:
                    continue  # the kept connection had gone stale: once more on a new one
                raise
            except BaseException:
                conn.close()
                raise
            if pooled and not resp.will_close:
                with _POOL_LOCK:
                    _POOL.setdefault(key, []).append(conn)
            else:
                conn.close()
            return resp.status, {name: resp.headers.get(name) for name in WANTED_HEADERS}, raw
    finally:
        if pooled:
            slot.release()
    raise AssertionError("unreachable")


def request(method, url, headers=None, body=None, timeout=20, attempts=4, redirects=5):
    """One HTTP call, retried on 429/5xx and connection errors (honouring Retry-After), with
    redirects followed for GET. Azure still answering 429/5xx once the retries are spent is
    not an answer about the lab: that raises, so the check cannot decide rather than fail."""
    import http.client

    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else body.encode()
    if url.startswith((IMDS, HIMDS)):
        timeout, attempts = min(timeout, IMDS_TIMEOUT), max(1, min(attempts, IMDS_ATTEMPTS))
    last, timeouts = None, 0
    for attempt in range(attempts):
        try:
            status, hdrs, raw = _once(method, url, dict(headers or {}), data, timeout)
        except (OSError, http.client.HTTPException) as exc:
            last = exc
            timeouts += isinstance(exc, TimeoutError)
            if timeouts >= 2:  # twice without an answer: a third wait would not decide more
                break
            if attempt + 1 < attempts:
                time.sleep(min(2 ** attempt, 5))
            continue
        location = hdrs.get("location")
        if (status in (301, 302, 303, 307, 308) and location and method in ("GET", "HEAD")
                and redirects > 0):
            return request(method, urllib.parse.urljoin(url, location), headers, body, timeout,
                           attempts, redirects - 1)
        if status in RETRY_STATUSES and attempt + 1 < attempts:
            delay = hdrs.get("retry-after") or 2 ** attempt
            try:
                delay = float(delay)
            except ValueError:
                delay = 2 ** attempt
            time.sleep(min(delay, 10))
            last = (status, hdrs, raw)
            continue
        if status in RETRY_STATUSES and attempts > 1:
            last = (status, hdrs, raw)
            break
        return status, hdrs, raw
    if isinstance(last, tuple):
        reason = f"answered {last[0]} {attempts} times"
    elif isinstance(last, TimeoutError):
        reason = f"no answer in {timeout}s, {timeouts} times"
    else:
        raise RuntimeError(f"{method} {url.split('?')[0]}: {type(last).__name__}: {last}")
    raise AzureTrouble(f"{method} {url.split('?')[0]}: {reason}")


class AzureTrouble(RuntimeError):
    """Azure kept throttling, failing (5xx) or not answering: not an answer about the lab."""


def parse(raw):
    try:
        return json.loads(raw.decode("utf-8"))
    except Exception:
        return None


def error_of(body):
    """(code, message, inner code) from Azure's error shapes."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            inner = err.get("innererror") or err.get("innerError") or {}
            return err.get("code"), err.get("message"), inner.get("code")
        if isinstance(err, str):
            return err, body.get("error_description"), None
    return None, None, None


def summary(status, raw, keep_json=True):
    body = parse(raw)
    code, message, inner = error_of(body)
    out = {"status": status, "code": code, "message": str(message or "")[:600], "inner": inner}
    if keep_json and body is not None:
        out["json"] = bounded(redact(body))
    return out


# -- managed identity: IMDS in Azure, HIMDS on an Arc-enabled server ---------------------------
TOKENS = {}
NO_TOKEN = {}  # (source, resource) -> why the endpoint could not be asked
TROUBLED = set()  # of those, the ones Azure throttled, failed or left unanswered
_TOKEN_LOCKS = {}
_TOKEN_LOCK = threading.Lock()


def metadata(path, source):
    base = HIMDS if source == "himds" else IMDS
    return request("GET", base + path, {"Metadata": "true"})


def _read_key(realm):
    """The challenge's key file: readable by root and the himds group only, so a user outside
    that group reads it with sudo (without a password: never prompting)."""
    try:
        if os.path.getsize(realm) > 4096:
            return None, "the challenge's key file is over 4096 bytes"
        with open(realm, encoding="utf-8") as f:
            return f.read(), "read"
    except PermissionError:
        pass
    except OSError as exc:
        return None, f"cannot read the challenge's key file ({exc.strerror})"
    import subprocess

    try:
        proc = subprocess.run(["sudo", "-n", "cat", realm], capture_output=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot read the challenge's key file ({type(exc).__name__})"
    if proc.returncode != 0 or len(proc.stdout) > 4096:
        return None, "cannot read the challenge's key file (not in the himds group, no sudo)"
    return proc.stdout.decode("utf-8", "replace"), "read with sudo"


def _himds_token(url):
    """Arc's challenge: a 401 names a key file (realm) that only root and the himds group may
    read; the request again with its content as Basic authorization gets the token."""
    status, hdrs, raw = request("GET", url, {"Metadata": "true"})
    challenge = {"status": status}
    if status != 401:
        return status, raw, {"challenge": challenge}
    header = hdrs.get("www-authenticate") or ""
    realm = header.partition("realm=")[2].strip().strip('"')
    challenge["realm"] = realm[:300]
    if not realm.endswith(".key"):
        challenge["key"] = "no key file named in the 401 challenge"
        return status, raw, {"challenge": challenge}
    secret, how = _read_key(realm)
    challenge["key"] = how
    if secret is None:
        return status, raw, {"challenge": challenge}
    status, _, raw = request("GET", url, {"Metadata": "true", "Authorization": "Basic " + secret})
    return status, raw, {"challenge": challenge}


def token(resource, source="imds"):
    """A token for `resource` (kept in this process only) and what to report about it."""
    key = (source, resource)
    with _TOKEN_LOCK:
        lock = _TOKEN_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key in TROUBLED:
            raise AzureTrouble(NO_TOKEN[key])
        if key in TOKENS or key in NO_TOKEN:
            return TOKENS.get(key, (None, None))[1] or {"error": NO_TOKEN[key]}
        version = "2020-06-01" if source == "himds" else "2018-02-01"
        q = urllib.parse.urlencode({"api-version": version, "resource": resource})
        base = HIMDS if source == "himds" else IMDS
        extra = None
        try:
            if source == "himds":
                status, raw, extra = _himds_token(base + "/metadata/identity/oauth2/token?" + q)
            else:
                status, _, raw = request("GET", base + "/metadata/identity/oauth2/token?" + q,
                                         {"Metadata": "true"})
        except Exception as exc:
            NO_TOKEN[key] = f"{exc}"[:300]
            if isinstance(exc, AzureTrouble):
                TROUBLED.add(key)
            raise
        body = parse(raw) or {}
        info = {"status": status, "code": body.get("error"),
                "message": str(body.get("error_description") or "")[:300]}
        if extra:
            info.update(extra)
        if status == 200 and body.get("access_token"):
            info["claims"] = claims_of(body["access_token"])
            info["resource"] = body.get("resource")
            TOKENS[key] = (body["access_token"], info)
        else:
            TOKENS[key] = (None, info)
        return info


def bearer(resource, source):
    """The Authorization header for a call as the identity: none when the endpoint refused the
    token (the call then shows what Azure does without one), an error when it could not be
    asked."""
    token(resource, source)
    access = TOKENS.get((source, resource), (None, None))[0]
    if access:
        return {"Authorization": "Bearer " + access}
    if (source, resource) in NO_TOKEN:
        trouble = AzureTrouble if (source, resource) in TROUBLED else RuntimeError
        raise trouble(f"no token for {resource}: {NO_TOKEN[(source, resource)]}")
    return {}


# -- parts -----------------------------------------------------------------------------------
STORE = {}  # values kept for later parts (secrets), never printed


def value_of(ref):
    """A literal, or {"stored": name, "field": f} naming a kept secret (or a field of its JSON)."""
    if isinstance(ref, dict) and "stored" in ref:
        value = STORE.get(ref["stored"])
        if value is not None and ref.get("field"):
            try:
                value = json.loads(value).get(ref["field"])
            except Exception:
                value = None
        return value
    return ref


def op_imds(p):
    status, _, raw = metadata(p["path"], p.get("source", "imds"))
    body = parse(raw)
    return {"status": status,
            "json": bounded(redact(body, METADATA_SECRETS)) if body is not None else None,
            "text": None if body is not None else raw.decode("utf-8", "replace")[:4000]}


def op_token(p):
    return token(p["resource"], p.get("source", "imds"))


def _headers(p):
    headers = dict(p.get("headers") or {})
    if p.get("token"):
        headers.update(bearer(p["token"], p.get("source", "imds")))
    return headers


def with_stored(url):
    """A URL with `<stored:NAME>` filled by a kept value (quoted); None when it is not kept."""
    import re

    missing = []

    def fill(match):
        value = STORE.get(match.group(1))
        if value is None:
            missing.append(match.group(1))
            return ""
        return urllib.parse.quote(value, safe="")

    url = re.sub(r"<stored:([^>]+)>", fill, url)
    return None if missing else url


def op_http(p):
    url = with_stored(p["url"])
    if url is None:
        return {"status": None, "skipped": "a value it needs was not kept"}
    headers, body = _headers(p), None
    if p.get("form") is not None:
        form = {k: value_of(v) for k, v in p["form"].items()}
        missing = [k for k, v in form.items() if v is None]
        if missing:
            return {"status": None, "skipped": f"no stored value for {', '.join(missing)}"}
        body = urllib.parse.urlencode(form)
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif p.get("json") is not None:
        body = json.dumps(p["json"])
        headers.setdefault("Content-Type", "application/json")
    status, _, raw = request(p.get("method", "GET"), url, headers, body,
                             attempts=p.get("attempts", 4))
    out = summary(status, raw, keep_json=p.get("keep_json", True))
    parsed = parse(raw)
    if isinstance(parsed, dict) and isinstance(parsed.get("access_token"), str):
        out["claims"] = claims_of(parsed["access_token"])
    return out


def op_secret(p):
    """Read a Key Vault secret as the identity: its keyed digest, and of a JSON object's
    fields, whether it is compact JSON; the value itself is kept here for later parts."""
    headers = _headers(dict(p, token=p.get("token", "https://vault.azure.net")))
    status, _, raw = request("GET", p["url"], headers)
    out = summary(status, raw, keep_json=False)
    body = parse(raw) or {}
    value = body.get("value") if status == 200 else None
    if isinstance(value, str):
        out["value"] = digest(value)
        if p.get("keep"):
            STORE[p["keep"]] = value
        try:
            obj = json.loads(value)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            out["fields"] = {str(k): digest(str(v)) for k, v in obj.items()}
            out["compact"] = value.strip() == json.dumps(obj, separators=(",", ":"))
    return out


_STUDENT_ENV = []
_STUDENT_LOCK = threading.Lock()


def student_env():
    """The student's environment as their login shell had it (`env -0` on fd 3): what a
    command a suite runs as the student sees. This process's own is the clean one."""
    with _STUDENT_LOCK:
        if not _STUDENT_ENV:
            try:
                with open(3, "rb", closefd=False) as f:
                    raw = f.read(1 << 20)
            except OSError:
                raw = b""
            env = {}
            for item in raw.split(b"\0"):
                name, sep, value = item.partition(b"=")
                if sep and name:
                    env[os.fsdecode(name)] = os.fsdecode(value)
            _STUDENT_ENV.append(env or dict(os.environ))
        return _STUDENT_ENV[0]


def op_which(p):
    return {"path": shutil.which(p["name"], path=student_env().get("PATH", os.defpath))}


def op_command(p):
    import subprocess
    import tempfile

    argv = list(p["argv"])
    env = dict(student_env(), **(p.get("env") or {}))
    exe = shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if not exe:
        return {"installed": False}
    temp = None
    if p.get("temp_env"):
        temp = tempfile.mkdtemp(prefix="milab-")
        env[p["temp_env"]] = temp
    try:
        proc = subprocess.run([exe] + argv[1:], env=env, capture_output=True, text=True,
                              timeout=float(p.get("timeout") or 120), stdin=subprocess.DEVNULL)
        out = {"installed": True, "exit_code": proc.returncode}
        err = (proc.stderr or "").strip().splitlines()
        out["stderr"] = err[-1][:300] if err else ""
        try:
            out["json"] = bounded(redact(json.loads(proc.stdout or "null")))
        except ValueError:
            out["json"] = None
        return out
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def op_attested(p):
    """IMDS's attested document for the grader's nonce, returned as it came (the grader checks
    its signature). IMDS may answer a cached document ("Azure Instance Metadata Service for
    virtual machines"): one with another nonce is asked for once more."""
    import base64

    query = urllib.parse.urlencode({"api-version": p.get("api_version", "2020-09-01"),
                                    "nonce": p.get("nonce", "")})
    mark = ('"nonce":"' + p.get("nonce", "") + '"').encode()
    out = {}
    for _ in range(2):
        status, _, raw = metadata("/metadata/attested/document?" + query,
                                  p.get("source", "imds"))
        body = parse(raw)
        code, message, _ = error_of(body)
        out = {"status": status, "code": code, "message": str(message or "")[:600]}
        if status != 200 or not isinstance(body, dict):
            return out
        signature = body.get("signature")
        out["json"] = {"encoding": body.get("encoding"),
                       "signature": signature if isinstance(signature, str)
                       and len(signature) <= MAX_JSON else None}
        try:
            if mark in base64.b64decode(signature or ""):
                return out
        except Exception:
            return out  # the grader says what is wrong with it
    return out


def op_signed_token(p):
    """A token for the grader's evidence audience, returned whole: that audience authorizes
    nothing, so the token opens nothing; the grader verifies it and keeps only its claims."""
    audience = p.get("audience") or ""
    creds = p.get("client_credentials")
    if creds:
        values = {k: value_of(v) for k, v in creds.items()}
        missing = [k for k, v in values.items() if not v]
        if missing:
            return {"status": None, "skipped": f"no stored value for {', '.join(missing)}"}
        url = ("https://login.microsoftonline.com/"
               + urllib.parse.quote(values["tenant"], safe="") + "/oauth2/v2.0/token")
        form = urllib.parse.urlencode({
            "grant_type": "client_credentials", "client_id": values["client_id"],
            "client_secret": values["client_secret"], "scope": audience.rstrip("/") + "/.default"})
        status, _, raw = request("POST", url, {"Content-Type": "application/x-www-form-urlencoded"},
                                 form)
    else:
        source = p.get("source", "imds")
        version = "2020-06-01" if source == "himds" else "2018-02-01"
        q = urllib.parse.urlencode({"api-version": version, "resource": audience})
        base = HIMDS if source == "himds" else IMDS
        url = base + "/metadata/identity/oauth2/token?" + q
        if source == "himds":
            status, raw, _ = _himds_token(url)
        else:
            status, _, raw = request("GET", url, {"Metadata": "true"})
    body = parse(raw) or {}
    code, message, _ = error_of(body)
    out = {"status": status, "code": code, "message": str(message or "")[:600]}
    if status == 200 and isinstance(body.get("access_token"), str):
        out["token"] = body["access_token"][:MAX_JSON]
    return out


OPS = {"imds": op_imds, "token": op_token, "http": op_http, "secret": op_secret,
       "which": op_which, "command": op_command, "attested": op_attested,
       "signed_token": op_signed_token}


def run_part(results, events, part, first=False):
    _PART.first = first
    for need in part.get("after") or ():
        if need in events:
            events[need].wait()
    try:
        results[part["name"]] = OPS[part["op"]](part)
    except AzureTrouble as exc:  # said apart: the grader cannot decide, rather than unverified
        results[part["name"]] = {"error": f"{exc}"[:400], "trouble": "azure"}
    except Exception as exc:  # the probe reports, the grader judges
        results[part["name"]] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    finally:
        events[part["name"]].set()


def run_all(results, events, parts):
    """Every part in a thread of its own, all at once; returns when each has its result. Bare
    threads (the `_thread` module's): no handshake with each as it starts, no join of each,
    one lock released by the last to finish."""
    import _thread

    if not parts:
        return
    awaited = {name for part in parts for name in part.get("after") or ()}
    left, count, done = [len(parts)], threading.Lock(), threading.Lock()
    done.acquire()

    def run(part):
        try:
            run_part(results, events, part, part["name"] in awaited)
        finally:
            with count:
                left[0] -= 1
                if not left[0]:
                    done.release()

    for part in parts:
        _thread.start_new_thread(run, (part,))
    done.acquire()


def main():
    # One line, read up to its newline: no wait for the end of the input.
    program = json.loads(sys.stdin.buffer.readline().decode("utf-8"))
    KEY[0] = bytes.fromhex(program.get("key", ""))
    EGRESS.update(program.get("egress") or {})
    import http.client

    http.client.parse_headers = _parse_headers  # this process's own http.client only
    if EGRESS.get("path"):  # the machine's own tools (sudo), as the grader knows them
        os.environ["PATH"] = EGRESS["path"] + os.pathsep + os.environ.get("PATH", os.defpath)
    parts = program["parts"]
    results, events = {}, {part["name"]: threading.Event() for part in parts}
    run_all(results, events, parts)
    print(MARK + program.get("nonce", "") + " " + json.dumps(results, separators=(",", ":")))


if __name__ in ("__main__", "builtins"):
    main()
