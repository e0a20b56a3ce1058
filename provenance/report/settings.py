"""What shapes a report: one frozen settings object, recorded in every report's appendix and sidecar.

Two reports built from the same run with equal settings (and a fixed ``timestamp``) are byte-identical,
so everything that changes a report's content lives here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from provenance.errors import ReportError

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class ReportSettings:
    """Options of `provenance report` (and of the app's download button, which uses the same code)."""

    top_k: int = 20  # documents in the ranked table (and in the worked-against table)
    timestamp: str | None = None  # "generated" time, ISO-8601 UTC; None = now (fix it for identical bytes)
    excerpts: int = 5  # top rows shown with their evidence side by side
    chart_documents: int = 5  # top documents drawn in "value over training"
    align_top: int = 3  # top rows whose best passage is aligned sentence by sentence (evidence.query)
    build_index: bool = False  # build the evidence index when it is missing instead of reporting without it

    def check(self) -> ReportSettings:
        """Refuse out-of-range options with a message that names the option; return a normalized copy."""
        if self.top_k < 1:
            raise ReportError(f"--top-k must be at least 1 (got {self.top_k})")
        for name in ("excerpts", "chart_documents", "align_top"):
            if getattr(self, name) < 0:
                raise ReportError(f"{name} must be 0 or more (got {getattr(self, name)})")
        if self.timestamp is not None:
            return ReportSettings(**{**asdict(self), "timestamp": normalize_timestamp(self.timestamp)})
        return self

    def resolved(self) -> ReportSettings:
        """A copy with the generated time fixed (now, if no timestamp was given)."""
        checked = self.check()
        if checked.timestamp is not None:
            return checked
        now = datetime.now(timezone.utc).strftime(TIMESTAMP_FORMAT)
        return ReportSettings(**{**asdict(checked), "timestamp": now})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def normalize_timestamp(value: str) -> str:
    """Parse an ISO-8601 time (``2026-01-31T12:00:00Z``, offsets allowed) into UTC ``...Z`` form."""
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ReportError(
            f"--timestamp {value!r} is not an ISO-8601 time; use e.g. 2026-01-31T12:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)


def epoch_seconds(timestamp: str) -> int:
    """Seconds since 1970 of a normalized timestamp (the PDF's creation date)."""
    return int(datetime.strptime(timestamp, TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc).timestamp())
