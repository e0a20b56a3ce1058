from __future__ import annotations

import math

import pytest

from provenance.config import ConfigError, TrainConfig
from provenance.train.order import DataOrder
from provenance.train.schedule import learning_rate


def test_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=6e-4, min_lr=6e-5)
    assert learning_rate(1, cfg) == pytest.approx(6e-5)
    assert learning_rate(10, cfg) == pytest.approx(6e-4)
    assert learning_rate(60, cfg) == pytest.approx(6e-5 + 0.5 * (6e-4 - 6e-5))  # half-way: cos = 0
    assert learning_rate(110, cfg) == pytest.approx(6e-5)
    lrs = [learning_rate(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert learning_rate(35, cfg) == pytest.approx(6e-5 + 0.5 * (1 + math.cos(math.pi / 4)) * 5.4e-4)


def test_data_order_epochs_cover_chunks_and_state_round_trips():
    order = DataOrder(10, 3, seed=7)
    batches = [order.next_batch() for _ in range(3)]  # one epoch: 3 batches of 3, one chunk dropped
    flat = [c for b in batches for c in b]
    assert len(set(flat)) == 9 and all(len(set(b)) == 3 for b in batches)
    state = order.state_dict()
    ahead = [order.next_batch() for _ in range(5)]  # crosses into epoch 2 and 3
    again = DataOrder(10, 3, seed=7)
    again.load_state_dict(state)
    assert [again.next_batch() for _ in range(5)] == ahead
    assert DataOrder(10, 3, seed=8).permutation != DataOrder(10, 3, seed=7).permutation


def test_data_order_refuses_a_batch_larger_than_the_corpus():
    with pytest.raises(ConfigError, match="batch-size"):
        DataOrder(3, 4, seed=0)
