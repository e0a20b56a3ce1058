from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from provenance.train import train

from .tiny import TARGETS, tiny_config, write_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_corpus) -> Path:
    """One completed tiny run with two targets registered before training (read-only: copy to change)."""
    path = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_corpus, path, tiny_config(), targets=TARGETS, progress=False)
    return path


@pytest.fixture()
def run_copy(trained_run, tmp_path) -> Path:
    dest = tmp_path / "tiny"
    shutil.copytree(trained_run, dest)
    return dest
