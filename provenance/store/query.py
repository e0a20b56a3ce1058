"""Read a run's values for display or export (CLI `values`, later the app and reports)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from provenance.errors import TargetError
from provenance.store.run_dir import RunDirectory
from provenance.store.tables import read_table


def list_targets(run_dir: str | Path) -> pd.DataFrame:
    run = RunDirectory.open(run_dir)
    targets = read_table(run.targets_path, "targets")
    return targets[["target_id", "registered", "prompt", "text"]]


def top_values(run_dir: str | Path, target_id: str, top: int | None = 10) -> pd.DataFrame:
    """Ranked documents for one target: rank, doc_id, source, value, share, cumulative_share."""
    run = RunDirectory.open(run_dir)
    values = read_table(run.values_path, "values")
    rows = values[values["target_id"] == target_id]
    if rows.empty:
        known = sorted(values["target_id"].unique())
        raise TargetError(f"target {target_id!r} is not in {run.values_path}; known targets: {known}")
    corpus = read_table(run.corpus_path, "corpus")[["doc_id", "source"]]
    rows = rows.sort_values("rank").merge(corpus, on="doc_id", how="left")
    rows["cumulative_share"] = rows["share"].cumsum()
    columns = ["rank", "doc_id", "source", "value", "share", "cumulative_share",
               "value_first_order", "value_second_order"]
    rows = rows[columns].reset_index(drop=True)
    return rows.head(top) if top else rows
