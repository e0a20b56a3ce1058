"""The engine's values equal an independent brute-force computation, and the engine does not change training.

Each case: a tiny float64 model, clipping active (k < 1), padded rows of different lengths, K = 3 targets,
three warm steps through the engine (so momentum / Adam moments are non-trivial), then the fourth step's
values_first / values_second / history_term are compared with tests/engine/reference.py, computed on a
fresh clone of the model and optimizer (the reference never touches the engine's hooked model). All
along, a twin model is trained with plain PyTorch (forward, backward, clip_grad_norm_, optimizer.step) on
the same batches; its weights must equal the engine's after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from . import reference as ref
from .scenarios import (
    OPTIMIZERS,
    MatrixError,
    targets_for,
    task_for,
    to_engine,
    token_losses_for,
    training_batch,
    weights_of,
)
from .tiny_models import BUILDERS

engine_module = pytest.importorskip("provenance.engine")
AttributionEngine = engine_module.AttributionEngine
EngineConfig = engine_module.EngineConfig

MAX_GRAD_NORM = 0.1  # small enough that every step below is clipped (asserted)
VALUE_TOL = 1e-6  # the contract: ||engine - reference|| / ||reference|| over the (rows, K) matrix
WEIGHT_TOL = 1e-12  # the engine's real update is plain training, to float64 rounding
WARM_STEPS = 3


class GradientRecorder:
    """The gradients an optimizer receives at each step() (a step pre-hook: the engine is not touched)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.named = dict(model.named_parameters())
        self.steps: list[dict[str, torch.Tensor]] = []
        self.handle = optimizer.register_step_pre_hook(self._record)

    def _record(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.steps.append(
            {n: (torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()) for n, p in self.named.items()}
        )


def compare_training(
    engine_model: torch.nn.Module,
    twin_model: torch.nn.Module,
    engine_grads: GradientRecorder,
    twin_grads: GradientRecorder,
    adaptive: bool,
) -> tuple[float, float, int]:
    """(max relative gradient gap of the last step, max weight gap, elements left out of the weight gap).

    Under Adam a direction whose true gradient is exactly zero (GPT-2's key bias: softmax ignores a shift
    shared by all keys) receives pure rounding noise, which Adam rescales to a full-size step; two exact
    computations then take different weights there. Such elements (twin gradient below 1e-14 of the
    largest in every step so far, but not exactly zero throughout) are left out of the weight comparison
    for Adam; their gradients are still compared."""
    last_engine, last_twin = engine_grads.steps[-1], twin_grads.steps[-1]
    scale = max(float(g.abs().max()) for g in last_twin.values())
    gradient_gap = max(float((last_engine[n] - last_twin[n]).abs().max()) for n in last_twin) / scale
    weights_engine, weights_twin = weights_of(engine_model), weights_of(twin_model)
    weight_gap, left_out = 0.0, 0
    for name in weights_twin:
        keep = torch.ones_like(weights_twin[name], dtype=torch.bool)
        if adaptive:
            small = torch.ones_like(keep)
            touched = torch.zeros_like(keep)
            for twin_step, engine_step in zip(twin_grads.steps, engine_grads.steps):
                step_scale = max(float(g.abs().max()) for g in twin_step.values())
                small &= twin_step[name].abs() <= 1e-14 * step_scale
                touched |= (twin_step[name] != 0) | (engine_step[name] != 0)
            null = small & touched  # rounding noise only; exact zeros are still compared
            keep = ~null
            left_out += int(null.sum())
        if keep.any():
            gap = (weights_engine[name] - weights_twin[name]).abs()[keep].max()
            weight_gap = max(weight_gap, float(gap))
    return gradient_gap, weight_gap, left_out


@dataclass(frozen=True)
class Outcome:
    result: object  # the engine's StepResult of the compared step
    expected: ref.ReferenceStep
    linearization_error: float  # || (h + sum d_i) - real dw || / ||real dw||
    engine_update_error: float  # || engine's dw - real dw || / ||real dw||
    max_weight_gap: float  # max |engine weights - plain-training weights| over all steps
    max_gradient_gap: float  # max |engine's gradient at optimizer.step - plain one| / max |plain one|
    weights_left_out: int  # Adam only: elements of zero true gradient left out of max_weight_gap
    engine_update: dict  # the engine's real parameter change of the compared step
    exact_update: bool  # h + sum_i d_i is the real update (False for Adam with the "previous" denominator)


def run_case(
    model_name: str,
    opt_name: str,
    reduction: str = "token_mean",
    n_micro: int = 1,
    order: int = 2,
    per_token: bool = False,
    seed: int = 0,
    warm_steps: int = WARM_STEPS,
    adam_denominator: str = "current",
    keep_rows_mb: float = 4096.0,
    weight_gradients: str = "auto",
    max_grad_norm: float = MAX_GRAD_NORM,
) -> Outcome:
    build = BUILDERS[model_name]
    token_losses = token_losses_for(model_name)
    model = build()
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    twin, twin_optimizer = ref.clone_training_state(model, optimizer, build)  # trained plainly
    gen = torch.Generator().manual_seed(seed)
    targets = targets_for(model_name, gen, k=3)
    config = EngineConfig(
        order=order, max_grad_norm=max_grad_norm, loss_reduction=reduction, per_token=per_token,
        adam_denominator=adam_denominator, keep_rows_mb=keep_rows_mb, weight_gradients=weight_gradients,
    )
    max_gap, max_gradient_gap, left_out = 0.0, 0.0, 0
    engine_grads = GradientRecorder(model, optimizer)
    twin_grads = GradientRecorder(twin, twin_optimizer)
    adaptive = isinstance(optimizer, torch.optim.Adam)
    with AttributionEngine(model, optimizer, config, task=task_for(model_name)) as engine:
        engine.set_targets(to_engine(model_name, targets))
        for step in range(warm_steps + 1):
            batches = [training_batch(model_name, gen, micro) for micro in range(n_micro)]
            if step == warm_steps:
                shadow, shadow_optimizer = ref.clone_training_state(model, optimizer, build)
                expected = ref.reference_step(
                    shadow, shadow_optimizer, batches, targets, token_losses, reduction,
                    max_grad_norm, per_token=per_token, adam_denominator=adam_denominator,
                )
                real_dw = ref.real_update(
                    shadow, shadow_optimizer, build, batches, token_losses, reduction, max_grad_norm
                )
                before = weights_of(model)
            result = engine.step([to_engine(model_name, b) for b in batches])
            ref.plain_training_step(twin, twin_optimizer, batches, token_losses, reduction, max_grad_norm)
            if len(engine_grads.steps) != step + 1:
                raise AssertionError("the engine did not call optimizer.step() exactly once per step")
            grad_gap, weight_gap, left_out = compare_training(model, twin, engine_grads, twin_grads, adaptive)
            max_gap, max_gradient_gap = max(max_gap, weight_gap), max(max_gradient_gap, grad_gap)
    after = weights_of(model)
    engine_dw = {n: after[n] - before[n] for n in real_dw}
    return Outcome(
        result=result,
        expected=expected,
        linearization_error=ref.relative_error(expected.predicted_update, real_dw),
        engine_update_error=ref.relative_error(engine_dw, real_dw),
        max_weight_gap=max_gap,
        max_gradient_gap=max_gradient_gap,
        weights_left_out=left_out,
        engine_update=engine_dw,
        exact_update=not (adaptive and adam_denominator == "previous" and warm_steps > 0),
    )


def check_outcome(outcome: Outcome, order: int = 2, clipped: bool = True) -> dict[str, MatrixError]:
    """Assert every field of the compared step against the reference; return the value errors."""
    r, e = outcome.result, outcome.expected
    if outcome.exact_update:
        assert outcome.linearization_error < 1e-12, "reference self-check: h + sum d_i != real dw"
    if clipped:
        assert e.clip_factor < 1.0, "the case must exercise clipping"
    else:
        assert e.clip_factor == 1.0, "the case must leave the step unclipped"
    assert outcome.max_gradient_gap <= WEIGHT_TOL, f"optimizer sees another gradient: {outcome.max_gradient_gap:.3e}"
    assert outcome.max_weight_gap <= WEIGHT_TOL, f"engine weights drift from plain training: {outcome.max_weight_gap:.3e}"
    assert outcome.engine_update_error < 1e-12
    assert r.grad_norm == pytest.approx(e.grad_norm, rel=1e-10)
    assert r.clip_factor == pytest.approx(e.clip_factor, rel=1e-10)
    assert r.loss == pytest.approx(e.loss, rel=1e-10)
    assert r.n_tokens == e.n_tokens
    # Ledger identity (needs no reference values): the first-order values of all players plus the history
    # term must add up to the first-order change of each target's loss under the REAL update, -dw . g_v.
    ledger = torch.stack([-ref.dot(outcome.engine_update, g_v) for g_v in e.target_gradients])
    engine_total = r.values_first.to(torch.float64).sum(0) + r.history_term.to(torch.float64)
    errors = {
        "values_first": MatrixError.of(r.values_first, e.values_first),
        "target_loss": MatrixError.of(r.target_loss, e.target_loss),
        "history_term": MatrixError.of(r.history_term, e.history_term),
    }
    if order == 2:
        errors["values_second"] = MatrixError.of(r.values_second, e.values_second)
    else:
        assert r.values_second is None
    ledger_error = MatrixError.of(engine_total, ledger)
    if outcome.exact_update:
        errors["ledger_first"] = ledger_error
    else:  # the variance-change part of the update is owned by nobody and reported by nobody
        print(f"ledger remainder with the 'previous' Adam denominator: {ledger_error}")
    print(
        {k: (f"{v.relative:.2e}", f"{v.max_relative:.2e}") for k, v in errors.items()},
        f"grad gap {outcome.max_gradient_gap:.1e} weight gap {outcome.max_weight_gap:.1e}"
        f" (left out {outcome.weights_left_out})",
    )
    for name, error in errors.items():
        assert error.within(VALUE_TOL), f"{name}: {error}"
    return errors


@pytest.mark.parametrize(
    ("opt_name", "adam_denominator"),
    [("sgd_momentum", "current"), ("adamw", "current"), ("adamw", "previous")],
    ids=["sgd_momentum", "adamw_current", "adamw_previous"],
)
@pytest.mark.parametrize("model_name", ["gpt2", "llama", "cnn"])
def test_values_equal_brute_force(model_name: str, opt_name: str, adam_denominator: str) -> None:
    outcome = run_case(model_name, opt_name, adam_denominator=adam_denominator)
    check_outcome(outcome)
    # the second-order term must actually matter here, or the test would not tell orders apart
    gap = MatrixError.of(outcome.expected.values_first, outcome.expected.values_second).relative
    assert gap > 1e-6


@pytest.mark.parametrize("model_name", ["gpt2", "llama", "cnn"])
def test_recomputed_rows_route_equals_brute_force(model_name: str) -> None:
    """keep_rows_mb=0: per-row gradients are re-derived after backward from kept activations instead of
    kept from backward (the "stored" route the default uses); both must be exact."""
    outcome = run_case(model_name, "adamw", keep_rows_mb=0.0)
    check_outcome(outcome)
    routes = set(outcome.result.routes.values())
    assert "stored" not in routes and routes & {"player", "target"}, routes
    stored = run_case(model_name, "adamw")
    assert "stored" in set(stored.result.routes.values())
    gap = MatrixError.of(stored.result.values_second, outcome.result.values_second)
    assert gap.within(1e-10), gap


@pytest.mark.parametrize("model_name", ["gpt2", "llama", "cnn"])
def test_ghost_route_first_order_sgd(model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SGD, first order: autograd forms the weight gradients (weight_gradients="auto" -> "matmul") and the
    values of matmul weights come from pairwise dots that never form a gradient; GPT-2's tied wte/lm_head
    adds the cross terms between the head and the embedding use. At these tiny widths the cost model would
    rather form per-row blocks, so the pairwise route is forced (its cost is a choice, not its result)."""
    from provenance.engine.rules.linear import MatmulRule

    monkeypatch.setattr(MatmulRule, "ghost_cost", lambda self, module, saved, target_saved: 0)
    outcome = run_case(model_name, "sgd_momentum", order=1)
    check_outcome(outcome, order=1)
    routes = outcome.result.routes
    assert "ghost" in set(routes.values()), routes
    if model_name == "gpt2":
        assert routes.get("lm_head.weight") == "ghost", routes
    per_row = run_case(model_name, "sgd_momentum", order=1, weight_gradients="per_row")
    check_outcome(per_row, order=1)
    assert "ghost" not in set(per_row.result.routes.values())


def _never_early(self, *args):
    return set()


def _always_predict_unclipped(original):
    def wrapped(self, *args):
        self._last_clip = 1.0
        return original(self, *args)

    return wrapped


@pytest.mark.parametrize("model_name", ["gpt2", "llama", "cnn"])
def test_adam_current_valued_in_backward_when_unclipped(model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adam "current", first order, unclipped steps: matmul weights with one call are valued inside backward
    with the denominator the optimizer then applies (no per-row blocks kept to the end). Exact against the
    brute force, and the numbers of the stored route (whose blocks are summed in pieces: to rounding)."""
    outcome = run_case(model_name, "adamw", order=1, max_grad_norm=1e6)
    check_outcome(outcome, order=1, clipped=False)
    early = [name for name, route in outcome.result.routes.items() if route == "backward"]
    assert early, outcome.result.routes
    if model_name == "gpt2":  # the tied head: untouched rows in backward (test_tied_head_valued_in_backward...)
        assert outcome.result.routes["lm_head.weight"] == "split", outcome.result.routes
    monkeypatch.setattr(AttributionEngine, "_early_params", _never_early)
    stored = run_case(model_name, "adamw", order=1, max_grad_norm=1e6)
    assert all(stored.result.routes[name] == "stored" for name in early), stored.result.routes
    assert MatrixError.of(outcome.result.values_first, stored.result.values_first).within(1e-12)
    assert MatrixError.of(outcome.result.history_term, stored.result.history_term).within(1e-12)


@pytest.mark.parametrize("model_name", ["gpt2", "llama"])
def test_adam_current_predicted_unclipped_but_clipped(model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-backward values assume an unclipped step; when the step is clipped after all, they are thrown
    away and the same per-row blocks are formed again from kept inputs: exact, and bit for bit the numbers
    of a step predicted clipped; the stored route agrees to rounding."""
    natural = run_case(model_name, "adamw", order=1)  # every step clipped: predicted clipped, re-derived
    check_outcome(natural, order=1)
    assert "player" in set(natural.result.routes.values()), natural.result.routes
    original = AttributionEngine._early_params
    monkeypatch.setattr(AttributionEngine, "_early_params", _always_predict_unclipped(original))
    outcome = run_case(model_name, "adamw", order=1)
    check_outcome(outcome, order=1)
    assert "player" in set(outcome.result.routes.values()), outcome.result.routes  # the blocks formed again
    monkeypatch.setattr(AttributionEngine, "_early_params", _never_early)
    stored = run_case(model_name, "adamw", order=1)
    assert torch.equal(natural.result.values_first, outcome.result.values_first)
    assert torch.equal(natural.result.history_term, outcome.result.history_term)
    assert MatrixError.of(outcome.result.values_first, stored.result.values_first).within(1e-12)


@pytest.mark.parametrize("chunk_elems", [1, 40 * 32 * 8], ids=["one-weight-row-a-chunk", "several-rows-a-chunk"])
def test_tied_head_valued_in_backward_on_untouched_rows(chunk_elems: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2's tied wte/lm_head under Adam "current", unclipped steps: the head's rows that no token of the
    batch embeds are valued inside backward, a few weight rows at a time, and only the touched rows' blocks
    are re-derived after it (no rows x vocab x width blocks kept through backward). Per-row blocks summed in
    pieces of two rows, as the output head's are at real sizes. Exact against the brute force; values equal to
    the stored route's to rounding; training bit for bit the stored route's wherever this machine's matmuls
    give a chunk's elements as the whole weight's (chunks_reproduce_pieces). Where they do not, the engine
    takes the stored route by itself (checked here), and the split route is forced to test its values."""
    import provenance.engine.engine as engine_impl
    from provenance.engine.rules import linear
    from .tiny_models import VOCAB

    monkeypatch.setattr(linear, "_ROW_PIECE_BYTES", 2 * VOCAB * 32 * 8)
    monkeypatch.setattr(engine_impl, "_SPLIT_CHUNK_ELEMS", chunk_elems)
    monkeypatch.setattr(linear, "_MIN_CHUNK_ROWS", 24)  # vocabulary 97: chunks of 25 and 22 weight rows
    checked = []
    real_check = linear.MatmulRule.chunks_reproduce_pieces

    def check(self, *args):
        checked.append(real_check(self, *args))
        return checked[-1]

    monkeypatch.setattr(linear.MatmulRule, "chunks_reproduce_pieces", check)
    natural = run_case("gpt2", "adamw", order=1, max_grad_norm=1e6)
    assert checked and len(set(checked)) == 1, checked
    reproduces = checked[0]
    assert natural.result.routes["lm_head.weight"] == ("split" if reproduces else "stored"), natural.result.routes
    monkeypatch.setattr(linear.MatmulRule, "chunks_reproduce_pieces", lambda self, *args: True)
    outcome = run_case("gpt2", "adamw", order=1, max_grad_norm=1e6)
    check_outcome(outcome, order=1, clipped=False)
    assert outcome.result.routes["lm_head.weight"] == "split", outcome.result.routes
    monkeypatch.setattr(AttributionEngine, "_split_params", _never_early)
    stored = run_case("gpt2", "adamw", order=1, max_grad_norm=1e6)
    assert stored.result.routes["lm_head.weight"] == "stored", stored.result.routes
    same = all(torch.equal(outcome.engine_update[n], stored.engine_update[n]) for n in stored.engine_update)
    assert same or not reproduces
    assert all(torch.equal(natural.engine_update[n], (outcome if reproduces else stored).engine_update[n])
               for n in stored.engine_update)
    assert MatrixError.of(outcome.result.values_first, stored.result.values_first).within(1e-12)
    assert MatrixError.of(outcome.result.history_term, stored.result.history_term).within(1e-12)


def test_matmul_weight_gradients_with_adam() -> None:
    """weight_gradients="matmul" under AdamW: no pairwise route (the preconditioner forbids it); values
    are re-derived after backward, still exact, on the tied GPT-2."""
    outcome = run_case("gpt2", "adamw", weight_gradients="matmul")
    check_outcome(outcome)
    assert "ghost" not in set(outcome.result.routes.values())


def test_gradient_accumulation_and_sample_mean() -> None:
    """Two micro-batches, sample_mean reduction, Nesterov SGD with weight decay, on GPT-2 (tied head)."""
    outcome = run_case("gpt2", "sgd_nesterov", reduction="sample_mean", n_micro=2)
    check_outcome(outcome)
    assert outcome.result.values_first.shape == (7, 3)


@pytest.mark.parametrize("adam_denominator", ["current", "previous"])
def test_gradient_accumulation_token_mean_adam_l2(adam_denominator: str) -> None:
    """Two micro-batches, token_mean, Adam with L2 decay (decay inside the moments), on Llama."""
    outcome = run_case(
        "llama", "adam_l2", reduction="token_mean", n_micro=2, adam_denominator=adam_denominator
    )
    check_outcome(outcome)


def _per_token_errors(outcome: Outcome, order: int) -> dict[str, MatrixError]:
    """The engine's per_token against both brute-force splits (see reference.ReferenceStep.per_token)."""
    per_token = outcome.result.per_token.detach().to(torch.float64)
    rows, width, k = per_token.shape
    splits = outcome.expected.per_token
    by_loss = torch.zeros(rows, width, k, dtype=torch.float64)
    by_loss[:, : splits["loss_first"].shape[1]] = splits["loss_first"]
    by_use = torch.zeros(rows, width, k, dtype=torch.float64)
    use = splits["use_first" if order == 1 else "use_second"]
    by_use[:, : use.shape[1]] = use
    errors = {"position_of_use": MatrixError.of(per_token, by_use)}
    if order == 1:
        errors["predicted_token"] = MatrixError.of(per_token, by_loss)
    print("per_token vs brute-force splits:", errors)
    return errors


def test_per_token_values_split_first_order() -> None:
    """per_token (order 1) sums over tokens to values_first and equals the position-of-use split.

    The engine splits a row's value over the input positions where the weights were used (a position's
    activations also reach later tokens' losses through attention), not over the predicted tokens'
    losses; the reference computes both splits independently and the test pins the first one."""
    outcome = run_case("gpt2", "sgd_momentum", order=1, per_token=True)
    check_outcome(outcome, order=1)
    per_token = outcome.result.per_token.detach().to(torch.float64)
    assert per_token.shape[0] == outcome.result.values_first.shape[0]
    summed = MatrixError.of(per_token.sum(1), outcome.result.values_first.to(torch.float64))
    assert summed.within(1e-10), summed
    errors = _per_token_errors(outcome, order=1)
    assert errors["position_of_use"].within(VALUE_TOL)


def test_per_token_values_split_second_order() -> None:
    """per_token (order 2) sums to values_second and equals the position-of-use split of second order."""
    outcome = run_case("llama", "adamw", order=2, per_token=True, adam_denominator="current")
    check_outcome(outcome)
    summed = MatrixError.of(
        outcome.result.per_token.detach().to(torch.float64).sum(1), outcome.result.values_second.to(torch.float64)
    )
    assert summed.within(1e-10), summed
    assert _per_token_errors(outcome, order=2)["position_of_use"].within(VALUE_TOL)


@pytest.mark.parametrize("adam_denominator", ["current", "previous"])
def test_adamw_first_step(adam_denominator: str) -> None:
    """Step 1 of AdamW: no v_0, so both settings use the step's own denominator |k g_B| + eps."""
    check_outcome(run_case("cnn", "adamw", warm_steps=0, adam_denominator=adam_denominator))
