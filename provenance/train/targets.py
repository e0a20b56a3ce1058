"""Targets: the texts whose loss is attributed ({id, prompt, text}; only the text's tokens carry loss)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from provenance.errors import TargetError
from provenance.store.hashing import target_sha256

REGISTERED_BEFORE = "before_training"
REGISTERED_REPLAY = "replay"


@dataclass(frozen=True)
class TargetSpec:
    target_id: str
    prompt: str
    text: str

    @property
    def sha256(self) -> str:
        return target_sha256(self.prompt, self.text)


def check_targets(targets: list[TargetSpec], where: str = "targets") -> list[TargetSpec]:
    """Refuse empty outputs, empty or duplicate ids (before anything is written)."""
    seen: set[str] = set()
    for target in targets:
        if not target.target_id.strip():
            raise TargetError(f"{where}: a target has an empty id; give every target a unique 'id'")
        if target.target_id in seen:
            raise TargetError(f"{where}: target id {target.target_id!r} appears twice; ids must be unique")
        seen.add(target.target_id)
        if not target.text.strip():
            raise TargetError(
                f"{where}: target {target.target_id!r} has an empty 'text'; the text is the output whose "
                "loss is attributed, so it must not be empty"
            )
    return targets


def read_targets_jsonl(path: str | Path) -> list[TargetSpec]:
    """Read a JSONL file of {"id", "prompt" (optional), "text"} rows."""
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"targets file {path} does not exist")
    targets = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise TargetError(f"targets file {path} is not UTF-8 ({exc}); save it as UTF-8") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TargetError(f"{path}:{number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or "id" not in row or "text" not in row:
            raise TargetError(f'{path}:{number} needs an object with "id" and "text" (and optionally "prompt")')
        prompt, text = row.get("prompt", "") or "", row["text"]
        if not isinstance(text, str) or not isinstance(prompt, str):
            raise TargetError(f'{path}:{number}: "prompt" and "text" must be strings')
        targets.append(TargetSpec(str(row["id"]), prompt, text))
    if not targets:
        raise TargetError(f"targets file {path} has no targets")
    return check_targets(targets, where=str(path))


def targets_frame(targets: list[TargetSpec], registered: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "target_id": [t.target_id for t in targets],
            "prompt": [t.prompt for t in targets],
            "text": [t.text for t in targets],
            "sha256": [t.sha256 for t in targets],
            "registered": [registered] * len(targets),
        }
    )


def targets_from_frame(frame: pd.DataFrame) -> list[TargetSpec]:
    return [TargetSpec(r.target_id, r.prompt, r.text) for r in frame.itertuples(index=False)]
