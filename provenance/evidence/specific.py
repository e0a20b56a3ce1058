"""Target-specific value: how much more a chunk helped this output than it helps outputs in general.

A document's raw value sums its chunks, and chunks written in a common style (Bible chapters, say) help
every output in that style a little; long documents in that style then lead the value ranking of any
such output (measured in docs/recovery.md: the raw value's top 10 for a paraphrase averaged 10 chunks
per document against 1.5 over the corpus). The specific value of chunk c for target t standardises its
value against its values for the run's other registered targets (the reference set R):

    z(c, t) = (v(c, t) - mean_{r in R} v(c, r)) / std_{r in R} v(c, r)

The numerator is the chunk's value for the loss difference L_t - mean_R L_r (first-order values are
linear in the target loss), so the "helps every target" part cancels; the denominator puts chunks that
move every loss a lot on the scale of those that move little. The players are chunks, so a document's
specific value is its best chunk's. It needs enough reference targets: with fewer than
``MIN_REFERENCE_TARGETS`` the mean and spread are noise (measured on the recovery benchmark: paraphrase
recall@10 0.38 with 3 reference targets, 0.76 with 5, 0.88 with 10, 0.95 with 20).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from provenance.errors import RunDirectoryError, TargetError

MIN_REFERENCE_TARGETS = 20
_COLUMNS = {1: "value_first_order", 2: "value_second_order"}


@dataclass(frozen=True)
class ChunkValues:
    """Each chunk's value for each target, summed over the training steps (rows: chunks, columns: targets)."""

    target_ids: tuple[str, ...]
    chunk_docs: tuple[str, ...]  # the document of each row
    matrix: np.ndarray  # float64, shape (n_chunks, n_targets); a chunk never sampled has 0

    def column(self, target_id: str) -> int:
        try:
            return self.target_ids.index(target_id)
        except ValueError:
            raise TargetError(
                f"target {target_id!r} has no values in contributions.parquet "
                f"(targets with values: {list(self.target_ids[:10])}{' ...' if len(self.target_ids) > 10 else ''}); "
                "attribute it first (provenance attribute)"
            ) from None


def chunk_values_from_contributions(contributions: pd.DataFrame, column: str = "value_first_order") -> ChunkValues:
    """Sum a contributions table (step, doc_id, chunk_id, target_id, <column>) over steps per (chunk, target)."""
    missing = {"doc_id", "chunk_id", "target_id", column} - set(contributions.columns)
    if missing:
        raise RunDirectoryError(f"contributions table lacks the columns {sorted(missing)}")
    if contributions[column].isna().any():
        raise RunDirectoryError(f"contributions.parquet has missing {column} values; the run records another order")
    sums = contributions.groupby(["chunk_id", "doc_id", "target_id"], sort=True)[column].sum()
    table = sums.unstack("target_id", fill_value=0.0)
    docs = table.index.get_level_values("doc_id")
    if table.index.get_level_values("chunk_id").duplicated().any():
        raise RunDirectoryError("contributions.parquet assigns one chunk_id to two documents")
    return ChunkValues(
        target_ids=tuple(str(t) for t in table.columns),
        chunk_docs=tuple(str(d) for d in docs),
        matrix=table.to_numpy(np.float64),
    )


def load_chunk_values(run_dir: str | Path) -> ChunkValues:
    """The run's per-chunk values (of the order its values.parquet records) from contributions.parquet."""
    from provenance.store.run_dir import RunDirectory
    from provenance.store.tables import read_table

    run = RunDirectory(Path(run_dir))
    if not run.contributions_path.is_file():
        raise RunDirectoryError(
            f"{run.contributions_path} is missing: the run has no per-chunk values yet (train or attribute it first)"
        )
    order = int((run.read_manifest().get("values") or {}).get("order") or 1)
    if order not in _COLUMNS:
        raise RunDirectoryError(f"{run.path}: manifest values.order is {order}, expected 1 or 2")
    column = _COLUMNS[order]
    return chunk_values_from_contributions(read_table(run.contributions_path, "contributions"), column)


def specific_chunk_values(
    chunk_values: ChunkValues,
    target_id: str,
    *,
    reference: Sequence[str] | None = None,
    min_reference: int = MIN_REFERENCE_TARGETS,
) -> np.ndarray:
    """z(c, t) for every chunk (rows of ``chunk_values``). ``reference``: the targets to contrast with
    (default: every other target with values). A chunk whose reference values do not vary gets 0."""
    col = chunk_values.column(target_id)
    if reference is None:
        ref_cols = [i for i in range(len(chunk_values.target_ids)) if i != col]
    else:
        ref_cols = sorted({chunk_values.column(r) for r in reference} - {col})
    if len(ref_cols) < min_reference:
        raise TargetError(
            f"the specific value of {target_id!r} needs at least {min_reference} other targets with values as a "
            f"reference (found {len(ref_cols)}): register and attribute more targets, or rank by raw value"
        )
    ref = chunk_values.matrix[:, ref_cols]
    centred = chunk_values.matrix[:, col] - ref.mean(axis=1)
    spread = ref.std(axis=1)
    out = np.zeros_like(centred)
    np.divide(centred, spread, out=out, where=spread > 0)
    return out


def specific_values(
    chunk_values: ChunkValues,
    target_id: str,
    *,
    reference: Sequence[str] | None = None,
    min_reference: int = MIN_REFERENCE_TARGETS,
) -> pd.Series:
    """Each document's specific value for ``target_id`` (its best chunk's z), largest first, indexed by doc_id."""
    z = specific_chunk_values(chunk_values, target_id, reference=reference, min_reference=min_reference)
    best = pd.Series(z, index=pd.Index(chunk_values.chunk_docs, name="doc_id")).groupby(level=0).max()
    return best.sort_values(ascending=False, kind="mergesort").rename("specific_value")
