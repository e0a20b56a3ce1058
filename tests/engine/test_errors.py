"""Bad input gets a clear typed error (provenance.errors) that names the cause, and changes nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from provenance.errors import (
    BatchError,
    NonFiniteLossError,
    TargetError,
    UnsupportedLayerError,
    UnsupportedOptimizerError,
)

from .scenarios import to_engine, weights_of
from .tiny_models import CONTEXT, VOCAB, build_gpt2, lm_batch, lm_targets

engine_module = pytest.importorskip("provenance.engine")
AttributionEngine = engine_module.AttributionEngine
EngineConfig = engine_module.EngineConfig
CausalLMTask = engine_module.CausalLMTask
ClassificationTask = engine_module.ClassificationTask
LMBatch = engine_module.LMBatch


class GRUClassifier(nn.Module):
    """Embedding -> GRU -> Linear: the GRU's weights have no attribution rule."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.recurrent = nn.GRU(8, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        states, _ = self.recurrent(self.embed(inputs))
        return self.head(states[:, -1])


class BareParameterModel(nn.Module):
    """A parameter used directly in forward, outside any module with a rule."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.temperature = nn.Parameter(torch.ones(3))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(inputs) * self.temperature


def _start_and_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Construction, targets and one step: the error may come at any of them, none may pass silently."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with AttributionEngine(model, optimizer, EngineConfig(), task=ClassificationTask()) as engine:
        engine.set_targets(batch)
        engine.step([batch])


@pytest.mark.parametrize(
    ("model", "batch", "module_name", "parameter_name"),
    [
        (
            GRUClassifier(),
            (torch.randint(0, VOCAB, (2, 5)), torch.tensor([0, 2])),
            "recurrent",
            "weight_ih_l0",
        ),
        (BareParameterModel(), (torch.randn(2, 4), torch.tensor([0, 1])), "", "temperature"),
    ],
    ids=["gru", "bare_parameter"],
)
def test_unsupported_trainable_layer(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], module_name: str, parameter_name: str
) -> None:
    with pytest.raises(UnsupportedLayerError) as caught:
        _start_and_step(model, batch)
    message = str(caught.value)
    assert parameter_name in message, message
    if module_name:
        assert module_name in message, message
    else:  # the root module: the message must still say which type it is
        assert type(model).__name__ in message or "temperature" in message, message


def test_frozen_unsupported_layer_is_fine() -> None:
    """Only TRAINABLE parameters need a rule: a frozen GRU must not block the engine."""
    model = GRUClassifier().to(torch.float64)
    model.recurrent.requires_grad_(False)
    batch = (torch.randint(0, VOCAB, (3, 5)), torch.tensor([0, 2, 1]))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with AttributionEngine(model, optimizer, EngineConfig(), task=ClassificationTask()) as engine:
        engine.set_targets(batch)
        result = engine.step([batch])
    assert result.values_first.shape == (3, 3)


def test_target_longer_than_context() -> None:
    model = build_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    too_long = lm_targets([(CONTEXT - 4, 10)], gen)
    with AttributionEngine(model, optimizer, EngineConfig(), task=CausalLMTask()) as engine:
        with pytest.raises(TargetError) as caught:
            engine.set_targets(to_engine("gpt2", too_long))
    assert str(CONTEXT) in str(caught.value)


def test_target_without_output_tokens() -> None:
    model = build_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    targets = lm_targets([(3, 4), (5, 2)], gen)
    targets["labels"][1] = -100
    with AttributionEngine(model, optimizer, EngineConfig(), task=CausalLMTask()) as engine:
        with pytest.raises(TargetError):
            engine.set_targets(to_engine("gpt2", targets))


@pytest.mark.parametrize("where", ["training", "target"])
def test_non_finite_loss_changes_nothing(where: str) -> None:
    """Inf in a weight -> NonFiniteLossError; the optimizer has not stepped and no weight moved.

    The poisoned weight is a position-embedding row that only the training batch (or only the target)
    reaches, so each loss is tested on its own (GPT-2's token embeddings are tied to the output head
    and would poison both)."""
    model = build_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    if where == "training":
        batch, targets, position = lm_batch([10, 4], gen), lm_targets([(2, 3)], gen), 9
    else:
        batch, targets, position = lm_batch([6, 4], gen), lm_targets([(3, 6)], gen), 8
    with torch.no_grad():
        model.transformer.wpe.weight[position, 0] = float("inf")
    before = weights_of(model)
    with AttributionEngine(model, optimizer, EngineConfig(order=2), task=CausalLMTask()) as engine:
        engine.set_targets(to_engine("gpt2", targets))
        with pytest.raises(NonFiniteLossError):
            engine.step([to_engine("gpt2", batch)])
    after = weights_of(model)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert len(optimizer.state) == 0


def test_empty_batches() -> None:
    model = build_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(2)
    empty = LMBatch(
        torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long)
    )
    no_loss = lm_batch([4, 3], gen)
    no_loss["labels"][:] = -100
    with AttributionEngine(model, optimizer, EngineConfig(), task=CausalLMTask()) as engine:
        engine.set_targets(to_engine("gpt2", lm_targets([(2, 3)], gen)))
        with pytest.raises(BatchError):
            engine.step([])
        with pytest.raises(BatchError):
            engine.step([empty])
        with pytest.raises(BatchError):
            engine.step([to_engine("gpt2", no_loss)])
    assert len(optimizer.state) == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.RMSprop(p, lr=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-3, amsgrad=True),
        lambda p: torch.optim.Adam(p, lr=1e-3, amsgrad=True),
        lambda p: torch.optim.Adagrad(p, lr=1e-3),
    ],
    ids=["rmsprop", "adamw_amsgrad", "adam_amsgrad", "adagrad"],
)
def test_unsupported_optimizer(make) -> None:
    model = build_gpt2()
    optimizer = make(model.parameters())
    with pytest.raises(UnsupportedOptimizerError) as caught:
        AttributionEngine(model, optimizer, EngineConfig(), task=CausalLMTask())
    assert type(optimizer).__name__ in str(caught.value) or "amsgrad" in str(caught.value)


def test_values_follow_optimizer_state_loaded_after_construction() -> None:
    """load_state_dict() replaces the optimizer's param-group dicts; the engine must read the live ones."""
    import copy

    from provenance.engine import AttributionEngine, EngineConfig, LMBatch

    torch.manual_seed(0)
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    ids = torch.randint(1, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    batch = LMBatch(ids, torch.ones_like(ids), ids.clone())
    targets = LMBatch(ids[:1], torch.ones_like(ids[:1]), ids[:1].clone())

    def values(lr_in_loaded_state: float) -> torch.Tensor:
        model = GPT2LMHeadModel(config).double()
        model.load_state_dict(reference_weights)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        engine = AttributionEngine(model, optimizer, EngineConfig(max_grad_norm=None))
        engine.set_targets(targets)
        state = copy.deepcopy(optimizer.state_dict())
        state["param_groups"][0]["lr"] = lr_in_loaded_state
        optimizer.load_state_dict(state)  # after the engine was built
        return engine.step(batch).values_first

    reference_weights = GPT2LMHeadModel(config).double().state_dict()
    small, large = values(0.01), values(0.02)
    assert torch.allclose(large, 2 * small, rtol=1e-9, atol=0.0)
