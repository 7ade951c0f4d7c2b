"""The managed-identity lab document run as its reader would, through the real Azure CLI against
the local Azure (`tox -e azcli`): the commands as first published break where Azure and the CLI
have moved on, and the drift report names each line with today's form; the copy
`--milab-doc-fix` writes (example_suites/managed_identity/lab.fixed.md) passes every block, in
the VM too."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.environ.get("MILAB_AZ_CLI"),
    reason="no Azure CLI configured: set MILAB_AZ_CLI to an `az` in its own venv (tox -e azcli)")]

SUITE = Path(__file__).resolve().parents[2] / "example_suites" / "managed_identity"


def run_document(pytester: pytest.Pytester, name: str, *args: str):
    shutil.copy(SUITE / name, pytester.path / name)
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", name, "--milab-emulator", "--milab-report", "blocks.json",
        "--milab-doc-report", "drift.md", *args, timeout=900)
    seconds = time.monotonic() - started
    blocks = json.loads((pytester.path / "blocks.json").read_text())["documents"][0]["blocks"]
    return result, {b["block"]: b for b in blocks}, (pytester.path / "drift.md").read_text(), \
        seconds


def drift_ids(block: dict) -> list[str]:
    return [d["id"] for d in block["drift"]]


def test_the_lab_document_as_published_drifts_where_azure_moved_on(pytester):
    result, blocks, report, seconds = run_document(pytester, "lab.md", "--milab-doc-fix",
                                                   "fixed.md")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcome = {n: b["outcome"] for n, b in blocks.items()}
    assert [outcome[n] for n in (1, 2, 7)] == ["passed", "passed", "skipped"]
    # Each broken line is named, with the block where it bit.
    assert drift_ids(blocks[3]) == ["signed-in-user-objectId"]
    assert blocks[3]["reason"].startswith("exit status 2 from `az keyvault set-policy")
    assert drift_ids(blocks[4]) == ["keyvault-rbac-default"]
    assert blocks[4]["drift"][0]["line"] == 48  # the vault's creation, not the refused write
    assert drift_ids(blocks[5]) == ["token-cache-file"]
    assert drift_ids(blocks[6]) == ["image-alias-UbuntuLTS"]
    assert "role-assignment-scope" in drift_ids(blocks[15])
    assert blocks[25]["reason"].startswith("uses $uniq, which no block sets")
    # No VM: the in-VM blocks need the ssh step, and say so instead of failing on their own.
    assert blocks[9]["reason"] == "needs block 8 (its ssh did not reach the VM)"
    assert "public-ip-standard-imds" in drift_ids(blocks[11])
    assert blocks[26]["reason"] == "needs block 25 (it sets $sp and did not pass)"
    rows = {
        48: "| 48 | `az keyvault create --name $vault --retention-days 7` | `az keyvault create` "
            "makes an Azure RBAC vault by default, which refuses access policies: add "
            "`--enable-rbac-authorization false` | `az keyvault create --name $vault "
            "--retention-days 7 --enable-rbac-authorization false` |",
        57: "| 57 | `objectId=$(az ad signed-in-user show --query objectId --output tsv)` | "
            "`az ad signed-in-user show` has no `objectId` any more: the field is `id` | "
            "`objectId=$(az ad signed-in-user show --query id --output tsv)` |",
        73: "| 73 | `ls -l ~/.azure/accessTokens.json` |",
        83: "| 83 | `--image UbuntuLTS --os-disk-name ubuntu-os \\` | the image alias "
            "`UbuntuLTS` was retired: use `Ubuntu2204` | `--image Ubuntu2204 --os-disk-name "
            "ubuntu-os \\` |",
        135: "| 135 | `publicIpAddress=$(jq -r .network.interface[0].ipv4.ipAddress[0]."
             "publicIpAddress <<< $imds)` | new public IPs are Standard",
        175: "| 175 | `az role assignment create --assignee $identityObjectId --resource-group "
             "$AZURE_DEFAULTS_GROUP --role \"Reader\"` | `az role assignment create` needs "
             "`--scope`: `--resource-group` alone is refused | `az role assignment create "
             "--assignee $identityObjectId --scope $(az group show --name "
             "$AZURE_DEFAULTS_GROUP --query id --output tsv) --role \"Reader\"` |",
        265: "| 265 | `sp=$(az ad sp create-for-rbac --name \"http://contributor-$uniq\" --role "
             "Contributor --scope $resourceGroupId)` | $uniq is used but no step sets it | "
             "`uniq=$(md5sum <<< \"$resourceGroupId\" \\| cut -c1-8)` before it |",
    }
    table = [line for line in report.splitlines() if line.startswith("| ") and "`" in
             line.split("|")[2]]
    assert [int(line.split("|")[1]) for line in table] == sorted(rows)
    for line, row in rows.items():
        assert any(t.startswith(row) for t in table), (line, table)
    assert "34 blocks: 2 passed, 31 failed, 1 skipped, 0 not run." in report
    # The copy with today's equivalents is the one kept beside the document.
    assert (pytester.path / "fixed.md").read_text() == (SUITE / "lab.fixed.md").read_text()
    print(f"\nthe lab document as published: {seconds:.1f}s")


def test_the_fixed_lab_document_passes_every_block_in_the_local_azure(pytester):
    result, blocks, report, seconds = run_document(pytester, "lab.fixed.md")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    assert {n: b["outcome"] for n, b in blocks.items()} == {
        n: "skipped" if n == 7 else "passed" for n in range(1, 35)}
    vm = [n for n, b in blocks.items() if b["machine"] == "vm"]
    assert len(vm) == 18  # IMDS, tokens, the denial and allowance, Key Vault, the CLI in the VM
    assert "34 blocks: 33 passed, 0 failed, 1 skipped, 0 not run." in report
    # What no fix can change is still said: a Standard IP is not in IMDS.
    assert drift_ids(blocks[11]) == ["public-ip-standard-imds"]
    assert "| 11 | 133 | vm | passed |" in report
    print(f"\nthe fixed lab document: {seconds:.1f}s")


def test_a_lab_block_that_hangs_in_the_vm_is_ended_and_the_session_goes_on(pytester):
    (pytester.path / "hang.md").write_text("""
```bash
az group create --name hang --location uksouth -o none
az vm create -g hang --name box --image Ubuntu2204 --generate-ssh-keys -o none
ssh $(az vm show -d -g hang --name box --query publicIps --output tsv)
```

```bash
where=vm
```

<!-- milab: timeout=3 -->
```bash
echo waiting; sleep 120
```

```bash
echo "still in the $where"
test "$where" = vm
exit
```

```bash
ssh $(az vm show -d -g hang --name box --query publicIps --output tsv)
```

```bash
echo "a new session: $where"
```
""")
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "hang.md",
                                           "--milab-emulator", timeout=600)
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(["*block 3 (line 14): echo waiting; sleep 120",
                                 "did not finish in 3s: ended at its deadline",
                                 "*block 6 (line 28): echo \"a new session: $where\"",
                                 "uses $where, which no block sets*"])
    assert time.monotonic() - started < 120
