"""A run killed with SIGKILL after a checkpoint and resumed equals an uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from provenance.errors import RunDirectoryError, RunMismatchError
from provenance.train import resume

from .tiny import tiny_config

# The child trains normally, but parks forever right after writing the step-4 checkpoint, so the
# parent can SIGKILL it at a known point (mid-run: steps 5-6 and the final tables are not written).
CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import provenance.train.trainer as trainer
    from train.tiny import TARGETS, tiny_config
    original = trainer.save_checkpoint
    def save_then_park(run, step, *args, **kwargs):
        out = original(run, step, *args, **kwargs)
        if step == 4:
            print("CHECKPOINT", flush=True)
            time.sleep(600)
        return out
    trainer.save_checkpoint = save_then_park
    trainer.train({corpus!r}, {run!r}, tiny_config(), targets=TARGETS, progress=False)
    """
)


def _kill_after_checkpoint(corpus: Path, run: Path) -> None:
    tests = str(Path(__file__).resolve().parent.parent)
    code = CHILD.format(tests=tests, corpus=str(corpus), run=str(run))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "CHECKPOINT", child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, tiny_corpus) -> Path:
    run = tmp_path_factory.mktemp("killed") / "run"
    _kill_after_checkpoint(tiny_corpus, run)
    return run


@pytest.fixture()
def killed(killed_run, tmp_path) -> Path:
    import shutil

    dest = tmp_path / "killed"
    shutil.copytree(killed_run, dest)
    return dest


def test_sigkill_then_resume_equals_uninterrupted(killed, trained_run):
    run = killed
    assert not (run / "values.parquet").exists()
    assert (run / "checkpoints" / "step_000004" / "state.json").is_file()
    resume(run, progress=False)
    for table in ("values", "contributions", "ledger", "targets", "corpus", "chunks"):
        pd.testing.assert_frame_equal(pd.read_parquet(trained_run / f"{table}.parquet"),
                                      pd.read_parquet(run / f"{table}.parquet"), check_exact=True)
    a = pd.read_parquet(trained_run / "train_log.parquet").drop(columns="seconds")
    b = pd.read_parquet(run / "train_log.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    wa = load_file(str(trained_run / "model" / "model.safetensors"))
    wb = load_file(str(run / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_resume_refuses_changed_settings(killed):
    run = killed
    with pytest.raises(RunMismatchError, match="train.lr"):
        resume(run, tiny_config(lr=1e-3), progress=False)


def test_resume_refuses_a_changed_keep_rows_mb(killed):
    """keep_rows_mb decides how some gradients are summed: a resumed run keeps the recorded value."""
    from dataclasses import replace

    from provenance.config import AttributionConfig

    with pytest.raises(RunMismatchError, match="attribution.keep_rows_mb"):
        resume(killed, replace(tiny_config(), attribution=AttributionConfig(keep_rows_mb=256.0)), progress=False)


def test_resume_without_checkpoints_is_a_clear_error(killed):
    run = killed
    import shutil

    shutil.rmtree(run / "checkpoints")
    with pytest.raises(RunDirectoryError, match="no checkpoint"):
        resume(run, progress=False)
    assert not (run / "values.parquet").exists()


def test_resume_with_a_missing_middle_checkpoint_is_refused(killed):
    run = killed
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_000002")
    with pytest.raises(RunDirectoryError, match="records of steps 1..2 are missing"):
        resume(run, progress=False)
