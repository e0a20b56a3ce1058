"""Chain-of-custody checks: every recorded file hash, every document's text, the corpus fingerprint."""

from __future__ import annotations

from dataclasses import dataclass, field

from provenance.errors import RunDirectoryError
from provenance.store.hashing import combined_sha256, sha256_file, sha256_text
from provenance.store.run_dir import RunDirectory
from provenance.store.tables import read_table


@dataclass
class Finding:
    """One problem: the file (relative to the run), and what is wrong with it."""

    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


@dataclass
class HashReport:
    files_checked: int = 0
    documents_checked: int = 0
    findings: list[Finding] = field(default_factory=list)


def verify_hashes(run: RunDirectory) -> HashReport:
    """Recompute every hash the manifest records; list every mismatch, missing or unrecorded file."""
    manifest = run.read_manifest()
    report = HashReport()
    recorded: dict[str, str] = manifest.get("files", {})
    if not recorded:
        report.findings.append(Finding("manifest.json", "records no file hashes (the run never completed)"))
    for rel, expected in sorted(recorded.items()):
        path = run.path / rel
        report.files_checked += 1
        if not path.is_file():
            report.findings.append(Finding(rel, "is missing"))
        elif sha256_file(path) != expected:
            report.findings.append(Finding(rel, "SHA-256 differs from the manifest (the file was changed)"))
    present = {f.relative_to(run.path).as_posix() for f in run.hashed_files()}
    for rel in sorted(present - set(recorded)):
        report.findings.append(Finding(rel, "is not recorded in the manifest"))
    _verify_documents(run, manifest, report)
    return report


def _verify_documents(run: RunDirectory, manifest: dict, report: HashReport) -> None:
    rel = run.corpus_path.relative_to(run.path).as_posix()
    try:
        corpus = read_table(run.corpus_path, "corpus")
    except RunDirectoryError as exc:
        report.findings.append(Finding(rel, str(exc)))
        return
    for doc_id, text, expected in zip(corpus["doc_id"], corpus["text"], corpus["sha256"]):
        report.documents_checked += 1
        if sha256_text(text) != expected:
            report.findings.append(Finding(rel, f"document {doc_id!r}: text does not match its SHA-256"))
    recorded = manifest.get("corpus", {}).get("sha256")
    if recorded and combined_sha256(corpus["sha256"]) != recorded:
        report.findings.append(Finding(rel, "the corpus fingerprint differs from manifest.json corpus.sha256"))
