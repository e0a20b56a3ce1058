"""The run's tables (schemas per docs/run_directory.md) and the aggregation contributions -> values.

Values are sums: In-Run Data Shapley is additive over steps and over a document's chunks, so a
document's value for a target is the plain sum of its (step, chunk) contributions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from provenance.errors import RunDirectoryError
from provenance.store import atomic

CORPUS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("sha256", pa.string()),
        ("n_tokens", pa.int64()),
        ("n_chunks", pa.int64()),
        ("metadata", pa.string()),
        ("text", pa.string()),
    ]
)
CHUNKS_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.int64()),
        ("doc_id", pa.string()),
        ("start_token", pa.int64()),
        ("end_token", pa.int64()),
        ("n_tokens", pa.int64()),
    ]
)
TARGETS_SCHEMA = pa.schema(
    [
        ("target_id", pa.string()),
        ("prompt", pa.string()),
        ("text", pa.string()),
        ("sha256", pa.string()),
        ("registered", pa.string()),
    ]
)
CONTRIBUTIONS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("doc_id", pa.string()),
        ("chunk_id", pa.int64()),
        ("target_id", pa.string()),
        ("value_first_order", pa.float64()),
        ("value_second_order", pa.float64()),
    ]
)
VALUES_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("target_id", pa.string()),
        ("value", pa.float64()),
        ("value_first_order", pa.float64()),
        ("value_second_order", pa.float64()),
        ("rank", pa.int64()),
        ("share", pa.float64()),
    ]
)
LEDGER_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("target_id", pa.string()),
        ("lr", pa.float64()),
        ("clip_factor", pa.float64()),
        ("target_loss", pa.float64()),
        ("attributed_sum", pa.float64()),
        ("attributed_sum_first_order", pa.float64()),
        ("history_term", pa.float64()),
    ]
)
TRAIN_LOG_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("loss", pa.float64()),
        ("tokens", pa.int64()),
        ("lr", pa.float64()),
        ("grad_norm", pa.float64()),
        ("clip_factor", pa.float64()),
        ("seconds", pa.float64()),
    ]
)

SCHEMAS = {
    "corpus": CORPUS_SCHEMA,
    "chunks": CHUNKS_SCHEMA,
    "targets": TARGETS_SCHEMA,
    "contributions": CONTRIBUTIONS_SCHEMA,
    "values": VALUES_SCHEMA,
    "ledger": LEDGER_SCHEMA,
    "train_log": TRAIN_LOG_SCHEMA,
}


def empty_frame(name: str) -> pd.DataFrame:
    return SCHEMAS[name].empty_table().to_pandas()


def conform(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Columns in contract order; refuses a frame that lacks one (a bug, not user input)."""
    schema = SCHEMAS[name]
    missing = [c for c in schema.names if c not in frame.columns]
    if missing:
        raise RunDirectoryError(f"table {name} lacks columns {missing}")
    return frame[schema.names].reset_index(drop=True)


def write_table(path: str | Path, frame: pd.DataFrame, name: str) -> Path:
    return atomic.write_parquet(path, conform(frame, name), schema=SCHEMAS[name])


def read_table(path: str | Path, name: str, filters: list | None = None) -> pd.DataFrame:
    """Read a run table, checking its columns; `filters` (pyarrow syntax) reads only matching rows."""
    path = Path(path)
    if not path.is_file():
        raise RunDirectoryError(f"{path} is missing; the run is incomplete or was moved")
    try:
        table = pq.read_table(path, filters=filters)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RunDirectoryError(f"{path} is not a readable parquet file ({exc}); the run is corrupt") from exc
    missing = [c for c in SCHEMAS[name].names if c not in table.column_names]
    if missing:
        raise RunDirectoryError(f"{path} lacks columns {missing}; the run is corrupt")
    return table.to_pandas()


def aggregate_values(
    contributions: pd.DataFrame, doc_ids: list[str], target_ids: list[str], order: int
) -> pd.DataFrame:
    """values.parquet: one row per (document, target), every document of the corpus included.

    value = sum over steps and chunks of the recorded order; rank 1 = largest value per target (ties
    broken by doc_id so ranks are reproducible); share = value / sum of the target's positive values.
    """
    if not target_ids:
        return empty_frame("values")
    grid = pd.MultiIndex.from_product([doc_ids, target_ids], names=["doc_id", "target_id"])
    sums = (
        contributions.groupby(["doc_id", "target_id"], sort=False)[["value_first_order", "value_second_order"]]
        .sum(min_count=1)
        .reindex(grid)
        .reset_index()
    )
    sums["value_first_order"] = sums["value_first_order"].fillna(0.0).astype(np.float64)
    if order == 2:
        sums["value_second_order"] = sums["value_second_order"].fillna(0.0).astype(np.float64)
        sums["value"] = sums["value_second_order"]
    else:
        sums["value_second_order"] = np.nan
        sums["value"] = sums["value_first_order"]
    sums = sums.sort_values(["target_id", "value", "doc_id"], ascending=[True, False, True], kind="mergesort")
    sums["rank"] = sums.groupby("target_id", sort=False).cumcount().astype(np.int64) + 1
    positive = sums["value"].clip(lower=0.0)
    total = positive.groupby(sums["target_id"]).transform("sum")
    sums["share"] = np.where(total > 0, positive / total.where(total > 0, 1.0), 0.0)
    return conform(sums, "values")
