"""Small helpers of the Streamlit app (app.py) that are not attribution or evidence logic.

They locate runs, summarize a manifest for display, read a target's per-step contributions for the
"values over training" chart, and turn untrusted text into HTML that can only ever render as text.
Everything here reads; nothing writes. Kept out of app.py so it can be tested without Streamlit.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RUNS_ENV = "PROVENANCE_RUNS_DIR"
DEFAULT_RUNS_DIR = Path("attribution_runs")

# Colours of the highlights (inline styles: the HTML is sanitized and may carry no <style> block).
VERBATIM_STYLE = "background-color:#ffe08a;"
PARAPHRASE_STYLE = "background-color:#cfe3ff;"
BOTH_STYLE = "background-color:#ffe08a;box-shadow:inset 0 -3px 0 #5b8def;"
TEXT_STYLE = (
    "white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;"
    "font-size:0.85rem;line-height:1.5;border:1px solid #ddd;border-radius:6px;padding:0.6rem;"
    "max-height:28rem;overflow-y:auto;"
)


# -- where the runs are ----------------------------------------------------------------------------------
def runs_root(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """The folder holding the runs: ``--runs DIR`` after ``streamlit run app.py --``, else the
    PROVENANCE_RUNS_DIR variable, else ./attribution_runs (the CLI's default)."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--runs" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--runs="):
            return Path(arg.split("=", 1)[1])
    if environ.get(RUNS_ENV):
        return Path(environ[RUNS_ENV])
    return DEFAULT_RUNS_DIR


def run_folders(root: Path) -> list[Path]:
    """Candidate run directories: every visible sub-folder (hidden ones are half-written temp folders)."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def tree_fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime) of every file: a cache key that changes when any file does."""
    if not folder.is_dir():
        return ()
    rows = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = Path(dirpath) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            rows.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(rows))


def manifest_stamp(folder: Path) -> tuple[int, int] | None:
    """(size, mtime) of a run's manifest.json: the cache key of the quick "does it open" check."""
    try:
        stat = (folder / "manifest.json").stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def corpus_sources(corpus_path: Path) -> list[str]:
    """The distinct sources of a run's documents (reads one column only)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from provenance.errors import RunDirectoryError

    try:
        column = pq.read_table(corpus_path, columns=["source"]).column("source")
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise RunDirectoryError(f"{corpus_path} is not a readable corpus table ({exc}); the run is corrupt") from exc
    return sorted(str(s) for s in pc.unique(column).to_pylist() if s is not None)


# -- run facts -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFacts:
    """What the summary shows about a run, read from its manifest (and the train log's row count)."""

    run_id: str
    status: str
    created: str
    n_documents: int | None
    n_chunks: int | None
    steps_configured: int | None
    steps_logged: int | None
    model: str
    value_order: int | None
    value_sign: str
    value_unit: str
    corpus_sha256: str
    tokenizer_sha256: str
    model_sha256: dict[str, str] = field(default_factory=dict)
    file_hashes: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def run_facts(manifest: Mapping[str, Any], train_log_path: Path | None = None) -> RunFacts:
    """Summarize a manifest (docs/run_directory.md); fields a run lacks show as None or ''."""
    corpus = manifest.get("corpus") or {}
    config = manifest.get("config") or {}
    model_cfg = config.get("model") or {}
    values = manifest.get("values") or {}
    model = manifest.get("model") or {}
    architecture = model.get("architecture") or "model"
    if model_cfg:
        described = (
            f"{architecture}: {model_cfg.get('n_layer', '?')} layers, width {model_cfg.get('n_embd', '?')}, "
            f"{model_cfg.get('n_head', '?')} heads, context {model_cfg.get('context_length', '?')} tokens"
        )
    else:
        described = architecture
    return RunFacts(
        run_id=str(manifest.get("run_id", "")),
        status=str(manifest.get("status", "unknown")),
        created=str(manifest.get("created", "")),
        n_documents=_int_or_none(corpus.get("n_documents")),
        n_chunks=_int_or_none(corpus.get("n_chunks")),
        steps_configured=_int_or_none((config.get("train") or {}).get("steps")),
        steps_logged=_parquet_rows(train_log_path) if train_log_path is not None else None,
        model=described,
        value_order=_int_or_none(values.get("order")),
        value_sign=str(values.get("sign", "")),
        value_unit=str(values.get("unit", "")),
        corpus_sha256=str(corpus.get("sha256") or ""),
        tokenizer_sha256=str((manifest.get("tokenizer") or {}).get("sha256") or ""),
        model_sha256=dict(model.get("sha256") or {}),
        file_hashes=dict(manifest.get("files") or {}),
        versions={str(k): str(v) for k, v in (manifest.get("versions") or {}).items()},
    )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else None


def _parquet_rows(path: Path) -> int | None:
    """Row count from the parquet footer (no data read); None if the file is absent or unreadable."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # noqa: BLE001 - a broken train log only hides this one number
        return None


# -- contributions over training -------------------------------------------------------------------------
def document_contributions(
    contributions_path: Path, target_id: str, doc_ids: Iterable[str], order: int | None
) -> pd.DataFrame:
    """Per-step, per-chunk contributions of some documents to one target, in the run's recorded order.

    Columns: step, doc_id, chunk_id, value. Reads only the matching rows (parquet filters), so a large
    contributions table costs little. The value column is second order when the run recorded it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from provenance.errors import RunDirectoryError

    wanted = sorted(set(doc_ids))
    columns = ["step", "doc_id", "chunk_id", "value_first_order", "value_second_order"]
    if not wanted:
        return pd.DataFrame({"step": [], "doc_id": [], "chunk_id": [], "value": []})
    if not contributions_path.is_file():
        raise RunDirectoryError(f"{contributions_path} is missing; the run is incomplete or was moved")
    try:
        table = pq.read_table(
            contributions_path,
            columns=columns,
            filters=[("target_id", "=", target_id), ("doc_id", "in", wanted)],
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise RunDirectoryError(
            f"{contributions_path} is not a readable parquet file ({exc}); the run is corrupt"
        ) from exc
    frame = table.to_pandas()
    column = "value_second_order" if order == 2 else "value_first_order"
    frame["value"] = frame[column].astype(np.float64)
    frame = frame[["step", "doc_id", "chunk_id", "value"]].sort_values(["doc_id", "step", "chunk_id"])
    return frame.reset_index(drop=True)


def values_over_steps(contributions: pd.DataFrame) -> pd.DataFrame:
    """step, doc_id, value (this step), cumulative_value (sum up to this step): the "values over
    training" view. Steps where a document was not in the batch contribute nothing and are omitted."""
    if contributions.empty:
        return pd.DataFrame({"step": [], "doc_id": [], "value": [], "cumulative_value": []})
    per_step = contributions.groupby(["doc_id", "step"], as_index=False)["value"].sum()
    per_step = per_step.sort_values(["doc_id", "step"]).reset_index(drop=True)
    per_step["cumulative_value"] = per_step.groupby("doc_id")["value"].cumsum()
    return per_step


def chunk_values(contributions: pd.DataFrame, doc_id: str) -> pd.Series:
    """chunk_id -> value summed over steps, for one document."""
    rows = contributions[contributions["doc_id"] == doc_id]
    return rows.groupby("chunk_id")["value"].sum()


def chunk_char_ranges(text: str, chunks: pd.DataFrame, tokenizer: Any) -> list[tuple[int, int, int]]:
    """(chunk_id, start_char, end_char) of each chunk of one document, through the run's tokenizer.

    Chunk token positions count inside ``[<|endoftext|>] + tokens + [<|endoftext|>]`` (see
    provenance/data/chunking.py), so position p > 0 is the document's token p - 1.
    """
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    n = len(offsets)
    ranges = []
    for row in chunks.sort_values("start_token").itertuples(index=False):
        first, last = max(int(row.start_token) - 1, 0), min(int(row.end_token) - 1, n)
        if last <= first:
            continue
        ranges.append((int(row.chunk_id), int(offsets[first][0]), int(offsets[last - 1][1])))
    return ranges


# -- charts' data ----------------------------------------------------------------------------------------
def value_histogram(values: Sequence[float], bins: int = 40) -> pd.DataFrame:
    """Histogram of a target's values with zero as a bin edge, so negative and positive values never
    share a bar: columns start, end, count, sign ('negative' / 'zero' / 'positive'). Values of exactly
    zero (documents never trained on, for instance) get their own bar, centred on 0 and one bin wide
    (a zero-width bar would not show)."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return pd.DataFrame({"start": [], "end": [], "count": [], "sign": []})
    low, high = min(float(array.min()), 0.0), max(float(array.max()), 0.0)
    width = (high - low) / bins or 1.0
    parts = []
    for sign, part, lo, hi in (("negative", array[array < 0], low, 0.0), ("positive", array[array > 0], 0.0, high)):
        if part.size == 0:
            continue
        counts, edges = np.histogram(part, bins=max(1, round((hi - lo) / width)), range=(lo, hi))
        parts.append(pd.DataFrame({"start": edges[:-1], "end": edges[1:], "count": counts, "sign": sign}))
    zero = int(np.sum(array == 0.0))
    if zero:
        parts.append(pd.DataFrame({"start": [-width / 2], "end": [width / 2], "count": [zero], "sign": ["zero"]}))
    frame = pd.concat(parts, ignore_index=True)
    return frame[frame["count"] > 0].reset_index(drop=True)


# -- the ranked table ------------------------------------------------------------------------------------
TABLE_COLUMNS = (
    "rank", "doc_id", "source", "value", "value_share", "cumulative_share", "label", "similarity",
    "longest_span_words", "verbatim_span",
)


def values_table(values: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """The ranked table before the evidence is loaded: the top documents by value with empty evidence
    columns (from provenance.store.query.top_values output: rank, doc_id, source, value, share, ...)."""
    top = values[values["value"] > 0].head(top_k)
    return _value_rows(top, top["share"], top["cumulative_share"])


def values_table_against(values: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """The documents with the most negative values (they worked against the output; no share)."""
    worst = values[values["value"] < 0].sort_values(["value", "doc_id"]).head(top_k)
    return _value_rows(worst, 0.0, np.nan)


def _value_rows(rows: pd.DataFrame, share: Any, cumulative: Any) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "rank": rows["rank"].astype(np.int64),
            "doc_id": rows["doc_id"].astype(str),
            "source": rows["source"].astype(str),
            "value": rows["value"].astype(np.float64),
            "value_share": share,
            "cumulative_share": cumulative,
        }
    )
    frame["value_share"] = frame["value_share"].astype(np.float64)
    frame["cumulative_share"] = frame["cumulative_share"].astype(np.float64)
    frame["label"] = None
    frame["similarity"] = np.nan
    frame["longest_span_words"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame["verbatim_span"] = None
    return frame.reset_index(drop=True)


def result_tables(records: Sequence[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ranked rows, worked-against rows) from provenance.evidence.render.to_records(result)."""
    frame = pd.DataFrame(list(records), columns=[*TABLE_COLUMNS, "group"])
    frame["longest_span_words"] = frame["longest_span_words"].astype("Int64")
    for column in ("value", "value_share", "cumulative_share", "similarity"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(np.float64)
    rows = frame[frame["group"] == "rows"].drop(columns="group").reset_index(drop=True)
    against = frame[frame["group"] == "worked_against"].drop(columns="group").reset_index(drop=True)
    return rows, against


def filter_table(
    frame: pd.DataFrame, labels: Iterable[str] = (), sources: Iterable[str] = (), min_share: float = 0.0
) -> pd.DataFrame:
    """Rows whose label and source are among those chosen (none chosen = all) and whose share is at
    least ``min_share`` (a fraction; rows without a share pass only when min_share is 0)."""
    labels, sources = list(labels), list(sources)
    keep = pd.Series(True, index=frame.index)
    if labels:
        keep &= frame["label"].isin(labels)
    if sources:
        keep &= frame["source"].isin(sources)
    if min_share > 0:
        keep &= frame["value_share"].fillna(-1.0) >= min_share
    return frame[keep].reset_index(drop=True)


# -- the PDF report (provenance.report, when installed) ---------------------------------------------------
def report_builder() -> Callable[..., Any] | None:
    """``build(run_path, target_id, text, top_k, index) -> provenance.report.Report`` (``.pdf`` bytes,
    ``.pdf_name``), or None when provenance.report (or what it needs: reportlab, matplotlib) cannot be
    imported; the app then shows no download button rather than a dead one."""
    try:
        from provenance.report import ReportSettings, build_report
    except ImportError:
        return None

    def build(run_path: str, target_id: str | None, text: str | None, top_k: int, index: Any = None) -> Any:
        return build_report(run_path, target_id, text=text, settings=ReportSettings(top_k=top_k), index=index)

    return build


def stable_key(*parts: Any) -> str:
    """A short, process-independent key for widget and session-state names (hash() is salted)."""
    import hashlib

    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()[:16]


# -- untrusted text as HTML ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mark:
    """A highlighted character range [start, end) of a text: 'verbatim' or 'paraphrase'."""

    start: int
    end: int
    kind: str
    title: str = ""


def highlighted_html(text: str, marks: Iterable[Mark] = (), *, style: str = TEXT_STYLE) -> str:
    """The text as inert HTML (every character escaped) with the marked ranges wrapped in styled spans.

    Overlapping marks are merged per character: a character in a verbatim span and an aligned
    paraphrase sentence gets both styles. No markup from ``text`` can survive: it is escaped here,
    and the caller renders the result with st.html (sanitized, scripts ignored) besides.
    """
    cuts = {0, len(text)}
    valid = []
    for mark in marks:
        start, end = max(0, int(mark.start)), min(len(text), int(mark.end))
        if end > start:
            valid.append(Mark(start, end, mark.kind, mark.title))
            cuts.update((start, end))
    points = sorted(cuts)
    pieces = []
    for a, b in zip(points, points[1:]):
        covering = [m for m in valid if m.start <= a and b <= m.end]
        chunk = html.escape(text[a:b], quote=True)
        kinds = {m.kind for m in covering}
        if not kinds:
            pieces.append(chunk)
            continue
        if kinds >= {"verbatim", "paraphrase"}:
            css, kind = BOTH_STYLE, "verbatim paraphrase"
        elif "verbatim" in kinds:
            css, kind = VERBATIM_STYLE, "verbatim"
        elif "paraphrase" in kinds:
            css, kind = PARAPHRASE_STYLE, "paraphrase"
        else:
            css, kind = "", " ".join(sorted(kinds))
        title = html.escape("; ".join(dict.fromkeys(m.title for m in covering if m.title)), quote=True)
        pieces.append(f'<span class="mark {kind}" style="{css}" title="{title}">{chunk}</span>')
    return f'<div class="untrusted-text" style="{style}">{"".join(pieces)}</div>'


def shaded_html(text: str, ranges: Sequence[tuple[int, int, float, str]], *, style: str = TEXT_STYLE) -> str:
    """The text as inert HTML with each (start, end, value, title) range shaded: green for positive
    values, red for negative, opacity proportional to |value| / max |value| (the per-chunk value map)."""
    scale = max((abs(v) for _, _, v, _ in ranges), default=0.0) or 1.0
    pieces, cursor = [], 0
    for start, end, value, title in sorted(ranges):
        start, end = max(start, cursor), min(end, len(text))
        if start > cursor:
            pieces.append(html.escape(text[cursor:start], quote=True))
        if end <= start:
            continue
        alpha = 0.1 + 0.6 * abs(value) / scale
        rgb = "46,160,67" if value >= 0 else "215,58,73"
        pieces.append(
            f'<span class="chunk" style="background-color:rgba({rgb},{alpha:.2f});" '
            f'title="{html.escape(title, quote=True)}">{html.escape(text[start:end], quote=True)}</span>'
        )
        cursor = end
    if cursor < len(text):
        pieces.append(html.escape(text[cursor:], quote=True))
    return f'<div class="untrusted-text" style="{style}">{"".join(pieces)}</div>'


def plain_html(text: str, *, tag: str = "div", style: str = "") -> str:
    """One escaped line or block (headings, ids, notes): never interpreted as markup."""
    attribute = f' style="{style}"' if style else ""
    return f"<{tag}{attribute}>{html.escape(text, quote=True)}</{tag}>"


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def markdown_literal(text: str) -> str:
    """Backslash-escape Markdown so a message (paths, ids) renders as the characters it holds."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def locate(text: str, needle: str) -> int | None:
    """Start of ``needle`` in ``text`` (first occurrence), or None; for locating an aligned sentence."""
    if not needle:
        return None
    at = text.find(needle)
    return None if at < 0 else at
