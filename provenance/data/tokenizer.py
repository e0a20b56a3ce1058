"""Byte-level BPE tokenizer (HF ``tokenizers``), trained on the corpus or loaded from a user's file.

Special ids of a tokenizer trained here: ``<|endoftext|>`` = id 0 and it is the only special token.
It is the document separator: every document and every target starts with it (bos) and a document
ends with it (eos); padding also uses it (padded positions are masked). Ids 1..256 are the 256 byte
symbols, merges follow. No unknown token exists: any UTF-8 text encodes.

No post-processor is set: ``tokenizer.encode(text, add_special_tokens=False)`` gives the text's own
tokens; chunking and target encoding add ``<|endoftext|>`` themselves (``eot_id``), so a user's
tokenizer with another id for it works the same way.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from provenance.data.corpus import Corpus
from provenance.errors import TokenizerError
from provenance.store import atomic

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 0  # in tokenizers trained by train_tokenizer; use eot_id(tokenizer) for any tokenizer
MIN_VOCAB_SIZE = 257  # 256 byte symbols + <|endoftext|>
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(corpus: Corpus, vocab_size: int = 4096, *, show_progress: bool = False) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE on the corpus' documents, in corpus order (deterministic).

    ``min_frequency=2``: a merge must occur at least twice, so a tiny corpus can give fewer than
    ``vocab_size`` tokens (``tokenizer.get_vocab_size()`` is the truth).
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least {MIN_VOCAB_SIZE} "
            "(256 bytes + <|endoftext|>); use e.g. 4096"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT_TOKEN],  # first special token -> id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(corpus.texts(), trainer=trainer, length=len(corpus))
    if tokenizer.token_to_id(EOT_TOKEN) != EOT_ID:  # guards against a change in `tokenizers`
        raise TokenizerError(f"{EOT_TOKEN} got id {tokenizer.token_to_id(EOT_TOKEN)}, expected {EOT_ID}")
    return tokenizer


def eot_id(tokenizer: Tokenizer) -> int:
    """The id of ``<|endoftext|>`` in this tokenizer (0 when trained here, 50256 in GPT-2's)."""
    token_id = tokenizer.token_to_id(EOT_TOKEN)
    if token_id is None:
        raise TokenizerError(
            f"the tokenizer has no {EOT_TOKEN!r} token, which separates documents; add it with "
            f"tokenizer.add_special_tokens([{EOT_TOKEN!r}]) and save it again, or let provenance train one"
        )
    return token_id


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` (or a folder holding one) and check it has ``<|endoftext|>``."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(
            f"no tokenizer file at {file}; give the path of a HF `tokenizers` tokenizer.json "
            "(or of the folder holding it)"
        )
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise TokenizerError(f"{file} is not a valid HF `tokenizers` JSON file ({exc})") from exc
    eot_id(tokenizer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write the tokenizer JSON atomically; ``path`` is the file, or a folder (then ``tokenizer.json``)."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    return atomic.write_text(file, tokenizer.to_str(pretty=True))
