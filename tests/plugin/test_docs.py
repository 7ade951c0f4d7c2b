"""Lab documents through pytest (pytester, no Azure): which blocks a Markdown document yields,
in which order, how they share a shell, what annotations and sidecars say, document errors,
outcomes, drift and the reports."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def doc(pytester: pytest.Pytester, text: str, name: str = "lab.md"):
    path = pytester.path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def outcomes(pytester: pytest.Pytester, *args: str, doc_name: str = "lab.md") -> dict[int, dict]:
    report = pytester.path / "blocks.json"
    run(pytester, doc_name, "--milab-report", str(report), *args)
    blocks = json.loads(report.read_text())["documents"][0]["blocks"]
    return {b["block"]: b for b in blocks}


def test_fences_prompts_and_indented_list_blocks_run_in_document_order(pytester):
    log = pytester.path / "order.log"
    doc(pytester, f"""
        # A lab

        ```bash
        echo one >> {log}
        ```

        Some JSON, not a command:

        ```json
        {{"echo": "never"}}
        ```

        1. A step with an indented block:

               echo two >> {log}

        2. Console with prompts; the other lines are output:

           ```console
           $ echo three >> {log}
           three
           $ echo four \\
               >> {log}
           ```

        ~~~sh
        echo five >> {log}
        ~~~

            echo indented outside a list is not a command >> {log}

        ```python
        print("never")
        ```
        """)
    result = run(pytester, "lab.md", "-v")
    result.assert_outcomes(passed=4)
    assert log.read_text().split() == ["one", "two", "three", "four", "five"]
    result.stdout.fnmatch_lines(["*lab.md::block1-line4 PASSED*", "*lab.md::block2-line15 PASSED*",
                                 "*lab.md::block3-line20 PASSED*", "*lab.md::block4-line27 PASSED*"])


def test_variables_exports_functions_and_cd_carry_from_block_to_block(pytester):
    doc(pytester, """
        ```bash
        name=world
        export GREETING=hello
        shout() { echo "$1!"; }
        mkdir -p sub && cd sub
        ```

        ```bash
        test "$(shout "$GREETING $name")" = "hello world!"
        test "$(basename "$PWD")" = sub
        bash -c 'test "$GREETING" = hello'
        ```
        """)
    run(pytester, "lab.md").assert_outcomes(passed=2)


def test_a_failed_block_names_command_status_and_output_and_dependents_need_it(pytester):
    doc(pytester, """
        ```bash
        echo starting
        vault=$(echo "not found" >&2; exit 3)
        echo after
        ```

        ```bash
        echo "$vault"
        ```

        ```bash
        echo independent
        ```
        """)
    result = run(pytester, "lab.md")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        "*block 1 (line 2): echo starting",
        "exit status 3 from `vault=$(echo \"not found\" 1>&2; exit 3)`",
        "last lines of output:", "  | starting", "  | not found", "  | after",
        "*block 2 (line 8): echo \"$vault\"", "needs block 1 (it sets $vault and did not pass)"])


def test_annotations_say_where_a_block_runs_and_what_it_must_show(pytester):
    doc(pytester, """
        <!-- milab: expect=fail contains="denied" -->
        ```bash
        echo "access denied"; false
        ```

        <!-- milab: contains="granted" -->
        ```bash
        echo "access denied"
        ```

        <!-- milab: matches="^id [0-9]+$" not-contains="error" -->
        ```bash
        echo "looking up"; echo "id 42"; echo done
        ```

        <!--
          milab: skip="needs a browser"
        -->
        ```bash
        false
        ```

        <!-- milab: on=vm -->
        ```bash
        hostname
        ```

        <!-- milab: expect=fail -->
        ```bash
        true
        ```
        """)
    got = outcomes(pytester)
    assert [got[n]["outcome"] for n in range(1, 7)] == [
        "passed", "failed", "passed", "skipped", "failed", "failed"]
    assert got[2]["reason"] == "the output does not contain 'granted'"
    assert got[4]["reason"] == "needs a browser"
    assert got[5]["machine"] == "vm"
    assert got[5]["reason"].startswith("runs in the VM, but no block before it connects with "
                                       "`ssh`")
    assert got[6]["reason"] == "expected to fail (expect=fail) but exited 0"


def test_a_bad_annotation_is_one_line_naming_the_fix(pytester):
    doc(pytester, """
        <!-- milab: on=cloud -->
        ```bash
        true
        ```
        """)
    result = run(pytester, "lab.md")
    result.stdout.fnmatch_lines(["*milab: lab.md:1: on='cloud': expected local or vm*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED


def test_ssh_and_exit_blocks_move_between_machines(pytester):
    from pytest_milab.docs.document import load

    path = doc(pytester, """
        ```bash
        ip=10.0.0.4
        ssh azureuser@$ip
        ```

        ```bash
        curl -s http://169.254.169.254/metadata/instance
        ```

        ```bash
        exit
        ```

        ```bash
        az vm show --name ubuntu
        ```
        """)
    blocks = load(path).blocks
    assert [(b.machine, b.move_to) for b in blocks] == [
        ("local", "vm"), ("vm", None), ("vm", "local"), ("local", None)]
    assert blocks[0].ssh_args == "azureuser@$ip" and blocks[0].body == "ip=10.0.0.4"


def test_a_sidecar_annotates_a_document_its_author_cannot_edit(pytester):
    doc(pytester, """
        ```bash
        echo "Forbidden"; exit 1
        ```

        ```bash
        sleep 0
        ```
        """)
    (pytester.path / "lab.milab.toml").write_text(textwrap.dedent("""
        [[block]]
        number = 1
        expect = "fail"
        contains = ["Forbidden"]

        [[block]]
        match = "sleep"
        skip = "slow on a laptop"
        """))
    got = outcomes(pytester)
    assert (got[1]["outcome"], got[2]["outcome"], got[2]["reason"]) == (
        "passed", "skipped", "slow on a laptop")
    (pytester.path / "lab.milab.toml").write_text("[[block]]\nnumber = 9\non = 'vm'\n")
    result = run(pytester, "lab.md")
    result.stdout.fnmatch_lines(["*lab.milab.toml: *block* 1: names no block of lab.md (give number, line or match)"])


def test_placeholders_and_links_without_an_address_are_document_errors_not_run(pytester):
    marker = pytester.path / "ran"
    doc(pytester, f"""
        See [Get Secret] for the call, and [the docs](https://example.org).

        ```bash
        touch {marker}
        az keyvault show --name <vault-name>
        ```

        ```bash
        curl -H Metadata:true "" | jq
        imds=$(cat <<< "x")
        ```
        """)
    got = outcomes(pytester)
    assert not marker.exists()
    assert got[1]["outcome"] == "failed"
    assert got[1]["reason"].startswith("document error: line 5: placeholder <vault-name> is "
                                       "for the reader to fill in")
    assert "an empty URL" in got[2]["reason"] and "placeholder" not in got[2]["reason"]
    result = run(pytester, "lab.md")
    result.stdout.fnmatch_lines(["*document errors:*", "*line 1: ?Get Secret? is written as a "
                                 "link but has no address*"])


def test_a_block_that_hangs_is_ended_at_its_deadline(pytester):
    doc(pytester, """
        <!-- milab: timeout=1 -->
        ```bash
        echo waiting; sleep 60
        ```

        ```bash
        echo next
        ```
        """)
    started = time.monotonic()
    got = outcomes(pytester)
    assert time.monotonic() - started < 20
    assert got[1]["outcome"] == "failed"
    assert got[1]["reason"] == "did not finish in 1s: ended at its deadline"
    assert got[2]["outcome"] == "passed"


def test_not_markdown_or_no_shell_block_is_one_clear_line(pytester):
    (pytester.path / "binary.md").write_bytes(b"\x00\x01\x02PNG")
    result = run(pytester, "binary.md")
    result.stdout.fnmatch_lines(["*milab: *binary.md: not a Markdown document (binary data)*"])
    doc(pytester, "# Only prose\n\n```json\n{}\n```\n", name="prose.md")
    result = run(pytester, "prose.md")
    result.stdout.fnmatch_lines(["*milab: prose.md: no shell block to run*"])
    (pytester.path / "notes.txt").write_text("echo hi\n")
    result = run(pytester, "--milab-doc", "notes.txt")
    result.stderr.fnmatch_lines(["ERROR: milab: --milab-doc notes.txt: not a Markdown document*"])


def test_docs_from_the_ini_file_and_other_markdown_left_alone(pytester):
    doc(pytester, "```bash\ntrue\n```\n", name="lab.md")
    doc(pytester, "```bash\nfalse\n```\n", name="README.md")
    pytester.makeini("[pytest]\nmilab_docs = lab.md\n")
    result = run(pytester)
    result.assert_outcomes(passed=1)


def test_known_drift_is_named_with_todays_equivalent_and_fixed_in_a_copy(pytester):
    path = doc(pytester, """
        # Lab

        1. A stand-in for the CLI of today (Graph answers `id`, not `objectId`).

           ```bash
           az() { case "$*" in *objectId*) echo "";; *"--object-id "[a-z]*) echo ok;;
                  *) echo "ERROR: argument --object-id: expected one argument" >&2; return 2;;
                  esac; }
           ```

        2. Give yourself a policy.

           ```bash
           objectId=$(az ad signed-in-user show --query objectId --output tsv)
           az keyvault set-policy --name kv --object-id $objectId
           ```

        3. A name.

           ```bash
           echo "http://contributor-$uniq"
           ```
        """)
    result = run(pytester, "lab.md", "--milab-doc-report", "drift.md", "--milab-doc-fix",
                 "fixed.md", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        "*drift: line 14 `objectId=$(az ad signed-in-user show --query objectId --output tsv)`: "
        "`az ad signed-in-user show` has no `objectId` any more: the field is `id`; today: "
        "`objectId=$(az ad signed-in-user show --query id --output tsv)`*"])
    report = (pytester.path / "drift.md").read_text()
    assert ("| 14 | `objectId=$(az ad signed-in-user show --query objectId --output tsv)` | "
            "`az ad signed-in-user show` has no `objectId` any more: the field is `id` | "
            "`objectId=$(az ad signed-in-user show --query id --output tsv)` |") in report
    assert ("| 21 | `echo \"http://contributor-$uniq\"` | $uniq is used but no step sets it | "
            "`uniq=$(md5sum <<< \"$resourceGroupId\" \\| cut -c1-8)` before it |") in report
    assert ("| 2 | 14 | local | failed | exit status 2 from `return 2`; known drift: `az ad "
            "signed-in-user show` has no `objectId` any more: the field is `id` |") in report
    fixed = (pytester.path / "fixed.md").read_text().splitlines()
    original = path.read_text().splitlines()
    assert fixed[13] == "   objectId=$(az ad signed-in-user show --query id --output tsv)"
    assert fixed[20:22] == ['   uniq=$(md5sum <<< "$resourceGroupId" | cut -c1-8)',
                            '   echo "http://contributor-$uniq"']
    assert len(fixed) == len(original) + 1
    junit = (pytester.path / "junit.xml").read_text()
    assert '<property name="milab_drift" value="signed-in-user-objectId" />' in junit
    assert '<property name="milab_outcome" value="failed" />' in junit


def test_secrets_are_masked_in_every_output(pytester):
    doc(pytester, """
        ```bash
        sp='{"appId": "1234", "password": "Sup3r-Secret-Value"}'
        : --password Typed-Secret-99
        ```

        ```bash
        echo "$sp"; echo "p=Sup3r-Secret-Value"; echo Typed-Secret-99; exit 1
        ```
        """)
    result = run(pytester, "lab.md", "--milab-report", "r.json", "--milab-report", "r.csv",
                 "--milab-doc-report", "d.md")
    text = result.stdout.str() + "".join(
        (pytester.path / n).read_text() for n in ("r.json", "r.csv", "d.md"))
    assert "Sup3r-Secret-Value" not in text and "Typed-Secret-99" not in text
    result.stdout.fnmatch_lines(["*| p=****"])


def test_control_characters_from_output_never_reach_the_terminal(pytester):
    doc(pytester, "```bash\nprintf 'evil\\033[2J\\033]52;c;AAAA\\007 text\\n'; exit 1\n```\n")
    result = run(pytester, "lab.md")
    assert "\x1b" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*| evil?2J?52;c;AAAA text"])


@pytest.fixture
def fake_az(pytester, monkeypatch):
    """A stand-in `az` that logs its arguments: what the run asks of Azure."""
    log = pytester.path / "az.log"
    az = pytester.path / "bin" / "az"
    az.parent.mkdir()
    az.write_text(f'#!/bin/bash\necho "$*" >> {log}\necho "az $1 done"\n')
    az.chmod(0o755)
    monkeypatch.setenv("MILAB_AZ_CLI", str(az))
    return log


@pytest.mark.parametrize("keep", [False, True])
def test_real_azure_uses_a_fresh_tagged_group_and_removes_it(pytester, fake_az, keep):
    doc(pytester, """
        ```bash
        az group create --name managed_identity_lab \\
          --location uksouth
        export AZURE_DEFAULTS_GROUP=managed_identity_lab
        az vm show --name ubuntu --resource-group $AZURE_DEFAULTS_GROUP
        ```
        """)
    result = run(pytester, "lab.md", *(["--milab-keep"] if keep else []))
    result.assert_outcomes(passed=1)
    calls = fake_az.read_text().splitlines()
    group = calls[0].split()[3]
    assert group.startswith("milab-doc-") and group != "managed_identity_lab"
    run_id = group.removeprefix("milab-doc-")
    assert calls[:2] == [f"group create --name {group} --tags milab-run={run_id} --location uksouth",
                         f"vm show --name ubuntu --resource-group {group}"]
    if keep:
        assert len(calls) == 2
        result.stdout.fnmatch_lines([f"milab: kept resource group {group} (--milab-keep); "
                                     f"remove it with `milab cleanup --run {run_id}`"])
    else:
        assert calls[2:] == [f"group delete --name {group} --yes --no-wait"]
        result.stdout.fnmatch_lines([f"milab: deleting resource group {group}"])


def test_shell_options_and_aliases_carry_over_and_xdist_is_refused(pytester):
    doc(pytester, """
        ```bash
        set -o pipefail
        shopt -s expand_aliases
        alias greet='echo hi'
        ```

        ```bash
        test "$(greet)" = hi
        test "$(false | true; echo $?)" = 1
        ```
        """)
    run(pytester, "lab.md").assert_outcomes(passed=2)
    result = run(pytester, "lab.md", "-n", "2")
    result.stderr.fnmatch_lines(["ERROR: milab: a lab document runs block by block in one "
                                 "shell: drop -n (pytest-xdist) for lab documents"])


def test_the_local_azure_without_an_azure_cli_is_one_line(pytester, monkeypatch):
    monkeypatch.delenv("MILAB_AZ_CLI", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    doc(pytester, "```bash\ntrue\n```\n")
    result = run(pytester, "lab.md", "--milab-emulator")
    result.stderr.fnmatch_lines(["ERROR: milab: a lab document in the local Azure needs an "
                                 "Azure CLI: set MILAB_AZ_CLI*"])


def test_real_azure_removes_the_app_registrations_the_document_made(pytester, monkeypatch):
    log = pytester.path / "az.log"
    az = pytester.path / "bin" / "az"
    az.parent.mkdir()
    # create-for-rbac answers as the CLI does: JSON with the new application's appId.
    az.write_text(f'#!/bin/bash\necho "$*" >> {log}\n'
                  'if [ "$2" = sp ]; then echo \'{"appId": "11111111-2222-3333-4444-555555555555",'
                  ' "password": "s3cr3t-Value", "tenant": "t"}\'; fi\n')
    az.chmod(0o755)
    monkeypatch.setenv("MILAB_AZ_CLI", str(az))
    doc(pytester, """
        ```bash
        az group create --name managed_identity_lab --location uksouth
        az ad sp create-for-rbac --name "http://contributor-$uniq"
        ```
        """)
    result = run(pytester, "lab.md")
    calls = log.read_text().splitlines()
    assert "ad app delete --id 11111111-2222-3333-4444-555555555555" in calls
    result.stdout.fnmatch_lines(["milab: deleted app registration "
                                 "11111111-2222-3333-4444-555555555555"])
    assert "s3cr3t-Value" not in result.stdout.str()
