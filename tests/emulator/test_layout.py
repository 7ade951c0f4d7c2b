"""The emulator's layout: host names defined once (hosts.py), resource providers registered
explicitly (arm.PROVIDERS, arm.providers()), one ARM routing path (arm.dispatch), and no import
loop (knobs apart from state: faults imports neither)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest_milab.emulator as emulator
from pytest_milab.emulator import hosts

PACKAGE = Path(emulator.__file__).parent
# The names only hosts.py may spell (in code; docstrings and comments may speak of them).
SPELLED_ONCE = (hosts.ARM_HOST, *hosts.LOGIN_HOSTS, hosts.GRAPH_HOST, hosts.VAULT_SUFFIX,
                hosts.CONTROL_HOST, hosts.IMDS_HOST, str(hosts.HIMDS_PORT), hosts.TENANT_DOMAIN,
)  # not aka.ms: error messages link to aka.ms pages


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            out.add(id(node.body[0].value))
    return out


def _code_strings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docs]


def test_host_names_are_spelled_only_in_hosts_py():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "hosts.py":
            continue
        for value in _code_strings(path):
            for name in SPELLED_ONCE:
                if name in value:
                    found.setdefault(str(path.relative_to(PACKAGE)), set()).add(name)
    assert found == {}


# -- resource providers are registered explicitly -------------------------------------------------
def _run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_importing_a_provider_registers_nothing():
    """Every emulator module imported, and still no registry anywhere holds a resource type:
    only `arm.providers()` (called by `arm.build_app`) fills one."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import pytest_milab.emulator as emulator
        from pytest_milab.emulator.arm.kinds import Registry
        for info in pkgutil.walk_packages(emulator.__path__, "pytest_milab.emulator."):
            importlib.import_module(info.name)
        filled = [f"{name}.{attr}" for name, module in list(sys.modules.items())
                  if name.startswith("pytest_milab.emulator")
                  for attr, value in vars(module).items()
                  if isinstance(value, Registry) and (value.kinds or value.namespaces)]
        assert not filled, filled
    """)
    done = _run_fresh(code)
    assert done.returncode == 0, done.stderr


def test_each_listed_provider_is_served_and_only_those():
    from pytest_milab.emulator.arm import app as arm

    everything = arm.providers()
    for module in arm.PROVIDERS:
        alone = arm.providers((module,))
        assert alone.namespaces, module.__name__
        assert set(alone.kinds) <= set(everything.kinds), module.__name__
        assert set(alone.namespaces) <= set(everything.namespaces), module.__name__
    assert set(everything.namespaces) == {
        "microsoft.resources", "microsoft.authorization", "microsoft.network", "microsoft.compute",
        "microsoft.managedidentity", "microsoft.hybridcompute", "microsoft.keyvault"}
    without_vaults = arm.providers(tuple(m for m in arm.PROVIDERS
                                         if not m.__name__.endswith(".arm.keyvault")))
    assert without_vaults.known_namespace("Microsoft.KeyVault") is None
    assert everything.known_namespace("microsoft.keyvault") == "Microsoft.KeyVault"


def test_a_listed_provider_answers_through_arm(local_azure, operator_credential):
    """The running ARM serves a type of each registered namespace (an empty list is served)."""
    import requests

    token = operator_credential.get_token("https://management.azure.com/.default").token
    sub = local_azure.subscription_id
    for path, version in [
        ("providers/Microsoft.KeyVault/vaults", "2023-07-01"),
        ("providers/Microsoft.Network/virtualNetworks", "2024-05-01"),
        ("providers/Microsoft.HybridCompute/machines", "2024-07-10"),
        ("resourcegroups", "2022-09-01"),
    ]:
        r = requests.get(f"https://management.azure.com/subscriptions/{sub}/{path}",
                         params={"api-version": version},
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, (path, r.text)
        assert "value" in r.json()


# -- one routing path -----------------------------------------------------------------------------
def test_every_arm_request_goes_through_dispatch(local_azure, operator_credential, monkeypatch):
    """Microsoft.Resources' own paths (subscriptions, groups, providers, resource lists) take the
    same `arm.dispatch` as the other providers' types."""
    import requests

    from pytest_milab.emulator.arm import app as arm

    seen: list[str] = []
    real = arm.dispatch

    def recording(ctx, kind, mode, segs, top_resource=None):
        seen.append(f"{kind.ns}/{'/'.join(kind.types)} {mode}")
        return real(ctx, kind, mode, segs, top_resource)

    monkeypatch.setattr(arm, "dispatch", recording)
    token = operator_credential.get_token("https://management.azure.com/.default").token
    sub = f"/subscriptions/{local_azure.subscription_id}"
    cases = [
        ("/subscriptions", "2022-12-01", "Microsoft.Resources/subscriptions collection"),
        ("/tenants", "2022-12-01", "Microsoft.Resources/tenants collection"),
        (sub, "2022-12-01", "Microsoft.Resources/subscriptions item"),
        (f"{sub}/locations", "2022-12-01", "Microsoft.Resources/locations collection"),
        (f"{sub}/providers", "2021-04-01", "Microsoft.Resources/providers collection"),
        (f"{sub}/resourcegroups", "2021-04-01", "Microsoft.Resources/resourceGroups collection"),
        (f"{sub}/resources", "2021-04-01", "Microsoft.Resources/resources collection"),
        (f"{sub}/providers/Microsoft.KeyVault/vaults", "2023-07-01",
         "Microsoft.KeyVault/vaults collection"),
    ]
    for path, version, expected in cases:
        seen.clear()
        r = requests.get(f"https://management.azure.com{path}", params={"api-version": version},
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, (path, r.text)
        assert seen == [expected], path
    seen.clear()
    r = requests.get(f"https://management.azure.com{sub}/resourcegroups/no-such-group",
                     params={"api-version": "1999-01-01"},
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidApiVersionParameter"
    assert seen == ["Microsoft.Resources/resourceGroups item"]


# -- no import loop -------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Each emulator module's emulator imports at module level (not those inside functions or
    under `if TYPE_CHECKING:`, which run later or never)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module and target in modules:
                    deps.add(target)
                deps.update(f"{target}.{a.name}" for a in node.names
                            if f"{target}.{a.name}" in modules)
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names]
                deps.update(n for n in names if n in modules)
        graph[name] = deps
    return graph


def test_no_import_loop_between_emulator_modules():
    graph = _import_graph()
    assert "pytest_milab.emulator.knobs" in graph["pytest_milab.emulator.state"]
    assert graph["pytest_milab.emulator.faults"].isdisjoint(
        {"pytest_milab.emulator.knobs", "pytest_milab.emulator.state"})
    loops, done, path = [], set(), []

    def visit(name: str) -> None:
        path.append(name)
        for dep in sorted(graph[name]):
            if dep in path:
                loops.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name)
    assert loops == []


def test_each_emulator_module_imports_alone_in_a_fresh_interpreter():
    names = sorted(_import_graph())

    def alone(name: str) -> tuple[str, str]:
        done = _run_fresh(f"import {name}")
        return name, done.stderr.strip().splitlines()[-1] if done.returncode else ""

    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = {name: err for name, err in pool.map(alone, names) if err}
    assert failed == {}
