# The in-VM probe. Runs inside a student's VM as `python3 -I -S -c <this file> '<params json>'`,
# using only the standard library. It acts as the VM's managed identity, as the lab's curl commands
# do, and prints one JSON line of outcomes: status codes, error codes, token *claims* and SHA-256
# digests. Tokens and secret values never leave this process; nothing is written to disk except a
# temporary Azure CLI config folder, which is removed.
import hashlib
import json
import os
import shutil
import sys
import threading
import time
import urllib.parse

MARK = "MILAB-PROBE-RESULT "
IMDS = "http://169.254.169.254"
SECRET_FIELDS = {"value", "access_token", "refresh_token", "password", "client_secret",
                 "clientsecret", "secrettext", "id_token"}
CLAIMS = ("aud", "iss", "oid", "sub", "tid", "appid", "appidacr", "idtyp", "ver", "xms_mirid",
          "xms_az_rid", "iat", "nbf", "exp")


def digest(text):
    data = text.encode("utf-8") if isinstance(text, str) else text
    return {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}


def redact(obj):
    """Replace secret-bearing fields by their SHA-256 and length, recursively."""
    if isinstance(obj, dict):
        return {k: (digest(str(v)) if k.lower() in SECRET_FIELDS and isinstance(v, str)
                    else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


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
_SLOTS = {}
_POOL_LOCK = threading.Lock()
_CONTEXT = []


def _bypass(host):
    """Whether no_proxy exempts the host (as urllib reads it: suffixes, `*`)."""
    listed = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    for entry in listed.replace(" ", "").lower().split(","):
        entry = entry.lstrip(".").rsplit(":", 1)[0] if entry.count(":") == 1 else entry
        if entry == "*" or entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def _proxy(scheme, host):
    """(host, port) of the proxy the environment names for this scheme, as urllib would."""
    if _bypass(host.lower()):
        return None
    for name in (scheme + "_proxy", scheme.upper() + "_PROXY"):
        value = os.environ.get(name)
        if value:
            parts = urllib.parse.urlsplit(value if "://" in value else "http://" + value)
            return parts.hostname, parts.port or 80
    return None


def _connection(scheme, host, port, timeout):
    """A new connection and whether requests on it name the absolute URL (plain proxy)."""
    import http.client

    proxy = _proxy(scheme, host)
    if scheme == "https":
        if not _CONTEXT:
            import ssl
            _CONTEXT.append(ssl.create_default_context())
        if proxy:
            conn = http.client.HTTPSConnection(proxy[0], proxy[1], timeout=timeout,
                                               context=_CONTEXT[0])
            conn.set_tunnel(host, port)
            return conn, False
        return http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=_CONTEXT[0]), False
    if proxy:
        return http.client.HTTPConnection(proxy[0], proxy[1], timeout=timeout), True
    return http.client.HTTPConnection(host, port, timeout=timeout), False


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
            slot = _SLOTS.setdefault(key, threading.BoundedSemaphore(PER_HOST))
        slot.acquire()
    try:
        for fresh in (False, True):
            conn = None
            if pooled and not fresh:
                with _POOL_LOCK:
                    idle = _POOL.get(key) or []
                    conn = idle.pop() if idle else None
            reused, absolute = conn is not None, False
            if conn is None:
                conn, absolute = _connection(scheme, host, port, timeout)
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(method, url if absolute else path, body=data,
                             headers={"User-Agent": "milab-probe", **headers})
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
            return resp.status, dict(resp.headers), raw
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
    if url.startswith(IMDS):
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
        location = hdrs.get("Location") or hdrs.get("location")
        if (status in (301, 302, 303, 307, 308) and location and method in ("GET", "HEAD")
                and redirects > 0):
            return request(method, urllib.parse.urljoin(url, location), headers, body, timeout,
                           attempts, redirects - 1)
        if status in RETRY_STATUSES and attempt + 1 < attempts:
            delay = hdrs.get("Retry-After") or hdrs.get("retry-after") or 2 ** attempt
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
        reason = f"{type(last).__name__}: {last}"
    raise RuntimeError(f"{method} {url.split('?')[0]}: {reason}")


def parse(raw):
    try:
        return json.loads(raw.decode("utf-8"))
    except Exception:
        return None


def error_of(body):
    """(code, message) from Azure's error shapes."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            inner = err.get("innererror") or err.get("innerError") or {}
            return err.get("code"), err.get("message"), inner.get("code")
        if isinstance(err, str):
            return err, body.get("error_description"), None
    return None, None, None


def summary(status, raw, keep=None):
    body = parse(raw)
    code, message, inner = error_of(body)
    out = {"status": status, "code": code, "message": (message or "")[:600], "inner": inner}
    if keep is not None and status == 200 and body is not None:
        out["body"] = keep(body)
    return out


def imds(path):
    status, _, raw = request("GET", IMDS + path, {"Metadata": "true"})
    return status, raw


TOKENS = {}
NO_TOKEN = {}  # resource -> why IMDS could not be asked (not an answer about the lab)


def imds_token(resource):
    """A token from IMDS (kept in this process only) and what to report about it."""
    q = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": resource})
    try:
        status, raw = imds("/metadata/identity/oauth2/token?" + q)
    except Exception as exc:
        NO_TOKEN[resource] = f"{exc}"[:300]
        raise
    body = parse(raw) or {}
    info = {"status": status, "code": body.get("error"),
            "message": (body.get("error_description") or "")[:300]}
    if status == 200 and body.get("access_token"):
        TOKENS[resource] = body["access_token"]
        info["claims"] = claims_of(body["access_token"])
        info["resource"] = body.get("resource")
        info["expires_in"] = body.get("expires_in")
    return info


def bearer(resource):
    """The Authorization header for a call as the identity: none when IMDS refused the token
    (the call then shows what Azure does without one), an error when IMDS could not be asked."""
    token = TOKENS.get(resource)
    if token:
        return {"Authorization": "Bearer " + token}
    if resource in NO_TOKEN:
        raise RuntimeError(f"no token for {resource}: {NO_TOKEN[resource]}")
    return {}


def check(results, name, fn):
    try:
        results[name] = fn()
    except Exception as exc:  # the probe reports, the grader judges
        results[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}


def single(p):
    """One call for the `vm` fixture: imds, token or http; secrets redacted, tokens kept here."""
    op = p["op"]
    if op == "imds":
        status, raw = imds(p["path"])
        body = parse(raw)
        return {"status": status, "json": redact(body) if body is not None else None,
                "text": None if body is not None else raw.decode("utf-8", "replace")[:4000]}
    if op == "token":
        return imds_token(p["resource"])
    if op == "http":
        headers = dict(p.get("headers") or {})
        if p.get("resource"):
            info = imds_token(p["resource"])
            if info.get("status") != 200:
                return {"status": None, "token_error": info}
            headers.update(bearer(p["resource"]))
        body = p.get("body")
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        status, hdrs, raw = request(p.get("method", "GET"), p["url"], headers, body, attempts=1)
        parsed = parse(raw)
        safe_headers = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
        return {"status": status, "headers": safe_headers,
                "json": redact(parsed) if parsed is not None else None}
    raise ValueError(f"unknown op {op}")


def concurrently(results, checks):
    """Run `check`s at once (each waits on the network, not the CPU) and wait for all."""
    threads = [threading.Thread(target=check, args=(results, name, fn), daemon=True)
               for name, fn in checks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    p = json.loads(sys.argv[1])
    if "op" in p:
        result = {}
        check(result, "result", lambda: single(p))
        print(MARK + json.dumps(result["result"], separators=(",", ":")))
        return
    results = {}
    arm, kv = "https://management.azure.com", f"https://{p['vault']}.vault.azure.net"
    group_path = f"/subscriptions/{p['subscription']}/resourceGroups/{p['group']}"
    management = "https://management.azure.com/"

    def instance():
        status, raw = imds("/metadata/instance?api-version=2020-09-01")
        body = parse(raw) or {}
        compute = body.get("compute", {})
        return {"status": status, "resourceId": compute.get("resourceId"),
                "tagsList": compute.get("tagsList"), "name": compute.get("name"),
                "subscriptionId": compute.get("subscriptionId"),
                "resourceGroupName": compute.get("resourceGroupName")}

    def tags_path():
        status, raw = imds("/metadata/instance/compute/tagsList?api-version=2020-09-01")
        return {"status": status, "body": parse(raw)}

    def permissions(scope):
        def run():
            status, _, raw = request(
                "GET", f"{arm}{scope}/providers/Microsoft.Authorization/permissions"
                       "?api-version=2022-04-01", bearer(management))
            return summary(status, raw, keep=lambda b: b.get("value", []))
        return run

    def list_group():
        status, _, raw = request("GET", f"{arm}{group_path}/resources?api-version=2020-06-01",
                                 bearer(management))
        return summary(status, raw, keep=lambda b: [
            {"id": r.get("id"), "type": r.get("type"), "name": r.get("name")}
            for r in b.get("value", [])])

    secret_url = f"{kv}/secrets/{p['secret']}?api-version=7.1"

    def wrong_audience():
        status, _, raw = request("GET", secret_url, bearer(management))
        return summary(status, raw)

    def list_secrets():
        status, _, raw = request("GET", f"{kv}/secrets?api-version=7.1",
                                 bearer("https://vault.azure.net"))
        return summary(status, raw, keep=lambda b: [i.get("id", "").rsplit("/", 1)[-1]
                                                    for i in b.get("value", [])])

    def read(name):
        status, _, raw = request("GET", f"{kv}/secrets/{name}?api-version=7.1",
                                 bearer("https://vault.azure.net"))
        out = summary(status, raw)
        body = parse(raw) or {}
        value = body.get("value") if status == 200 else None
        return out, value

    def secret_read():
        out, value = read(p["secret"])
        if value is not None:
            out["value"] = digest(value)
            out["matches"] = digest(value)["sha256"] == p["secret_sha256"]
        return out

    def sp_secrets():
        out, values, reads = {}, {}, {}
        concurrently(reads, [(name, lambda name=name: read(name))
                             for name in p["sp_secret_names"]])
        for name in p["sp_secret_names"]:
            if isinstance(reads[name], dict):  # the read raised: sp_secrets reports it
                raise RuntimeError(reads[name]["error"])
            info, value = reads[name]
            out[name] = info
            if value is not None:
                values[name] = value
                info["value"] = digest(value)
        sp_raw = values.get("service-principal")
        sp = None
        if sp_raw is not None:
            try:
                sp = json.loads(sp_raw)
            except ValueError:
                sp = None
        out["service_principal_json"] = isinstance(sp, dict)
        if isinstance(sp, dict):
            out["compact"] = sp_raw.strip() == json.dumps(sp, separators=(",", ":"))
            out["fields"] = sorted(sp)
            out["appId"] = sp.get("appId")
            out["tenant"] = sp.get("tenant")
            out["consistent"] = {
                "client-id": sp.get("appId") == values.get("client-id"),
                "client-secret": sp.get("password") == values.get("client-secret"),
                "tenant-id": sp.get("tenant") == values.get("tenant-id"),
            }
        values.pop("service-principal", None)
        SP["values"] = values
        return out

    SP = {}

    def sp_login():
        values = SP.get("values", {})
        if not all(values.get(k) for k in ("tenant-id", "client-id", "client-secret")):
            return {"status": None, "skipped": "the vault's service-principal secrets were not read"}
        form = urllib.parse.urlencode({
            "grant_type": "client_credentials", "client_id": values["client-id"],
            "client_secret": values["client-secret"],
            "scope": "https://management.core.windows.net//.default"})
        status, _, raw = request(
            "POST", f"https://login.microsoftonline.com/{values['tenant-id']}/oauth2/v2.0/token",
            {"Content-Type": "application/x-www-form-urlencoded"}, form)
        body = parse(raw) or {}
        out = {"status": status, "code": body.get("error"),
               "message": (body.get("error_description") or "").split("\r\n")[0][:300]}
        if status == 200 and body.get("access_token"):
            out["claims"] = claims_of(body["access_token"])
        return out

    def az_login():
        az = shutil.which("az")
        if not az:
            return {"installed": False}
        import subprocess
        import tempfile

        config = tempfile.mkdtemp(prefix="milab-az-")
        try:
            env = dict(os.environ, AZURE_CONFIG_DIR=config, AZURE_CORE_COLLECT_TELEMETRY="false",
                       AZURE_CORE_NO_COLOR="true", AZURE_CORE_ONLY_SHOW_ERRORS="true")
            proc = subprocess.run([az, "login", "--identity", "--output", "json"], env=env,
                                  capture_output=True, text=True, timeout=p.get("az_timeout", 180))
            subs = []
            try:
                subs = [s.get("id") for s in json.loads(proc.stdout or "[]")]
            except ValueError:
                pass
            err = (proc.stderr or "").strip().splitlines()
            return {"installed": True, "exit_code": proc.returncode, "subscriptions": subs,
                    "stderr": err[-1][:300] if err else ""}
        finally:
            shutil.rmtree(config, ignore_errors=True)

    # Three rounds, each a set of independent calls made at once: what needs no token (and
    # the tokens themselves, and `az login`, which gets its own), what needs a token, and the
    # sign-in that needs the secrets read.
    az = threading.Thread(target=check, args=(results, "az_login", az_login), daemon=True)
    az.start()
    concurrently(results, [
        ("imds_instance", instance), ("imds_tags", tags_path),
        ("jq", lambda: {"path": shutil.which("jq")}), ("az", lambda: {"path": shutil.which("az")}),
        ("management_token", lambda: imds_token(management)),
        ("vault_token", lambda: imds_token("https://vault.azure.net")),
    ])
    concurrently(results, [
        ("permissions_subscription", permissions(f"/subscriptions/{p['subscription']}")),
        ("permissions_group", permissions(group_path)),
        ("list_group", list_group),
        ("vault_with_management_token", wrong_audience),
        ("vault_list", list_secrets),
        ("secret_read", secret_read),
        ("sp_secrets", sp_secrets),
    ])
    check(results, "sp_login", sp_login)
    az.join()
    print(MARK + json.dumps(results, separators=(",", ":")))


if __name__ in ("__main__", "builtins"):
    main()
