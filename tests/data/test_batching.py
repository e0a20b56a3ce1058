"""Batch tensors: padding and masks for training chunks; target rows where only the text has loss."""

from __future__ import annotations

import pytest
import torch

from provenance.data import IGNORE_INDEX, Chunk, encode_target, encode_targets, make_lm_batch, train_tokenizer
from provenance.errors import BatchError, TargetError
from .helpers import make_corpus


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(make_corpus(tmp_path_factory.mktemp("batch")), vocab_size=400)


def chunk(i: int, ids: list[int]) -> Chunk:
    return Chunk(chunk_id=i, doc_id=f"d{i}", start_token=0, end_token=len(ids), token_ids=ids)


def test_make_lm_batch() -> None:
    chunks = [chunk(0, [0, 5, 6, 7]), chunk(1, [0, 9])]
    input_ids, attention_mask, labels = make_lm_batch(chunks, context_length=6, pad_id=3)
    assert input_ids.dtype == attention_mask.dtype == labels.dtype == torch.long
    assert input_ids.tolist() == [[0, 5, 6, 7, 3, 3], [0, 9, 3, 3, 3, 3]]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert labels.tolist() == [[0, 5, 6, 7, -100, -100], [0, 9, -100, -100, -100, -100]]
    short = make_lm_batch(chunks, context_length=6, pad_id=3, pad_to_longest=True)
    assert short[0].shape == (2, 4) and short[2].tolist()[1] == [0, 9, -100, -100]


def test_make_lm_batch_errors() -> None:
    with pytest.raises(BatchError, match="no chunks"):
        make_lm_batch([], 8, 0)
    with pytest.raises(BatchError, match=r"chunks \[4\].*context_length 3"):
        make_lm_batch([chunk(4, [1, 2, 3, 4])], 3, 0)


def test_encode_target_masks(tokenizer) -> None:
    prompt, text = "Tell me:\n", "The sower went out to sow his seed."
    input_ids, attention_mask, labels = encode_target(tokenizer, prompt, text, 64, target_id="t1")
    assert input_ids.shape == attention_mask.shape == labels.shape == (1, 64)
    p = tokenizer.encode(prompt, add_special_tokens=False).ids
    t = tokenizer.encode(text, add_special_tokens=False).ids
    n = 1 + len(p) + len(t)
    assert input_ids[0, :n].tolist() == [0, *p, *t]
    assert input_ids[0, n:].eq(0).all()  # padded with <|endoftext|>, masked below
    assert attention_mask[0].tolist() == [1] * n + [0] * (64 - n)
    assert labels[0, : 1 + len(p)].eq(IGNORE_INDEX).all()  # start token and prompt: no loss
    assert labels[0, 1 + len(p) : n].tolist() == t  # the text: all of its tokens carry loss
    assert labels[0, n:].eq(IGNORE_INDEX).all()
    assert tokenizer.decode(labels[0][labels[0] != IGNORE_INDEX].tolist()) == text


def test_encode_target_without_prompt(tokenizer) -> None:
    input_ids, _, labels = encode_target(tokenizer, "", "Light.", 16)
    t = tokenizer.encode("Light.", add_special_tokens=False).ids
    assert input_ids[0, : 1 + len(t)].tolist() == [0, *t]
    assert labels[0, 0] == IGNORE_INDEX and labels[0, 1 : 1 + len(t)].tolist() == t


def test_encode_target_errors(tokenizer) -> None:
    for empty in ("", "   \n\t"):
        with pytest.raises(TargetError, match="'p-1'.*empty or only whitespace"):
            encode_target(tokenizer, "Prompt:", empty, 64, target_id="p-1")
    long_text = "the river and the mountain " * 20
    with pytest.raises(TargetError) as info:
        encode_target(tokenizer, "Prompt:", long_text, 32, target_id="long-1")
    message = str(info.value)
    n_text = len(tokenizer.encode(long_text, add_special_tokens=False).ids)
    assert "'long-1'" in message and f"{n_text} text" in message and "context is 32" in message
    assert "larger context_length" in message


def test_encode_targets_stacks_rows(tokenizer) -> None:
    targets = [{"id": "a", "prompt": "Q:", "text": "One."}, {"id": "b", "prompt": "", "text": "Two words."}]
    input_ids, attention_mask, labels = encode_targets(tokenizer, targets, 24)
    assert input_ids.shape == (2, 24)
    row_b = encode_target(tokenizer, "", "Two words.", 24)
    assert torch.equal(labels[1], row_b[2][0]) and torch.equal(attention_mask[1], row_b[1][0])
