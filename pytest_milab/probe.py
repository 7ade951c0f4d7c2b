"""The in-machine probe kit: what a suite asks the lab's machine, as data.

A suite returns a `Probe` from the hook `pytest_milab_probe(spec)`: parts, each a small
standard-library action run inside the machine as its managed identity, all at once over one
SSH command (a part waits only for the parts named in its `after`). Text arguments may name
`{group_id}`, `{group}`, `{subscription}`, `{spec.<field>}` and any value the probe's `fields`
function gives for a lab::

    Probe([
        token("management_token", "https://management.azure.com/"),
        http("list_group", "https://management.azure.com{group_id}/resources"
             "?api-version=2021-04-01", token="https://management.azure.com/"),
        secret("secret_read", "https://{vault}.vault.azure.net/secrets/{spec.secret_name}"
               "?api-version=7.4"),
    ], fields=lambda lab: {"vault": lab.vault_name})

What comes back (in `lab.probe(name)`) holds statuses, error codes, token claims and keyed
digests (compare them with `lab.same_secret`), never a token or a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import SuiteError

VAULT = "https://vault.azure.net"
SOURCES = ("imds", "himds")  # IMDS in an Azure VM, HIMDS on an Azure Arc-enabled server


@dataclass(frozen=True)
class Part:
    """One action of the probe; build parts with the functions below."""

    name: str
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()

    def program(self, fields: dict[str, Any]) -> dict:
        """The part as the machine runs it, its text filled in for one lab."""
        return {"name": self.name, "op": self.op, "after": list(self.after),
                **{k: _fill(v, fields, self.name) for k, v in self.args.items()}}


@dataclass(frozen=True)
class Probe:
    """The parts a suite runs in each lab's machine, and the lab-specific values they name."""

    parts: Sequence[Part]
    fields: Callable[[Any], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for part in self.parts:
            if not isinstance(part, Part):
                raise SuiteError(f"a Probe holds parts made by pytest_milab.probe functions, "
                                 f"not {part!r}")
            if part.name in seen:
                raise SuiteError(f"two probe parts are named {part.name!r}")
            for need in part.after:
                if need not in seen:
                    raise SuiteError(f"probe part {part.name!r} comes after {need!r}, which is "
                                     "not an earlier part")
            seen.add(part.name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts)


def _fill(value: Any, fields: dict[str, Any], part: str) -> Any:
    if isinstance(value, str):
        try:
            return value.format_map(fields)
        except (KeyError, AttributeError, IndexError) as exc:
            raise SuiteError(f"probe part {part!r} names {{{exc.args[0]}}}, which the probe's "
                             "fields do not give") from None
    if isinstance(value, dict):
        return {k: _fill(v, fields, part) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_fill(v, fields, part) for v in value]
    return value


def _source(source: str) -> str:
    if source not in SOURCES:
        raise SuiteError(f"a token source is one of {', '.join(SOURCES)}, not {source!r}")
    return source


def imds(name: str, path: str, *, source: str = "imds", after: Sequence[str] = ()) -> Part:
    """GET a metadata path (`Metadata: true`): {"status", "json", "text"}."""
    return Part(name, "imds", {"path": path, "source": _source(source)}, tuple(after))


def token(name: str, resource: str, *, source: str = "imds") -> Part:
    """Ask the identity endpoint for a token: {"status", "code", "message", "claims"}; the
    token stays in the machine for the parts that call with it."""
    return Part(name, "token", {"resource": resource, "source": _source(source)})


def http(name: str, url: str, *, method: str = "GET", token: str | None = None,
         source: str = "imds", form: dict | None = None, json: Any = None,
         after: Sequence[str] = (), attempts: int = 4) -> Part:
    """An HTTP call from the machine, with the identity's token for `token` (a resource) if
    given: {"status", "code", "message", "inner", "json", "claims" (of a token it returned)};
    secret-bearing fields of the answer come back as keyed digests. `form` values may be
    `stored(...)` secrets, and the URL may hold `<stored:NAME>` (filled in the machine)."""
    args = {"url": url, "method": method, "token": token, "source": _source(source),
            "attempts": attempts}
    if form is not None:
        args["form"] = form
    if json is not None:
        args["json"] = json
    return Part(name, "http", args, tuple(after))


def secret(name: str, url: str, *, token: str = VAULT, source: str = "imds",
           keep: str | None = None, after: Sequence[str] = ()) -> Part:
    """Read a Key Vault secret as the identity: {"status", "code", "message", "value" (keyed
    digest), "fields" and "compact" when it holds a JSON object}. `keep` names it for later
    parts (`stored(keep)`); it never leaves the machine."""
    return Part(name, "secret", {"url": url, "token": token, "source": _source(source),
                                 "keep": keep}, tuple(after))


def stored(name: str, field: str | None = None) -> dict:
    """A kept secret (or a field of its JSON), as a value of a later part's `form`."""
    return {"stored": name, "field": field}


ATTESTED_VERSION = "2020-09-01"  # vmId, subscriptionId, sku, licenseType are all signed


def attested(name: str, *, api_version: str = ATTESTED_VERSION, source: str = "imds",
             after: Sequence[str] = ()) -> Part:
    """IMDS's attested document, for a nonce the grader makes per lab; the grader verifies it
    before any check reads it, and `lab.signed(name)` is its signed content (see
    pytest_milab.azure.attest)."""
    if source != "imds":
        raise SuiteError("the attested document is IMDS's (an Azure VM's); HIMDS has none")
    return Part(name, "attested", {"api_version": api_version, "source": source}, tuple(after))


def signed_token(name: str, *, source: str = "imds", client_credentials: dict | None = None,
                 after: Sequence[str] = ()) -> Part:
    """A token for the grader's evidence audience (`--milab-evidence-audience`, an app
    registration that authorizes nothing), from the identity endpoint or, with
    `client_credentials={"tenant": stored(...), "client_id": stored(...), "client_secret":
    stored(...)}`, by signing in as a service principal. The token comes back whole (it opens
    nothing) and the grader keeps only its verified claims: `lab.signed(name)`. Without the
    option the part does not run and `lab.signed(name)` is None."""
    args: dict[str, Any] = {"source": _source(source)}
    if client_credentials is not None:
        missing = {"tenant", "client_id", "client_secret"} - set(client_credentials)
        if missing:
            raise SuiteError(f"signed_token {name!r}: client_credentials lacks "
                             f"{', '.join(sorted(missing))}")
        args["client_credentials"] = dict(client_credentials)
    return Part(name, "signed_token", args, tuple(after))


SIGNED_OPS = ("attested", "signed_token")


def which(name: str, program: str) -> Part:
    """Where a program is on the machine's PATH: {"path"} (None when it is not there)."""
    return Part(name, "which", {"name": program})


def command(name: str, argv: Sequence[str], *, temp_env: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 120,
            after: Sequence[str] = ()) -> Part:
    """Run a program: {"installed", "exit_code", "stderr" (last line), "json" (its stdout as
    JSON, redacted)}. `temp_env` names a variable set to a temporary folder removed afterwards
    (e.g. AZURE_CONFIG_DIR, so the student's own state is untouched)."""
    return Part(name, "command", {"argv": list(argv), "temp_env": temp_env, "env": env or {},
                                  "timeout": timeout}, tuple(after))
