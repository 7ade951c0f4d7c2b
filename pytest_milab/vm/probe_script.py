# The in-VM probe. Runs inside a student's VM as `python3 -c <this file> '<params json>'`,
# using only the standard library. It acts as the VM's managed identity, as the lab's curl commands
# do, and prints one JSON line of outcomes: status codes, error codes, token *claims* and SHA-256
# digests. Tokens and secret values never leave this process; nothing is written to disk except a
# temporary Azure CLI config folder, which is removed.
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

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


def request(method, url, headers=None, body=None, timeout=20, attempts=4):
    """One HTTP call, retried on 429/5xx and connection errors (honouring Retry-After)."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else body.encode()
    last = None
    for attempt in range(attempts):
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, hdrs, raw = exc.code, dict(exc.headers), exc.read()
            if status in (429, 500, 502, 503, 504) and attempt + 1 < attempts:
                delay = hdrs.get("Retry-After") or hdrs.get("retry-after") or 2 ** attempt
                time.sleep(min(float(delay), 10))
                last = (status, hdrs, raw)
                continue
            return status, hdrs, raw
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(min(2 ** attempt, 5))
                continue
    if isinstance(last, tuple):
        return last
    raise RuntimeError(f"{method} {url.split('?')[0]}: {getattr(last, 'reason', last)}")


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


def imds_token(resource):
    """A token from IMDS (kept in this process only) and what to report about it."""
    q = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": resource})
    status, raw = imds("/metadata/identity/oauth2/token?" + q)
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
    token = TOKENS.get(resource)
    return {"Authorization": "Bearer " + token} if token else {}


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

    check(results, "imds_instance", instance)
    check(results, "imds_tags", tags_path)
    check(results, "jq", lambda: {"path": shutil.which("jq")})
    check(results, "az", lambda: {"path": shutil.which("az")})
    check(results, "management_token", lambda: imds_token("https://management.azure.com/"))

    def permissions(scope):
        def run():
            status, _, raw = request(
                "GET", f"{arm}{scope}/providers/Microsoft.Authorization/permissions"
                       "?api-version=2022-04-01", bearer("https://management.azure.com/"))
            return summary(status, raw, keep=lambda b: b.get("value", []))
        return run

    check(results, "permissions_subscription", permissions(f"/subscriptions/{p['subscription']}"))
    check(results, "permissions_group", permissions(group_path))

    def list_group():
        status, _, raw = request("GET", f"{arm}{group_path}/resources?api-version=2020-06-01",
                                 bearer("https://management.azure.com/"))
        return summary(status, raw, keep=lambda b: [
            {"id": r.get("id"), "type": r.get("type"), "name": r.get("name")}
            for r in b.get("value", [])])

    check(results, "list_group", list_group)
    secret_url = f"{kv}/secrets/{p['secret']}?api-version=7.1"

    def wrong_audience():
        status, _, raw = request("GET", secret_url, bearer("https://management.azure.com/"))
        return summary(status, raw)

    check(results, "vault_with_management_token", wrong_audience)
    check(results, "vault_token", lambda: imds_token("https://vault.azure.net"))
    vault_auth = bearer("https://vault.azure.net")

    def list_secrets():
        status, _, raw = request("GET", f"{kv}/secrets?api-version=7.1", vault_auth)
        return summary(status, raw, keep=lambda b: [i.get("id", "").rsplit("/", 1)[-1]
                                                    for i in b.get("value", [])])

    check(results, "vault_list", list_secrets)

    def read(name):
        status, _, raw = request("GET", f"{kv}/secrets/{name}?api-version=7.1", vault_auth)
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

    check(results, "secret_read", secret_read)

    def sp_secrets():
        out, values = {}, {}
        for name in p["sp_secret_names"]:
            info, value = read(name)
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
    check(results, "sp_secrets", sp_secrets)

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

    check(results, "sp_login", sp_login)

    def az_login():
        az = shutil.which("az")
        if not az:
            return {"installed": False}
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

    check(results, "az_login", az_login)
    print(MARK + json.dumps(results, separators=(",", ":")))


if __name__ in ("__main__", "builtins"):
    main()
