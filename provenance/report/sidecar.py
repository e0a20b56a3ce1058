"""The JSON sidecar: the report's content as data, with the same (unrounded) numbers the PDF prints.

Floats are written with Python's shortest round-trip repr, so a value read back equals the float in
values.parquet exactly. Keys are sorted and the text ends with a newline: equal reports, equal bytes.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict
from typing import Any

from provenance.report.layout import fmt_share, fmt_similarity, fmt_value
from provenance.report.model import ReportData, ReportRow
from provenance.store.hashing import sha256_text

SIDECAR_FORMAT = 1
NUMBER_FORMATS = {
    "value": "%+.4e (Python format '{:+.4e}')",
    "share": "100 * share with two decimals and a % sign ('{:.2f}%')",
    "similarity": "'{:.3f}'",
}


def _row(row: ReportRow) -> dict[str, Any]:
    out = asdict(row)
    out["label"] = row.label
    out["similarity"] = row.similarity
    out["printed"] = {
        "value": fmt_value(row.value),
        "share": fmt_share(row.share),
        "cumulative_share": fmt_share(row.cumulative_share),
        "similarity": fmt_similarity(row.similarity),
    }
    return out


def sidecar(data: ReportData, pdf_file: str, pdf_sha256: str) -> dict[str, Any]:
    body = asdict(data)
    body["rows"] = [_row(r) for r in data.rows]
    body["worked_against"] = [_row(r) for r in data.worked_against]
    body["custody"] = [{**asdict(f), "status": f.status} for f in data.custody]
    body["generated"] = data.generated
    document = {
        "format": SIDECAR_FORMAT,
        "kind": "provenance attribution report",
        "pdf": {"file": pdf_file, "sha256": pdf_sha256},
        "number_formats": NUMBER_FORMATS,
        "report": body,
    }
    return json.loads(dumps(document))  # plain JSON types (lists, not tuples): the dict equals the file


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def file_stem(target_id: str | None, text: str | None = None) -> str:
    """A file name for a report: the target id when it is a plain name, else a slug plus a short hash
    (ids are untrusted: no path separators, no leading dots, no collisions between ids that slug alike)."""
    if target_id is None:
        return "text-" + sha256_text(text or "")[:12]
    ascii_id = unicodedata.normalize("NFKC", target_id)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_id).strip("._-")[:80] or "target"
    if slug == target_id:
        return slug
    return f"{slug}-{sha256_text(target_id)[:8]}"
