"""Tensors for the model: training chunks and targets, right-padded, with -100 where no loss is taken.

Labels are the input ids themselves (HF convention): the causal shift (position t predicts t+1) is
done later, by the model/task. A label of -100 means "no loss here": padding, and a target's prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tokenizers import Tokenizer

from provenance.data.chunking import Chunk
from provenance.data.tokenizer import eot_id
from provenance.errors import BatchError, TargetError

IGNORE_INDEX = -100

LMRow = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def make_lm_batch(
    chunks: Sequence[Chunk], context_length: int, pad_id: int, *, pad_to_longest: bool = False
) -> LMRow:
    """``(input_ids, attention_mask, labels)``, each (len(chunks), T) int64.

    T = context_length, or the longest chunk when ``pad_to_longest`` (less padding, same losses).
    """
    if not chunks:
        raise BatchError("make_lm_batch got no chunks; a batch needs at least one")
    too_long = [c.chunk_id for c in chunks if c.n_tokens > context_length or len(c.token_ids) != c.n_tokens]
    if too_long:
        raise BatchError(
            f"chunks {too_long[:5]} do not fit context_length {context_length} (or their token_ids do not "
            "match their span); rebuild the chunks with chunk_corpus(..., context_length)"
        )
    if any(c.n_tokens == 0 for c in chunks):
        raise BatchError("a chunk has no tokens; rebuild the chunks with chunk_corpus")
    width = max(c.n_tokens for c in chunks) if pad_to_longest else context_length
    input_ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for row, chunk in enumerate(chunks):
        input_ids[row, : chunk.n_tokens] = torch.tensor(chunk.token_ids, dtype=torch.long)
        attention_mask[row, : chunk.n_tokens] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return input_ids, attention_mask, labels


def encode_target(
    tokenizer: Tokenizer, prompt: str, text: str, context_length: int, *, target_id: str = "target"
) -> LMRow:
    """One target row, each tensor (1, context_length) int64: ``<|endoftext|> prompt text`` + padding.

    The leading ``<|endoftext|>`` is the same start every training document has. Prompt and text are
    tokenized separately (so the boundary between them is exact); labels are -100 on the start token,
    the prompt and the padding: only the text's tokens carry loss (the first one is predicted from
    the prompt's last token).
    """
    if not isinstance(text, str) or not text.strip():
        raise TargetError(
            f"target {target_id!r}: its text is empty or only whitespace; give the output text whose "
            "loss is attributed (the prompt carries no loss)"
        )
    eot = eot_id(tokenizer)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
    text_ids = tokenizer.encode(text, add_special_tokens=False).ids
    total = 1 + len(prompt_ids) + len(text_ids)
    if total > context_length:
        room = context_length - 1 - len(prompt_ids)
        raise TargetError(
            f"target {target_id!r} is {total} tokens (1 start token + {len(prompt_ids)} prompt + "
            f"{len(text_ids)} text) but the context is {context_length} tokens; shorten the text to at "
            f"most {max(room, 0)} tokens (or the prompt), or train with a larger context_length"
        )
    ids = [eot, *prompt_ids, *text_ids]
    input_ids = torch.full((1, context_length), eot, dtype=torch.long)
    input_ids[0, :total] = torch.tensor(ids, dtype=torch.long)
    attention_mask = torch.zeros((1, context_length), dtype=torch.long)
    attention_mask[0, :total] = 1
    labels = torch.full((1, context_length), IGNORE_INDEX, dtype=torch.long)
    labels[0, 1 + len(prompt_ids) : total] = input_ids[0, 1 + len(prompt_ids) : total]
    return input_ids, attention_mask, labels


def encode_targets(tokenizer: Tokenizer, targets: Sequence[Mapping[str, str]], context_length: int) -> LMRow:
    """Stack ``encode_target`` rows for targets given as mappings with ``id``, ``prompt``, ``text``."""
    if not targets:
        raise TargetError("no targets given; pass at least one {id, prompt, text}")
    rows = [
        encode_target(tokenizer, t.get("prompt") or "", t.get("text", ""), context_length, target_id=str(t.get("id")))
        for t in targets
    ]
    return tuple(torch.cat(parts, dim=0) for parts in zip(*rows))  # type: ignore[return-value]
