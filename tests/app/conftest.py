"""Fixtures of the app tests: a real tiny run (trained + indexed once per session), a corrupt copy, an
unfinished copy, a synthetic 10k-document run, and AppTest factories pointed at them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .runs import build_large_run, build_many_targets_run, build_small_run  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "app.py"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    """attribution_runs/ with: small (complete, indexed), broken (values.parquet corrupt), unfinished
    (status 'training'). Read-only for the tests: the app must not change it."""
    root = tmp_path_factory.mktemp("attribution_runs")
    small = build_small_run(root, tmp_path_factory.mktemp("corpus") / "docs", "small")
    broken = root / "broken"
    shutil.copytree(small, broken)
    (broken / "values.parquet").write_bytes(b"this is not parquet")
    unfinished = root / "unfinished"
    shutil.copytree(small, unfinished, ignore=shutil.ignore_patterns("evidence", "checkpoints", "model"))
    manifest = json.loads((unfinished / "manifest.json").read_text(encoding="utf-8"))
    manifest["status"] = "training"
    (unfinished / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def many_root(tmp_path_factory) -> Path:
    """A runs folder with one run of 22 targets (the app offers the combined ranking for it)."""
    root = tmp_path_factory.mktemp("many_runs")
    build_many_targets_run(root, tmp_path_factory.mktemp("corpus_many") / "docs")
    return root


@pytest.fixture(scope="session")
def small_run(runs_root) -> Path:
    return runs_root / "small"


@pytest.fixture(scope="session")
def large_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("large_runs")
    build_large_run(root / "large")
    return root


@pytest.fixture(scope="session")
def small_index(small_run):
    from provenance.evidence import load_index

    return load_index(small_run)


@pytest.fixture
def make_app(monkeypatch):
    """make_app(root, run=None) -> a fresh AppTest of app.py reading runs from ``root`` (not yet run)."""
    from streamlit.testing.v1 import AppTest

    def make(root: Path, timeout: float = 240):
        monkeypatch.setenv("PROVENANCE_RUNS_DIR", str(root))
        return AppTest.from_file(str(APP), default_timeout=timeout)

    return make


@pytest.fixture
def downloads(monkeypatch):
    """Captures what download buttons would send (AppTest keeps media in a mock store it discards)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    captured: list[dict] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        captured.append({"data": path_or_data, "mimetype": mimetype, "filename": filename})
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return captured
