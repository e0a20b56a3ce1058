"""Engine overhead against plain training, measured side by side in one process (interleaved, medians).

    python bench/engine.py            # the issue's size: GPT-2, 4 layers, d=768, 12 heads, vocab 8192,
                                      # seq 256, batch 16, 64-token targets (several minutes on 2 cores)
    python bench/engine.py --quick    # a small model, the issue's configurations, under a minute
    python bench/engine.py --json     # one JSON line
    python bench/engine.py --optimizer sgd [--weight-gradients per_row]   # SGD: ghost dots or per-row blocks
    python bench/engine.py --time-repeats 3 --memory-repeats 3   # each measured in 3 fresh processes, medians

Time: each configuration's ratio is its engine steps over plain steps of the same model and optimizer, taken
alternately in the same process (timed_run): two plain models in one process were not equally fast (session 16).

Peak memory is measured per configuration in a fresh subprocess (VmHWM after --memory-steps steps, default
10), because a process's peak cannot be reset between configurations; "step memory" subtracts the RSS after
imports and model build, i.e. what training itself adds. A process's plain step can run 20% faster or slower
than the next process's with the same code (session 15, docs/engine.md), so one process's time ratios move by
more than the bars' margins: --time-repeats N times every configuration in N fresh processes and reports the
median of their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Huge pages for PyTorch's CPU tensors, as the `provenance` command sets them (torch reads the variable at its
# first allocation, so before the import): plain training and the engine both run with them. --no-thp
# measures without.
if "--no-thp" not in sys.argv:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from provenance.engine import AttributionEngine, CausalLMTask, EngineConfig, LMBatch

SIZES = {
    "full": dict(n_layer=4, n_embd=768, n_head=12, vocab=8192, seq=256, batch=16, target_tokens=64),
    "quick": dict(n_layer=2, n_embd=128, n_head=4, vocab=2048, seq=128, batch=8, target_tokens=32),
}


def build(size: dict, seed: int = 0):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=size["vocab"], n_positions=size["seq"], n_embd=size["n_embd"], n_layer=size["n_layer"],
        n_head=size["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    model.config._attn_implementation = "eager"
    return model


def make_batch(rows: int, length: int, vocab: int, seed: int, prompt: int = 0) -> LMBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return LMBatch(ids, torch.ones_like(ids), labels)


def make_optimizer(model, name: str):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)


class Runner:
    """One configuration: a model, its optimizer and (unless plain) an engine."""

    def __init__(self, size, mode: str, optimizer: str):
        self.size, self.mode = size, mode
        self.model = build(size)
        self.model.train()
        self.opt = make_optimizer(self.model, optimizer)
        self.step_index = 0
        self.engine = None
        if mode == "plain":
            return
        if mode == "torch_func":
            self.targets = make_batch(1, size["target_tokens"], size["vocab"], 999, prompt=8)
            return
        if mode == "no_targets":  # the engine attached without targets: it forms the batch gradient as a
            # valued step does (per-row blocks under AdamW), so this is the cost of that alone
            self.engine = AttributionEngine(self.model, self.opt, EngineConfig(max_grad_norm=1.0, **memory_settings()))
            return
        order = 2 if mode.startswith("second_order") else 1
        k = 16 if mode.startswith("targets16") else 1
        denominator = "previous" if mode.endswith("_previous") else "current"
        # "_clipped": a max norm this small clips every step. This random model's gradient norm stays under
        # 1.0, so the other configurations never clip; Adam "current" then values matmul weights inside
        # backward, while a clipped step re-derives their blocks after it (docs/engine.md).
        max_norm = CLIP_EVERY_STEP if mode.endswith("_clipped") else 1.0
        config = EngineConfig(order=order, max_grad_norm=max_norm, adam_denominator=denominator,
                              **memory_settings())
        self.engine = AttributionEngine(self.model, self.opt, config)
        self.engine.set_targets(make_batch(k, size["target_tokens"], size["vocab"], 999, prompt=8))

    def next_batch(self) -> LMBatch:
        """The next training batch of this configuration's run (plain and engine steps draw from one sequence)."""
        self.step_index += 1
        return make_batch(self.size["batch"], self.size["seq"], self.size["vocab"], self.step_index - 1)

    def step(self) -> float:
        batch = self.next_batch()
        start = time.perf_counter()
        if self.engine is not None:
            self.engine.last_route = self.engine.step([batch]).route
        elif self.mode == "torch_func":
            torch_func_step(self.model, self.opt, batch, self.targets)
        else:
            plain_step(self.model, self.opt, batch)
        return time.perf_counter() - start

    def plain_step(self) -> float:
        """A plain training step of this configuration's own model and optimizer: its time baseline. The engine's
        hooks (inert outside its steps) are detached for it, so plain training runs exactly as without one."""
        batch = self.next_batch()
        capturer = self.engine._capturer if self.engine is not None else None
        if capturer is not None:
            capturer.detach()
        try:
            start = time.perf_counter()
            plain_step(self.model, self.opt, batch)
            return time.perf_counter() - start
        finally:
            if capturer is not None:
                capturer.attach()


def plain_step(model, opt, batch):
    sums, weights = CausalLMTask().loss_terms(model, batch)
    loss = sums.sum() / weights.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def torch_func_step(model, opt, batch, targets):
    """The textbook baseline for the same first-order values: vmap'd per-sample gradients, then dots."""
    from torch.func import functional_call, grad, vmap

    task = CausalLMTask()
    params = {k: v.detach() for k, v in model.named_parameters()}
    total = batch.labels[:, 1:].ne(-100).sum()

    def row_loss(p, ids, mask, labels):
        out = functional_call(model, p, (), dict(input_ids=ids[None], attention_mask=mask[None], labels=None))
        logits = out.logits[0, :-1]
        return torch.nn.functional.cross_entropy(logits, labels[1:], ignore_index=-100, reduction="sum") / total

    per_sample = vmap(grad(row_loss), in_dims=(None, 0, 0, 0))(params, batch.input_ids, batch.attention_mask, batch.labels)
    model.eval()
    tloss = task.target_losses(model, targets)[0]
    g_v = torch.autograd.grad(tloss, list(model.parameters()))
    model.train()
    values = sum((per_sample[name].reshape(per_sample[name].shape[0], -1) @ gv.reshape(-1))
                 for (name, _), gv in zip(model.named_parameters(), g_v))
    for (name, p) in model.named_parameters():
        p.grad = per_sample[name].sum(0)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return values


CLIP_EVERY_STEP = 1e-4
RELEASE_MEMORY_ENV = "PROVENANCE_BENCH_RELEASE_MEMORY"  # --release-memory, passed on to the memory subprocesses
KEEP_ROWS_ENV = "PROVENANCE_BENCH_KEEP_ROWS_MB"  # --keep-rows-mb, likewise
WEIGHT_GRADIENTS_ENV = "PROVENANCE_BENCH_WEIGHT_GRADIENTS"  # --weight-gradients, likewise


def memory_settings() -> dict:
    """The EngineConfig settings --release-memory, --keep-rows-mb and --weight-gradients chose (read from the
    environment, so the peak-memory subprocesses get them too)."""
    return {"release_memory": os.environ.get(RELEASE_MEMORY_ENV) == "1",
            "keep_rows_mb": float(os.environ.get(KEEP_ROWS_ENV, EngineConfig.keep_rows_mb)),
            "weight_gradients": os.environ.get(WEIGHT_GRADIENTS_ENV, EngineConfig.weight_gradients)}


def run_child(code: str, env: dict | None = None) -> str:
    """Run `code` in a fresh Python process with this module imported as `b`; its last line of output. The
    child's sys.argv passes --no-thp on (the import above would otherwise turn huge pages on in the child
    whatever the parent measures)."""
    argv = ["x"] if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else ["x", "--no-thp"]
    preamble = "import sys; sys.argv=%r; sys.path.insert(0, %r); import engine as b; " % (
        argv, os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", preamble + code], capture_output=True, text=True, check=True,
                         env=env)
    return out.stdout.strip().splitlines()[-1]


LIVE_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def peak_memory_mb(
    size_name: str, mode: str, optimizer: str, live: bool = False, steps: int = 10
) -> tuple[float, float]:
    """(peak RSS of a fresh process doing `steps` steps, RSS after imports and model build) in MB.

    Not two steps: a process's peak grows over its first steps (plain's for ~4 steps) and a short run
    understates what a training run reaches. Before session 10 fixed reference cycles that left each step's
    embedding activations to Python's cyclic collector, 16 targets' peak rose from 1.3x plain's after two
    steps to 1.5x after twenty; it now levels off after ~5 steps (docs/engine.md).

    Peak = VmHWM of the child's own address space: ru_maxrss would carry over the parent's RSS at fork.
    live=True fixes glibc's mmap threshold at 1 MiB (plain and engine alike), so freed tensors leave the
    process at once and the peak is that of live memory; with the default, dynamic threshold, freed heap
    memory stays mapped and the peak also counts how the allocator's heap fragments."""
    code = (
        "import resource; "
        "r=b.Runner(b.SIZES[%r], %r, %r); "
        "hwm=lambda: int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]); "
        "base=int(open('/proc/self/statm').read().split()[1])*resource.getpagesize()/1024; "
        "[r.step() for _ in range(%d)]; "
        "print(hwm(), base)"
    ) % (size_name, mode, optimizer, steps)
    peak_kb, base_kb = run_child(code, env=dict(os.environ, **LIVE_ALLOCATOR) if live else None).split()
    return int(peak_kb) / 1024.0, float(base_kb) / 1024.0


def pair_ratio_quartiles(engine: list[float], plain: list[float]) -> list[float]:
    """Quartiles (25%, 50%, 75%) of engine step / plain step of the same rep. On a shared machine the speed
    of the CPU moves by tens of percent within seconds, more than the bars' margins: the spread says whether
    a median ratio is resolved (too few reps when the quartiles straddle a bar)."""
    ratios = [e / p for e, p in zip(engine, plain)]
    if len(ratios) < 2:
        return [round(ratios[0], 4)] * 3 if ratios else []
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    return [round(q1, 4), round(q2, 4), round(q3, 4)]


def timed_run(size_name: str, modes: list[str], optimizer: str, reps: int) -> dict:
    """Every configuration's plain baseline is plain training of that configuration's own model and optimizer, in
    the same process: plain steps and engine steps alternate on the same tensors (the engine's hooks detached for
    the plain ones). Two plain models of one process were not equally fast (session 16: the model built second
    ran 1.05-1.13x the first's step time in three of three processes), and the engine's models were always
    built after plain's, so a separate plain model can move a ratio by as much as the bars' margins.

    One warm-up step of each kind per configuration, then `reps` rounds; in each, every configuration runs two
    plain steps in a row and two engine steps in a row (which kind first alternates by round, and so does the
    order of the configurations, so a slow spell of the shared CPU hits them alike). The second step of a pair
    is the one timed for the ratios: in training a step follows a step of the same training; the first steps'
    ratios are reported too (times_after_other)."""
    configurations = [mode for mode in modes if mode != "plain"]
    runners = {mode: Runner(SIZES[size_name], mode, optimizer) for mode in configurations}
    for runner in runners.values():  # warm-up (allocations, Adam state)
        runner.step()
        runner.plain_step()
    times, plain_times = {mode: [] for mode in configurations}, {mode: [] for mode in configurations}
    times_after_other = {mode: [] for mode in configurations}
    plain_after_other = {mode: [] for mode in configurations}
    for rep in range(reps):
        for mode in (configurations if rep % 2 == 0 else configurations[::-1]):
            runner = runners[mode]
            kinds = [(runner.plain_step, plain_after_other, plain_times), (runner.step, times_after_other, times)]
            for step, first, second in (kinds if rep % 2 == 0 else kinds[::-1]):
                first[mode].append(step())
                second[mode].append(step())
    return {
        "times": times,
        "plain_times": plain_times,
        "times_after_other": times_after_other,
        "plain_times_after_other": plain_after_other,
        "routes": dict(runners["first_order"].engine.routes) if "first_order" in runners else {},
        "routes16": dict(runners["targets16"].engine.routes) if "targets16" in runners else {},
        "last_routes": {mode: r.engine.last_route for mode, r in runners.items() if r.engine is not None},
    }


def timed_run_in_child(size_name: str, modes: list[str], optimizer: str, reps: int) -> dict:
    """timed_run in a fresh process (--time-repeats): one process's plain step has been seen 20% faster or
    slower than the next's with the same code, which moves its ratios by more than the bars' margins."""
    code = "import json; print(json.dumps(b.timed_run(%r, %r, %r, %d)))" % (size_name, modes, optimizer, reps)
    return json.loads(run_child(code))


def process_ratios(runs: list[dict], key: str, plain_key: str) -> dict[str, list[float]]:
    """Each process's ratio of medians (a configuration's steps, run[key], over the plain steps of its own model,
    run[plain_key]): the issue's measurement; with --time-repeats, the report gives their median."""
    return {mode: [statistics.median(run[key][mode]) / statistics.median(run[plain_key][mode]) for run in runs]
            for mode in runs[0][key]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, under a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--reps", type=int, default=None,
                        help="rounds; in each, every configuration runs two plain and two engine steps on its own "
                        "model, the second of each pair timed")
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                        help="adamw also times the fast 'previous' Adam denominator")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-steps", type=int, default=10,
                        help="steps each peak-memory subprocess trains (its peak grows over many steps)")
    parser.add_argument("--memory-repeats", type=int, default=1,
                        help="fresh processes per configuration and allocator; the median peak is reported (a "
                        "process's peak under glibc's default heap varies by ~100 MB from one process to the next)")
    parser.add_argument("--time-repeats", type=int, default=1,
                        help="fresh processes that each time every configuration (--reps rounds); the median of "
                        "their ratios is reported, every process's in time_ratio_samples (a process's plain step "
                        "can run 20%% faster or slower than the next process's)")
    parser.add_argument("--no-torch-func", action="store_true", help="skip the torch.func baseline")
    parser.add_argument("--live-memory", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure each peak with glibc's mmap threshold fixed at 1 MiB (live memory; "
                        "default: yes, except with --quick, which stays under a minute)")
    parser.add_argument("--no-thp", action="store_true",
                        help="run without transparent huge pages for torch's CPU tensors (THP_MEM_ALLOC_ENABLE)")
    parser.add_argument("--release-memory", action="store_true",
                        help="EngineConfig(release_memory=True): return freed heap memory before each engine step")
    parser.add_argument("--keep-rows-mb", type=float, default=None,
                        help="EngineConfig.keep_rows_mb: cap on per-row blocks kept from backward (memory vs time)")
    parser.add_argument("--weight-gradients", choices=["auto", "per_row", "matmul"], default=None,
                        help="EngineConfig.weight_gradients for every engine configuration (auto: matmul for SGD, "
                        "per_row for AdamW); SGD with second order or many targets is faster with per_row")
    parser.add_argument("--modes", default=None,
                        help="comma-separated configurations to time (plain is always timed), e.g. "
                        "first_order,first_order_clipped; default: all")
    args = parser.parse_args()
    if args.memory_repeats < 1:  # checked before the timed steps, not after them
        parser.error("--memory-repeats must be >= 1")
    if args.time_repeats < 1:
        parser.error("--time-repeats must be >= 1")
    if args.release_memory:
        os.environ[RELEASE_MEMORY_ENV] = "1"
    if args.keep_rows_mb is not None:
        os.environ[KEEP_ROWS_ENV] = str(args.keep_rows_mb)
    if args.weight_gradients is not None:
        os.environ[WEIGHT_GRADIENTS_ENV] = args.weight_gradients
    size_name = "quick" if args.quick else "full"
    size = SIZES[size_name]
    reps = args.reps or (5 if args.quick else 3)
    modes = ["plain", "first_order", "second_order", "targets16"]
    if args.optimizer == "adamw":  # the fast mode: Adam's denominator held at v_{t-1} (DESIGN.md)
        modes += ["first_order_previous", "second_order_previous", "targets16_previous", "first_order_clipped"]
    modes += ["no_targets"]  # what forming the batch gradient the engine's way costs, with nothing valued
    modes += [] if args.no_torch_func else ["torch_func"]
    issue_modes = [m for m in modes if m in ("plain", "first_order", "second_order", "targets16", "torch_func")]
    if args.modes:
        chosen = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = sorted(set(chosen) - set(modes))
        if unknown:
            parser.error(f"--modes: unknown configuration(s) {unknown} for --optimizer {args.optimizer}; "
                         f"choose from {modes}")
        modes = ["plain"] + [m for m in modes if m in chosen and m != "plain"]
        if len(modes) == 1:
            parser.error("--modes: choose at least one configuration besides plain (each configuration's plain "
                         "baseline is timed with it)")
    elif args.quick:  # under a minute: the issue's configurations (the others with --modes)
        modes = issue_modes
    measure_live = args.live_memory if args.live_memory is not None else not args.quick
    if args.time_repeats == 1:
        runs = [timed_run(size_name, modes, args.optimizer, reps)]
    else:
        runs = [timed_run_in_child(size_name, modes, args.optimizer, reps) for _ in range(args.time_repeats)]
    configurations = [mode for mode in modes if mode != "plain"]
    times = {mode: [t for run in runs for t in run["times"][mode]] for mode in configurations}
    plain_times = {mode: [t for run in runs for t in run["plain_times"][mode]] for mode in configurations}
    times["plain"] = [t for mode in configurations for t in plain_times[mode]]  # every model's plain steps
    after_other = {mode: [t for run in runs for t in run["times_after_other"][mode]] for mode in configurations}
    after_other["plain"] = [t for run in runs for v in run["plain_times_after_other"].values() for t in v]
    median = {mode: statistics.median(t) for mode, t in times.items()}
    ratio_samples = process_ratios(runs, "times", "plain_times")
    ratio = {mode: statistics.median(v) for mode, v in ratio_samples.items()}
    ratio["plain"] = 1.0
    ratio_after_other = {mode: statistics.median(v) for mode, v in
                         process_ratios(runs, "times_after_other", "plain_times_after_other").items()}
    spread = {mode: pair_ratio_quartiles(times[mode], plain_times[mode]) for mode in configurations}
    plain_by_configuration = {mode: round(statistics.median(v), 4) for mode, v in plain_times.items()}
    routes, routes16, last_routes = runs[0]["routes"], runs[0]["routes16"], runs[0]["last_routes"]
    memory, growth, live = {}, {}, {}
    samples: dict[str, dict[str, list[float]]] = {"peak": {}, "live": {}}
    if not args.no_memory:
        for _ in range(args.memory_repeats):  # configurations alternate, so a slow spell hits each alike
            for mode in modes:
                peak, base = peak_memory_mb(size_name, mode, args.optimizer, steps=args.memory_steps)
                samples["peak"].setdefault(mode, []).append(peak)
                growth.setdefault(mode, []).append(peak - base)
                if measure_live:
                    samples["live"].setdefault(mode, []).append(
                        peak_memory_mb(size_name, mode, args.optimizer, live=True, steps=args.memory_steps)[0])
        memory = {mode: statistics.median(v) for mode, v in samples["peak"].items()}
        live = {mode: statistics.median(v) for mode, v in samples["live"].items()}
        growth = {mode: statistics.median(v) for mode, v in growth.items()}

    def mem_ratio(table: dict, mode: str):
        return round(table[mode] / table["plain"], 4) if mode in table else None

    def time_ratio(mode: str):
        return round(ratio[mode], 4) if mode in ratio else None

    def growth_ratio(mode: str):
        return round(growth[mode] / growth["plain"], 4) if mode in growth else None

    result = {
        "first_order_ratio": time_ratio("first_order"),
        "second_order_ratio": time_ratio("second_order"),
        "targets16_ratio": time_ratio("targets16"),
        "first_order_ratio_previous": time_ratio("first_order_previous"),
        "targets16_ratio_previous": time_ratio("targets16_previous"),
        "second_order_ratio_previous": time_ratio("second_order_previous"),
        "first_order_ratio_clipped": time_ratio("first_order_clipped"),
        "torch_func_ratio": time_ratio("torch_func"),
        "no_targets_ratio": time_ratio("no_targets"),
        "peak_memory_ratio": mem_ratio(memory, "first_order"),
        "peak_memory_ratio_targets16": mem_ratio(memory, "targets16"),
        "peak_memory_ratio_second_order": mem_ratio(memory, "second_order"),
        "peak_memory_ratio_previous": mem_ratio(memory, "first_order_previous"),
        "peak_memory_ratio_second_order_previous": mem_ratio(memory, "second_order_previous"),
        "peak_memory_ratio_targets16_previous": mem_ratio(memory, "targets16_previous"),
        "peak_memory_ratio_clipped": mem_ratio(memory, "first_order_clipped"),
        "torch_func_peak_memory_ratio": mem_ratio(memory, "torch_func"),
        "live_peak_memory_ratio": mem_ratio(live, "first_order"),
        "live_peak_memory_ratio_targets16": mem_ratio(live, "targets16"),
        "live_peak_memory_ratio_second_order": mem_ratio(live, "second_order"),
        "live_peak_memory_ratio_previous": mem_ratio(live, "first_order_previous"),
        "live_torch_func_peak_memory_ratio": mem_ratio(live, "torch_func"),
        "step_memory_ratio": growth_ratio("first_order"),
        "step_memory_ratio_targets16": growth_ratio("targets16"),
        "step_memory_ratio_second_order": growth_ratio("second_order"),
        "pair_ratio_quartiles": spread,
        "time_ratios_after_other": {k: round(v, 4) for k, v in ratio_after_other.items()},
        "step_seconds_after_other": {k: round(statistics.median(v), 4) for k, v in after_other.items()},
        "time_ratio_samples": {k: [round(x, 4) for x in v] for k, v in ratio_samples.items()},
        "plain_step_seconds": round(median["plain"], 4),
        "plain_step_seconds_by_configuration": plain_by_configuration,
        "step_seconds": {k: round(v, 4) for k, v in median.items()},
        "peak_memory_mb": {k: round(v, 1) for k, v in memory.items()},
        "live_peak_memory_mb": {k: round(v, 1) for k, v in live.items()},
        "peak_memory_samples_mb": {kind: {k: [round(x, 1) for x in v] for k, v in table.items()}
                                   for kind, table in samples.items()},
        "routes_first_order": dict(routes),
        "optimizer": args.optimizer,
        "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        **memory_settings(),
        "sizes": dict(size, reps=reps, size=size_name, threads=torch.get_num_threads(),
                      memory_steps=None if args.no_memory else args.memory_steps,
                      memory_repeats=None if args.no_memory else args.memory_repeats,
                      time_repeats=args.time_repeats),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"engine benchmark ({size_name}: {size}, optimizer {args.optimizer}, weight_gradients "
          f"{memory_settings()['weight_gradients']}, {reps} rounds of two plain and two engine steps on each "
          f"configuration's own model, the second of each pair timed, medians; plain row: all models' plain steps)")
    print(f"{'configuration':<22}{'s/step':>10}{'x plain':>10}{'peak MB':>10}{'x plain':>9}{'live MB':>10}{'x plain':>9}")
    for mode in modes:
        print(
            f"{mode:<22}{median[mode]:>10.3f}{ratio[mode]:>10.3f}"
            f"{memory.get(mode, float('nan')):>10.0f}{(mem_ratio(memory, mode) or float('nan')):>9.3f}"
            f"{live.get(mode, float('nan')):>10.0f}{(mem_ratio(live, mode) or float('nan')):>9.3f}"
        )
    print("per-rep ratio quartiles (engine step / plain step of the same model and rep):",
          {mode: q for mode, q in spread.items()})
    print("x plain of the first steps of the pairs (after the other kind's steps on the same model):",
          {k: round(v, 3) for k, v in ratio_after_other.items()})
    print("peak MB = process peak RSS (glibc defaults); live MB = the same with a fixed 1 MiB mmap threshold,")
    print("so freed memory is returned at once and the peak is live memory (plain and engine alike)")
    if args.memory_repeats > 1 and not args.no_memory:
        print(f"peaks: medians of {args.memory_repeats} fresh processes each; samples (MB):",
              {kind: {k: [round(x) for x in v] for k, v in table.items()} for kind, table in samples.items()})
    if args.time_repeats > 1:
        print(f"x plain (time): median of {args.time_repeats} fresh processes' ratios (s/step: median of all their "
              "steps); each process's:",
              {k: [round(x, 3) for x in v] for k, v in ratio_samples.items()})
    print("step routes:", last_routes)
    print("per-parameter routes (first order, 1 target):")
    for name, route in routes.items():
        print(f"  {name:<45} {route:<8} (16 targets: {routes16.get(name)})")


if __name__ == "__main__":
    main()
