from __future__ import annotations

import math

import pandas as pd
import pytest

from provenance.errors import RunDirectoryError
from provenance.store.tables import aggregate_values, read_table, write_table


def _contrib(rows):
    return pd.DataFrame(rows, columns=["step", "doc_id", "chunk_id", "target_id", "value_first_order",
                                       "value_second_order"])


def test_values_sum_steps_and_chunks_and_rank_with_shares():
    contrib = _contrib([
        (1, "a", 0, "t", 0.5, None), (2, "a", 1, "t", 0.25, None),  # a: two chunks, two steps -> 0.75
        (1, "b", 2, "t", 0.25, None),                                 # b: 0.25
        (2, "c", 3, "t", -0.5, None),                                 # c: worked against the target
    ])
    values = aggregate_values(contrib, ["a", "b", "c", "d"], ["t"], order=1).set_index("doc_id")
    assert values["value"].to_dict() == {"a": 0.75, "b": 0.25, "c": -0.5, "d": 0.0}
    assert values["rank"].to_dict() == {"a": 1, "b": 2, "d": 3, "c": 4}
    assert values["share"].to_dict() == {"a": 0.75, "b": 0.25, "c": 0.0, "d": 0.0}
    assert values["value_second_order"].isna().all()


def test_second_order_values_rank_by_the_second_order_column():
    contrib = _contrib([(1, "a", 0, "t", 1.0, 0.1), (1, "b", 1, "t", 0.5, 0.4)])
    values = aggregate_values(contrib, ["a", "b"], ["t"], order=2).set_index("doc_id")
    assert values.loc["b", "rank"] == 1 and values.loc["b", "value"] == 0.4
    assert values.loc["a", "value_first_order"] == 1.0
    assert values.loc["b", "share"] == pytest.approx(0.8)


def test_ties_rank_by_doc_id_and_no_positive_values_give_zero_shares():
    contrib = _contrib([(1, "b", 0, "t", -1.0, None), (1, "a", 1, "t", -1.0, None)])
    values = aggregate_values(contrib, ["a", "b"], ["t"], order=1).set_index("doc_id")
    assert values["rank"].to_dict() == {"a": 1, "b": 2}
    assert values["share"].to_dict() == {"a": 0.0, "b": 0.0}


def test_tables_keep_contract_columns_and_reject_corrupt_files(tmp_path):
    contrib = _contrib([(1, "a", 0, "t", 0.5, math.nan)])
    contrib["extra"] = 1
    write_table(tmp_path / "c.parquet", contrib, "contributions")
    back = read_table(tmp_path / "c.parquet", "contributions")
    assert list(back.columns) == ["step", "doc_id", "chunk_id", "target_id", "value_first_order",
                                  "value_second_order"]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(RunDirectoryError, match="not a readable parquet"):
        read_table(tmp_path / "bad.parquet", "values")
    with pytest.raises(RunDirectoryError, match="missing"):
        read_table(tmp_path / "none.parquet", "values")
