"""Atomic writes: a reader sees the old file or the new one, never a torn one.

Every artifact of a run directory goes through here: write to a temporary file in the same folder,
fsync it, rename it over the target, fsync the folder. No pickle anywhere (JSON, parquet, safetensors).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # torch is imported by the one writer that needs it: readers of json/parquet stay light
    import torch


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, then fsync and rename ``tmp_path`` onto ``path``.

    ``write`` must create the file at the given temporary path. On any error the temporary file is
    removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """JSON with sorted keys and a trailing newline (stable bytes, so stable hashes)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_parquet(path: str | Path, frame: pd.DataFrame, schema: pa.Schema | None = None) -> Path:
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_safetensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """safetensors needs contiguous, unshared tensors: clone each one so tied weights save cleanly."""
    from safetensors.torch import save_file

    owned = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    meta = dict(metadata) if metadata else None  # an empty metadata dict makes an unreadable file
    return atomic_write(path, lambda tmp: save_file(owned, str(tmp), metadata=meta))


def publish_dir(tmp_dir: Path, final_dir: Path) -> Path:
    """Move a fully written temporary folder into place in one rename (replacing an old one)."""
    for child in tmp_dir.rglob("*"):
        if child.is_file():
            with open(child, "rb+") as handle:
                os.fsync(handle.fileno())
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    return final_dir


def staging_dir(final_dir: Path) -> Path:
    """A fresh, empty temporary folder next to ``final_dir`` (same filesystem, so rename is atomic)."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
