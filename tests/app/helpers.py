"""Reading what an AppTest shows: ranked tables, chart data, HTML blocks, messages."""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow as pa

from provenance.app_support import TABLE_COLUMNS


def ranked_tables(at) -> list[pd.DataFrame]:
    """The ranked table, then the worked-against table (when shown), as the app passed them."""
    return [d.value for d in at.dataframe if list(d.value.columns) == list(TABLE_COLUMNS)]


def dataframes_with(at, column: str) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe if column in d.value.columns]


def charts(at) -> list:
    return list(at.get("vega_lite_chart")) + list(at.get("arrow_vega_lite_chart"))


def chart_data(chart) -> pd.DataFrame:
    """The (first) dataset of a Vega-Lite chart element, decoded from its Arrow IPC bytes."""
    proto = chart.proto
    raw = proto.datasets[0].data.data if proto.datasets else proto.data.data
    return pa.ipc.open_stream(io.BytesIO(raw)).read_all().to_pandas()


def chart_with(at, *columns: str) -> pd.DataFrame:
    """The data of the first chart whose data has all these columns."""
    for chart in charts(at):
        data = chart_data(chart)
        if set(columns) <= set(data.columns):
            return data
    raise AssertionError(f"no chart with columns {columns}")


def chart_y_field(at, *columns: str) -> str:
    """The field on the y axis of the first chart whose data has all these columns."""
    for chart in charts(at):
        if set(columns) <= set(chart_data(chart).columns):
            return json.loads(chart.proto.spec)["encoding"]["y"]["field"]
    raise AssertionError(f"no chart with columns {columns}")


def html_bodies(at) -> list[str]:
    return [h.proto.body for h in at.get("html")]


def untrusted_blocks(at) -> list[str]:
    return [b for b in html_bodies(at) if 'class="untrusted-text"' in b]


def messages(at, kind: str) -> list[str]:
    """Text of st.error / st.warning / st.info / st.success elements (Markdown escapes removed)."""
    return [str(e.value).replace("\\", "") for e in getattr(at, kind)]


def metric(at, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return found[0]


def selectbox(at, label: str):
    found = [s for s in at.selectbox if s.label == label]
    assert found, f"no selectbox {label!r}"
    return found[0]


def no_exceptions(at) -> None:
    assert not at.exception, [e.message for e in at.exception]
