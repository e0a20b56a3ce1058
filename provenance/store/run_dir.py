"""The run directory (docs/run_directory.md): paths, manifest, format-version and status checks.

Every later step (attribute, values, verify, index, app, reports) opens a run through
``RunDirectory.open`` so that a run from a newer format, an unfinished run or a missing file is refused
with one clear message instead of a stack trace deep inside a reader.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from provenance import RUN_FORMAT_VERSION, __version__
from provenance.errors import RunDirectoryError
from provenance.store import atomic
from provenance.store.hashing import sha256_file

MANIFEST = "manifest.json"
STATUS_TRAINING = "training"
STATUS_COMPLETE = "complete"
VALUES_META = {
    "sign": "positive = lowered the target's loss",
    "unit": "nats per output token",
}
# Folders whose files the manifest does not hash: written later by other tools that keep their own
# fingerprints (the evidence index records the corpus hash it was built from).
UNHASHED_DIRS = ("evidence",)


def software_versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "provenance": __version__,
    }


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunDirectory:
    """A handle on ``attribution_runs/<run-id>/``; paths follow the contract."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- paths ---------------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def corpus_path(self) -> Path:
        return self.path / "corpus.parquet"

    @property
    def chunks_path(self) -> Path:
        return self.path / "chunks.parquet"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def tokenizer_path(self) -> Path:
        return self.tokenizer_dir / "tokenizer.json"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def targets_path(self) -> Path:
        return self.path / "targets.parquet"

    @property
    def contributions_path(self) -> Path:
        return self.path / "contributions.parquet"

    @property
    def values_path(self) -> Path:
        return self.path / "values.parquet"

    @property
    def ledger_path(self) -> Path:
        return self.path / "ledger.parquet"

    @property
    def train_log_path(self) -> Path:
        return self.path / "train_log.parquet"

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step_{step:06d}"

    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk (half-written ones are temp folders, skipped)."""
        if not self.checkpoints_dir.is_dir():
            return []
        steps = []
        for child in self.checkpoints_dir.iterdir():
            name = child.name
            if child.is_dir() and name.startswith("step_") and name[5:].isdigit():
                if (child / "state.json").is_file():
                    steps.append(int(name[5:]))
        return sorted(steps)

    # -- manifest ------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            raise RunDirectoryError(
                f"{self.path} is not a run directory (no {MANIFEST}); "
                "create one with `provenance train --corpus ... --run ...`"
            )
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirectoryError(f"{self.manifest_path} is not valid JSON ({exc}); the run is corrupt") from exc
        version = manifest.get("format_version")
        if not isinstance(version, int):
            raise RunDirectoryError(f"{self.manifest_path} has no integer format_version; the run is corrupt")
        if version > RUN_FORMAT_VERSION:
            raise RunDirectoryError(
                f"{self.path} has run-directory format version {version}, newer than this provenance "
                f"({__version__}) reads (version {RUN_FORMAT_VERSION}); upgrade provenance to read it"
            )
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic.write_json(self.manifest_path, manifest)

    @classmethod
    def open(cls, path: str | Path, *, require_complete: bool = True) -> RunDirectory:
        """Open an existing run; refuse newer formats and (by default) unfinished runs."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirectoryError(
                f"run directory {run.path} does not exist; train one with `provenance train` "
                "or check the --run path"
            )
        manifest = run.read_manifest()
        if require_complete and manifest.get("status") != STATUS_COMPLETE:
            raise RunDirectoryError(
                f"run {run.path} is not complete (status {manifest.get('status')!r}); finish it with "
                f"`provenance train --run {run.path} --resume`"
            )
        return run

    # -- hashes --------------------------------------------------------------------------------------
    def hashed_files(self) -> list[Path]:
        """Every file the manifest fingerprints: all but the manifest itself and unhashed folders."""
        files = []
        for file in sorted(self.path.rglob("*")):
            if not file.is_file():
                continue
            rel = file.relative_to(self.path)
            if rel.as_posix() == MANIFEST or rel.parts[0] in UNHASHED_DIRS:
                continue
            if any(part.startswith(".") for part in rel.parts):  # temp files of atomic writes
                continue
            files.append(file)
        return files

    def file_hashes(self) -> dict[str, str]:
        return {f.relative_to(self.path).as_posix(): sha256_file(f) for f in self.hashed_files()}
