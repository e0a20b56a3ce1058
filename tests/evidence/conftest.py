"""Session fixtures: the encoder, one indexed fixture run, its loaded index, private copies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .fixture_run import write_run  # noqa: E402


@pytest.fixture(scope="session")
def encoder():
    from provenance.evidence.encoder import load_encoder

    return load_encoder()


@pytest.fixture(scope="session")
def indexed_run(tmp_path_factory, encoder) -> Path:
    """A fixture run with its evidence index built once for the session (do not modify it)."""
    from provenance.evidence.index import build_index

    run = write_run(tmp_path_factory.mktemp("runs") / "fixture-run")
    build_index(run, progress=False)
    return run


@pytest.fixture(scope="session")
def loaded_index(indexed_run):
    from provenance.evidence.index import load_index

    return load_index(indexed_run)


@pytest.fixture
def run_copy(indexed_run, tmp_path) -> Path:
    """A private copy of the indexed run, for tests that change files."""
    target = tmp_path / indexed_run.name
    shutil.copytree(indexed_run, target)
    return target
