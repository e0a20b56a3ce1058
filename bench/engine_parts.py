"""Where first order's time goes under AdamW: each piece of valuing a matmul weight, timed on its own with the
engine's own code, at the benchmark's shapes, against the weight-gradient matmul plain training spends.

    python bench/engine_parts.py            # the issue's size (GPT-2, 4 layers, d=768, vocab 8192, batch 16 x 256)
    python bench/engine_parts.py --targets 16
    python bench/engine_parts.py --quick --json

For every matmul weight (the 16 Conv1D weights and the tied output head) the inputs and output gradients of one
training batch and of K targets are captured, then each piece runs alone (median of --reps after a warm-up):
  weight_grad_mm   autograd's weight-gradient matmul (what plain training spends; the engine skips it)
  blocks_bmm       the per-row blocks (rule._blocks into the reused scratch buffer): the same multiply-adds
  sum_rows         their sum over rows, the batch gradient the optimizer gets
  target_grads     the K targets' gradients of the weight (rule.grads)
  directions       Adam "current" linearization and z = coef * g_v with the history term
                   (optimizers.linearize(...).direction_and_history), the engine's default denominator
  dots             the blocks against the K directions (rule.dot_rows)
The sum of the pieces past weight_grad_mm is the valuing cost that no scheduling removes: each is one pass
over rows x parameters (or K x parameters) of memory, or a batched matmul. A plain training step is timed too,
so the pieces read as fractions of it (the bar for first order is 1.10x plain). Not included: the targets'
forward/backward, norms and biases, the tied head's touched rows (bench/engine.py times whole steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

if "--no-thp" not in sys.argv:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine import SIZES, build, make_batch, make_optimizer, plain_step  # noqa: E402

from provenance.engine import CausalLMTask  # noqa: E402
from provenance.engine.optimizers import linearize  # noqa: E402
from provenance.engine.registry import tracked_modules  # noqa: E402
from provenance.engine.rules.linear import MatmulRule, _scratch  # noqa: E402

PIECES = ("weight_grad_mm", "blocks_bmm", "sum_rows", "target_grads", "directions", "dots")


def capture(model, modules, batch, task, targets: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(input, output gradient) of each matmul module for one batch (train mode) or the targets (eval mode)."""
    saved: dict[str, list] = {name: [None, None] for name, _, _ in modules}
    handles = []
    for name, module, rule in modules:
        def forward_hook(mod, args, output, name=name, rule=rule):
            saved[name][0] = rule.capture(mod, args, output)
            output.register_hook(lambda g, name=name: saved[name].__setitem__(1, g.detach()))
        handles.append(module.register_forward_hook(forward_hook))
    model.train(not targets)
    try:
        if targets:
            task.target_losses(model, batch).sum().backward()
        else:
            sums, weights = task.loss_terms(model, batch)
            (sums.sum() / weights.sum()).backward()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train()
    return {name: (a, b) for name, (a, b) in saved.items()}


def median_seconds(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(size_name: str, k: int, reps: int) -> dict:
    size = SIZES[size_name]
    model = build(size)
    opt = make_optimizer(model, "adamw")
    task = CausalLMTask()
    for step in range(2):  # Adam state with non-trivial moments, as in a training run
        plain_step(model, opt, make_batch(size["batch"], size["seq"], size["vocab"], step))
    plain = median_seconds(
        lambda: plain_step(model, opt, make_batch(size["batch"], size["seq"], size["vocab"], 7)), max(3, reps // 2))
    group = opt.param_groups[0]
    modules = [(n, m, r) for n, m, r in tracked_modules(model) if isinstance(r, MatmulRule)]
    batch = make_batch(size["batch"], size["seq"], size["vocab"], 100)
    train = capture(model, modules, batch, task, targets=False)
    target = capture(model, modules, make_batch(k, size["target_tokens"], size["vocab"], 999, prompt=8), task, True)
    totals = dict.fromkeys(PIECES, 0.0)
    per_shape: dict[str, dict[str, float]] = {}
    for name, module, rule in modules:
        weight = module.weight
        saved, grad = train[name]
        a, b = rule.factors(module, saved, grad)
        rows, din, dout = a.shape[0], a.shape[2], b.shape[2]
        scratch = _scratch(weight.dtype, rows * din * dout)
        blocks = rule._blocks(a, b, out=scratch)
        total = blocks.sum(dim=0).reshape(weight.shape)
        t_saved, t_grad = target[name]
        g_v = rule.grads(module, "weight", t_saved, t_grad, weight.dtype)

        def directions():
            entry = linearize(opt, weight, group, total, "current")
            return entry.direction_and_history(g_v.clone())

        z, _ = directions()
        flat_a, flat_b = a.reshape(-1, din), b.reshape(-1, dout)
        times = {
            "weight_grad_mm": median_seconds(
                (lambda: flat_a.T @ flat_b) if rule.transposed else (lambda: flat_b.T @ flat_a), reps),
            "blocks_bmm": median_seconds(lambda: rule._blocks(a, b, out=scratch), reps),
            "sum_rows": median_seconds(lambda: blocks.sum(dim=0), reps),
            "target_grads": median_seconds(lambda: rule.grads(module, "weight", t_saved, t_grad, weight.dtype), reps),
            "directions": median_seconds(directions, reps),
            "dots": median_seconds(lambda: rule.dot_rows(module, "weight", [blocks], z), reps),
        }
        shape = "x".join(str(s) for s in weight.shape)
        entry = per_shape.setdefault(shape, dict.fromkeys(PIECES, 0.0) | {"weights": 0})
        entry["weights"] += 1
        for piece, seconds in times.items():
            totals[piece] += seconds
            entry[piece] += seconds
    valuing = totals["blocks_bmm"] + totals["sum_rows"] - totals["weight_grad_mm"] + sum(
        totals[p] for p in ("target_grads", "directions", "dots"))
    return {
        "sizes": dict(size, size=size_name, targets=k, reps=reps, threads=torch.get_num_threads()),
        "plain_step_seconds": round(plain, 4),
        "pieces_seconds": {p: round(s, 4) for p, s in totals.items()},
        "pieces_x_plain": {p: round(s / plain, 4) for p, s in totals.items()},
        "valuing_seconds": round(valuing, 4),
        "valuing_x_plain": round(valuing / plain, 4),
        "per_shape_seconds": {s: {p: (round(v, 4) if p != "weights" else v) for p, v in e.items()}
                              for s, e in per_shape.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small model (seconds)")
    parser.add_argument("--targets", type=int, default=1, help="K targets (default 1)")
    parser.add_argument("--reps", type=int, default=5, help="timed runs of each piece (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--no-thp", action="store_true", help="without huge pages for torch's CPU tensors")
    args = parser.parse_args()
    if args.targets < 1:
        parser.error(f"--targets must be >= 1, got {args.targets}")
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    result = measure("quick" if args.quick else "full", args.targets, args.reps)
    if args.json:
        print(json.dumps(result))
        return
    plain = result["plain_step_seconds"]
    print(f"plain step {plain:.3f} s; K = {args.targets}; summed over the matmul weights:")
    print(f"{'piece':16s} {'s/step':>9s} {'x plain':>9s}")
    for piece in PIECES:
        print(f"{piece:16s} {result['pieces_seconds'][piece]:9.4f} {result['pieces_x_plain'][piece]:9.4f}")
    print(f"valuing (blocks + sum - mm + target grads + directions + dots): {result['valuing_seconds']:.4f} s "
          f"= {result['valuing_x_plain']:.4f} x plain")


if __name__ == "__main__":
    main()
