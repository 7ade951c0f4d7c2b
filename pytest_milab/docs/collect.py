"""pytest's side of lab documents: a `.md` file given on the command line (or in `milab_docs`
/ `--milab-doc`) is collected as one item per shell block, in document order."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ..errors import MilabError
from ..text import clean
from . import drift, report
from .document import DocumentError, load
from .runner import FAILED, SKIPPED, DocSession, Place


class DocBlockFailed(Exception):
    pass


class DocsPlugin:
    """Registered when the run has lab documents: collects them, runs them, reports."""

    def __init__(self, config: pytest.Config, settings, docs: list[Path]) -> None:
        from ..provision import new_run_id

        self.config = config
        self.settings = settings
        if settings.emulator and not (os.environ.get("MILAB_AZ_CLI") or shutil.which("az")):
            raise pytest.UsageError("milab: a lab document in the local Azure needs an Azure "
                                    "CLI: set MILAB_AZ_CLI to an `az` in its own venv (tox -e "
                                    "azcli builds one)")
        for path in settings.reports:
            if Path(path).suffix.lower() not in (".json", ".csv"):
                raise pytest.UsageError(f"milab: --milab-report {path}: a lab document's blocks "
                                        "go to .json or .csv; its drift report to "
                                        "--milab-doc-report PATH.md")
        self.docs = {p.resolve() for p in docs}
        self.sessions: list[DocSession] = []
        self.place = Place(emulator=settings.emulator, keep=settings.keep, run_id=new_run_id(),
                           ssh_key=settings.ssh_key, ssh_port=settings.ssh_port,
                           ssh_config=settings.ssh_config, timeout=settings.doc_timeout)

    def pytest_collect_file(self, file_path: Path, parent):
        if file_path.resolve() in self.docs:
            return DocFile.from_parent(parent, path=file_path)
        return None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        for s in self.sessions:
            s.close()
        try:
            self.place.finish()
        except Exception as exc:  # noqa: BLE001  the run's results still get written
            self.place.notes.append(f"could not clean up: {clean(exc)}")
        done = [s for s in self.sessions if s.results]
        several = len(done) > 1
        for s in done:
            if self.settings.doc_report:
                path = report.per_document(self.settings.doc_report, s, several)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(report.markdown(s), encoding="utf-8")
                self.place.notes.append(f"drift report written to {path.resolve()}")
            if self.settings.doc_fix:
                path = report.per_document(self.settings.doc_fix, s, several)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(drift.apply(s.doc, report.drifts(s)), encoding="utf-8")
                self.place.notes.append(f"document with today's equivalents written to "
                                        f"{path.resolve()}")
        for path in self.settings.reports:
            if Path(path).suffix.lower() in (".json", ".csv"):
                report.write_data(path, done)
                self.place.notes.append(f"report written to {os.path.abspath(path)}")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not any(s.results for s in self.sessions) and not self.place.notes:
            return  # nothing ran (--collect-only)
        terminalreporter.write_sep("=", "milab: lab documents")
        for s in self.sessions:
            if s.results:
                for line in report.terminal_lines(s):
                    terminalreporter.write_line(line)
        for note in self.place.notes:
            terminalreporter.write_line(f"milab: {clean(note, 500)}")


class DocFile(pytest.File):
    def collect(self):
        plugin: DocsPlugin = self.config.pluginmanager.get_plugin("milab-docs")
        try:
            doc = load(Path(self.path))
        except DocumentError as exc:
            raise self.CollectError(f"milab: {clean(exc, 500)}") from None
        if not doc.blocks:
            raise self.CollectError(
                f"milab: {self.path.name}: no shell block to run (fenced bash, sh, shell or console "
                "blocks, or indented commands in a step list)")
        session = DocSession(doc, plugin.place)
        plugin.sessions.append(session)
        if doc.problems:
            yield DocProblems.from_parent(self, name="document", problems=doc.problems)
        for block in doc.blocks:
            yield DocBlock.from_parent(self, name=f"block{block.number}-line{block.line}",
                                       doc_session=session, block=block)


class DocProblems(pytest.Item):
    """Mistakes of the document as a whole (links written as bare words)."""

    def __init__(self, *, problems: list[str], **kw) -> None:
        super().__init__(**kw)
        self.problems = problems

    def runtest(self) -> None:
        self.user_properties.append(("milab_outcome", FAILED))
        raise DocBlockFailed("document errors:\n" + "\n".join(
            f"  {clean(p, 300)}" for p in self.problems))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, DocBlockFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, 0, f"{self.path.name}: document"


class DocBlock(pytest.Item):
    def __init__(self, *, doc_session: DocSession, block, **kw) -> None:
        super().__init__(**kw)
        self.doc_session = doc_session
        self.block = block

    def runtest(self) -> None:
        try:
            result = self.doc_session.run(self.block)
        except MilabError as exc:  # the local Azure or the Azure CLI could not start
            raise DocBlockFailed(f"milab: {clean(exc, 500)}") from None
        self.user_properties += [("milab_block", self.block.number),
                                 ("milab_line", self.block.line),
                                 ("milab_machine", self.block.machine),
                                 ("milab_outcome", result.outcome)]
        self.user_properties += [("milab_drift", d.entry.id) for d in result.drifts]
        if result.outcome == SKIPPED:
            pytest.skip(result.reason)
        if result.outcome == FAILED:
            masker = self.doc_session.masker
            raise DocBlockFailed(masker(f"{clean(self.block.title(masker))}\n"
                                        f"{result.details()}"))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, DocBlockFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, self.block.line - 1, clean(self.block.title(self.doc_session.masker))


def docs_of(config: pytest.Config, settings) -> list[Path]:
    """The lab documents of this run: `.md` files on the command line, and --milab-doc /
    milab_docs (added to the command line's paths). A doc that is not Markdown: one line."""
    given = [Path(str(a).split("::")[0]) for a in config.args
             if str(a).split("::")[0].lower().endswith(".md")]
    root = Path(str(config.rootpath))
    extra = []
    for doc in settings.docs:
        path = Path(doc)
        if not path.is_absolute() and not path.exists():
            path = root / path
        if path.suffix.lower() != ".md":
            raise pytest.UsageError(f"milab: --milab-doc {doc}: not a Markdown document (the "
                                    "name must end in .md)")
        if not path.is_file():
            raise pytest.UsageError(f"milab: --milab-doc {doc}: no such file")
        extra.append(path)
    if extra:
        explicit = config.args_source == pytest.Config.ArgsSource.ARGS
        if not explicit:
            config.args[:] = []
        config.args.extend(str(p) for p in extra if str(p) not in config.args)
    for path in given:
        if not Path(config.invocation_params.dir, path).is_file():
            raise pytest.UsageError(f"milab: {path}: no such file")
    return [Path(config.invocation_params.dir, p) for p in given] + extra
