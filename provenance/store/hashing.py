"""SHA-256 helpers: the chain of custody of a run (documents, tokenizer, weights, tables)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_BLOCK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """Hash of the text's UTF-8 bytes (how document and target hashes are defined)."""
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def target_sha256(prompt: str, text: str) -> str:
    """A target's hash, as the run-directory contract defines it: sha256(prompt + NUL + text)."""
    return sha256_text(prompt + "\x00" + text)


def combined_sha256(hashes: Iterable[str]) -> str:
    """Hash of sorted hex digests joined by newlines: one fingerprint for a set of files/documents."""
    return sha256_text("\n".join(sorted(hashes)))
