"""Data curation with In-Run Data Shapley: drop the negative-valued documents, retrain, compare.

The paper's pretraining experiment at CPU scale, driven by the toolkit's own pieces:

1. Split the shipped corpus (data/demo/corpus.jsonl.xz): the demo training subset is the training corpus;
   documents outside it are held out and cut into token windows, half of the documents give the
   *validation* chunks, the other half the *test* chunks (never used for any choice).
2. Baseline: `provenance.train.train` on the training corpus, with the validation chunks registered as
   targets ``validation:<n>``, so the run's values are values on the validation loss. (The curated and
   random runs register no targets: the engine only observes, and their losses come from checkpoints.)
3. Curated: `provenance.curate.curate(--drop negative --validation)` writes the corpus without the
   documents whose mean value over the validation targets is negative; train on it.
4. Random: the same number of documents dropped uniformly at random (seeded), written by the same writer;
   train on it.

All three runs share the tokenizer (trained once on the full training corpus), the model, the schedule,
the number of steps and the seed. The validation (and test) loss of each run is evaluated from its
checkpoints every ``eval_every`` steps (forward passes only, the trainer is not modified); for the
baseline the evaluation is checked against the loss the engine itself recorded for each target
(ledger.target_loss) at the same steps. We print, for each run, the first evaluated step at which its
validation loss is <= the baseline's final validation loss (None if never), and plot the curves.

    python bench/curation.py             # table + PNG (reports/curation.png); ~15 min on 2 shared cores
    python bench/curation.py --json      # one JSON line
    python bench/curation.py --quick     # tiny sizes, seconds (smoke test)

See docs/curation.md for the settings and the measured figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from provenance.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from provenance.curate import VALIDATION_PREFIX, curate, document_values, write_subset  # noqa: E402
from provenance.data import encode_target, load_demo_corpus, save_tokenizer, train_tokenizer  # noqa: E402
from provenance.data.corpus import Corpus, build_corpus  # noqa: E402
from provenance.data.demo import demo_subset_ids  # noqa: E402
from provenance.data.corpus import RawRecord  # noqa: E402
from provenance.store.checkpoint import load_checkpoint_weights  # noqa: E402
from provenance.store.run_dir import RunDirectory  # noqa: E402
from provenance.store.tables import read_table  # noqa: E402
from provenance.train import train  # noqa: E402
from provenance.train.model import build_model  # noqa: E402
from provenance.train.targets import TargetSpec  # noqa: E402


@dataclass(frozen=True)
class Settings:
    """Sizes and hyperparameters; the three runs differ only in their corpus."""

    n_train_docs: int | None = None  # None = the whole demo subset (1,008 documents)
    n_val_chunks: int = 32  # validation targets (held-out windows)
    n_test_chunks: int = 64  # held-out windows of other documents, for evaluation only
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    context_length: int = 64
    vocab_size: int = 2048
    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 30
    eval_every: int = 10
    seed: int = 0
    threads: int = 1


FULL = Settings()
QUICK = Settings(
    n_train_docs=60, n_val_chunks=4, n_test_chunks=4, n_layer=1, n_embd=16, context_length=32,
    vocab_size=300, steps=24, batch_size=4, warmup_steps=2, eval_every=6, lr=3e-3, min_lr=3e-4,
)


@dataclass(frozen=True)
class Split:
    train: Corpus
    validation: list[TargetSpec]
    test: list[TargetSpec]


# -- data ----------------------------------------------------------------------------------------------


def split_corpus(settings: Settings) -> tuple[Corpus, list[str], list[str]]:
    """Training corpus (the demo subset, or a seeded sample of it) and the held-out texts (val, test docs)."""
    full = load_demo_corpus("full")
    train_ids = set(demo_subset_ids())
    train_docs = [d for d in full if d.doc_id in train_ids]
    rng = random.Random(settings.seed)
    if settings.n_train_docs is not None:
        train_docs = sorted(rng.sample(train_docs, settings.n_train_docs), key=lambda d: d.doc_id)
    held = [d.text for d in full if d.doc_id not in train_ids]
    rng.shuffle(held)
    half = len(held) // 2
    records = [RawRecord(d.doc_id, d.source, d.metadata, d.text) for d in train_docs]
    corpus = build_corpus(records, "data/demo/corpus.jsonl.xz (training part)", max_document_bytes=1_000_000)
    return corpus, held[:half], held[half:]


def windows(tokenizer: Tokenizer, texts: list[str], n: int, max_tokens: int, seed: int, prefix: str) -> list[TargetSpec]:
    """``n`` windows of ``max_tokens`` tokens drawn uniformly from all windows of ``texts`` (so long
    documents weigh as much as they do in training); each becomes a target (empty prompt)."""
    candidates: list[tuple[int, int, int]] = []  # (text index, first token, end token)
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    for i, enc in enumerate(encodings):
        n_tok = len(enc.ids)
        for start in range(0, n_tok - max_tokens // 2, max_tokens):  # skip tails shorter than half a window
            candidates.append((i, start, min(start + max_tokens, n_tok)))
    if len(candidates) < n:
        raise ValueError(f"only {len(candidates)} held-out windows for {n} {prefix} chunks")
    chosen = random.Random(seed).sample(candidates, n)
    out = []
    for k, (i, start, end) in enumerate(chosen):
        offsets = encodings[i].offsets
        while True:  # a slice re-encodes to about the same tokens; shrink until it fits the context
            text = texts[i][offsets[start][0] : offsets[end - 1][1]]
            if len(tokenizer.encode(text, add_special_tokens=False).ids) <= max_tokens:
                break
            end -= 1
        out.append(TargetSpec(f"{prefix}{k:03d}", "", text))
    return out


def run_config(s: Settings) -> RunConfig:
    return RunConfig(
        model=ModelConfig(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, context_length=s.context_length),
        train=TrainConfig(
            steps=s.steps, batch_size=s.batch_size, micro_batch_size=s.batch_size, lr=s.lr, min_lr=s.min_lr,
            warmup_steps=s.warmup_steps, seed=s.seed, checkpoint_every=s.eval_every,
            tokenizer_vocab_size=s.vocab_size,
        ),
    ).check()


# -- evaluation --------------------------------------------------------------------------------------


def encode(tokenizer: Tokenizer, targets: list[TargetSpec], context_length: int) -> tuple[torch.Tensor, ...]:
    rows = [encode_target(tokenizer, t.prompt, t.text, context_length, target_id=t.target_id) for t in targets]
    return tuple(torch.cat(parts) for parts in zip(*rows))


@torch.no_grad()
def mean_target_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> float:
    """Mean over the texts of each text's mean next-token loss (the unit of a target's loss)."""
    input_ids, attention_mask, labels = batch
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    gold = labels[:, 1:]
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=-100, reduction="none")
    losses = losses.view(gold.shape)
    counted = (gold != -100).sum(dim=1)
    return float((losses.sum(dim=1) / counted).mean())


def loss_curves(run: RunDirectory, settings: Settings, vocab_size: int, eos_id: int,
                batches: dict[str, tuple[torch.Tensor, ...]]) -> pd.DataFrame:
    """Losses at step 0, every checkpoint and the final step (from the checkpoints' and final weights)."""
    config = run_config(settings)
    model = build_model(config.model, vocab_size, settings.seed, eos_id)
    model.eval()
    rows = []
    for step in [*run.checkpoint_steps(), settings.steps]:
        if step == settings.steps:
            from safetensors.torch import load_file

            weights = load_file(str(run.model_dir / "model.safetensors"))
        else:
            weights = load_checkpoint_weights(run, step)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if m != "lm_head.weight"]:
            raise RuntimeError(f"weights of {run.path} step {step} do not fit: {missing[:3]} {unexpected[:3]}")
        rows.append({"step": step, **{name: mean_target_loss(model, batch) for name, batch in batches.items()}})
    return pd.DataFrame(rows)


def steps_to_reach(curve: pd.DataFrame, column: str, level: float) -> int | None:
    hit = curve[curve[column] <= level + 1e-12]
    return int(hit["step"].iloc[0]) if len(hit) else None


def ledger_check(run: RunDirectory, curve: pd.DataFrame, target_ids: list[str]) -> float:
    """Max |our validation loss after step s - the engine's mean target loss before step s+1|."""
    ledger = read_table(run.ledger_path, "ledger")
    ledger = ledger[ledger["target_id"].isin(target_ids)]
    recorded = ledger.groupby("step")["target_loss"].mean()
    diffs = [abs(row.validation - recorded[row.step + 1]) for row in curve.itertuples() if row.step + 1 in recorded.index]
    return float(max(diffs)) if diffs else float("nan")


# -- the experiment ------------------------------------------------------------------------------------


def evaluate(settings: Settings, plot_path: Path, workdir: Path, progress: bool = True) -> dict:
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    corpus, val_texts, test_texts = split_corpus(settings)
    tokenizer = train_tokenizer(corpus, settings.vocab_size)
    tokenizer_path = save_tokenizer(tokenizer, workdir / "tokenizer.json")
    body = settings.context_length - 1  # the start token takes one position
    validation = windows(tokenizer, val_texts, settings.n_val_chunks, body, settings.seed, VALIDATION_PREFIX)
    test = windows(tokenizer, test_texts, settings.n_test_chunks, body, settings.seed + 1, "test:")
    config = run_config(settings)
    batches = {"validation": encode(tokenizer, validation, settings.context_length),
               "test": encode(tokenizer, test, settings.context_length)}
    eos_id = tokenizer.token_to_id("<|endoftext|>")
    vocab_size = tokenizer.get_vocab_size()

    def train_and_eval(name: str, source: Corpus | Path, targets: list[TargetSpec]) -> tuple[RunDirectory, pd.DataFrame]:
        t0 = time.perf_counter()
        run = train(source, workdir / "runs" / name, config, targets=targets, tokenizer=tokenizer_path,
                    threads=settings.threads, progress=progress)
        curve = loss_curves(run, settings, vocab_size, eos_id, batches)
        timings[name] = round(time.perf_counter() - t0, 1)
        return run, curve

    timings: dict[str, float] = {}
    base_run, base = train_and_eval("baseline", corpus, validation)
    ledger_diff = ledger_check(base_run, base, [t.target_id for t in validation])

    curated = curate(base_run.path, "negative", workdir / "curated.jsonl", validation=True)
    values = document_values(base_run.path, [t.target_id for t in validation])
    rng = np.random.default_rng(settings.seed + 2)
    random_ids = set(rng.choice(values["doc_id"].to_numpy(), size=curated.n_dropped, replace=False).tolist())
    ordered = values.sort_values(["value", "doc_id"], kind="mergesort").reset_index(drop=True)
    ordered["rank_from_bottom"] = np.arange(1, len(ordered) + 1, dtype=np.int64)  # as curate ranks them
    random_drop = ordered[ordered["doc_id"].isin(random_ids)].reset_index(drop=True)
    random_path, _, random_summary = write_subset(
        base_run.path, random_drop, workdir / "random.jsonl",
        {"rule": "random", "seed": settings.seed + 2, "n": curated.n_dropped},
    )
    # No targets in these two runs: the engine only observes, so their trajectories are what they would
    # be with targets, and their losses come from the checkpoints exactly as the baseline's do.
    _, cur = train_and_eval("curated", curated.corpus_path, [])
    _, rnd = train_and_eval("random", random_path, [])
    random_info = json.loads(random_summary.read_text(encoding="utf-8"))

    level = float(base["validation"].iloc[-1])
    test_level = float(base["test"].iloc[-1])
    result = {
        "steps_baseline": steps_to_reach(base, "validation", level),
        "steps_curated": steps_to_reach(cur, "validation", level),
        "steps_random": steps_to_reach(rnd, "validation", level),
        "baseline_final_validation_loss": level,
        "final_validation_loss": {"baseline": level, "curated": float(cur["validation"].iloc[-1]),
                                  "random": float(rnd["validation"].iloc[-1])},
        "test_steps_to_baseline_final": {
            "baseline": steps_to_reach(base, "test", test_level),
            "curated": steps_to_reach(cur, "test", test_level),
            "random": steps_to_reach(rnd, "test", test_level),
        },
        "final_test_loss": {"baseline": test_level, "curated": float(cur["test"].iloc[-1]),
                            "random": float(rnd["test"].iloc[-1])},
        "n_train_documents": len(corpus),
        "n_train_chunks": int(pd.read_parquet(base_run.chunks_path).shape[0]),
        "n_train_tokens": int(values["n_tokens"].sum()),
        "n_dropped": curated.n_dropped,
        "dropped_share": curated.n_dropped / len(corpus),
        "tokens_dropped_curated": curated.tokens_dropped,
        "tokens_dropped_random": random_info["tokens_dropped"],
        "dropped_sources_curated": _source_counts(curated.dropped),
        "dropped_sources_random": _source_counts(random_drop),
        "n_val_chunks": len(validation),
        "n_test_chunks": len(test),
        "eval_every": settings.eval_every,
        "eval_vs_ledger_max_abs_diff": ledger_diff,
        "curves": {
            "step": base["step"].tolist(),
            **{f"validation_{n}": c["validation"].round(5).tolist() for n, c in
               (("baseline", base), ("curated", cur), ("random", rnd))},
            **{f"test_{n}": c["test"].round(5).tolist() for n, c in (("baseline", base), ("curated", cur), ("random", rnd))},
        },
        "wall_seconds": {**timings, "total": round(time.perf_counter() - started, 1)},
        "settings": asdict(settings),
    }
    result["plot_path"] = str(plot(result, plot_path))
    return result


def _source_counts(frame: pd.DataFrame) -> dict[str, int]:
    kinds = frame["source"].map(lambda s: "bible" if s == "World English Bible" else "fortune")
    return {k: int(v) for k, v in kinds.value_counts().sort_index().items()}


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["curves"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"baseline": "#444444", "curated": "#1f77b4", "random": "#d62728"}
    labels = {
        "baseline": "baseline (full corpus)",
        "curated": f"curated: {result['n_dropped']} negative-valued docs dropped",
        "random": f"random: {result['n_dropped']} random docs dropped",
    }
    for ax, kind in zip(axes, ("validation", "test")):
        for name in ("baseline", "curated", "random"):
            ax.plot(curves["step"], curves[f"{kind}_{name}"], color=colors[name], label=labels[name], lw=1.4)
        level = result["final_validation_loss"]["baseline"] if kind == "validation" else result["final_test_loss"]["baseline"]
        ax.axhline(level, color="#888888", ls="--", lw=0.8, label="baseline's final loss")
        lows = [min(curves[f"{kind}_{n}"]) for n in colors]
        ax.set_ylim(min(lows) - 0.05, min(lows) + 1.5)  # the late part, where the runs differ
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{kind} loss (nats per token)")
        ax.set_title(f"{kind} loss" + (" (values were computed on it)" if kind == "validation" else " (never used)"))
        ax.grid(alpha=0.3)
    reach = ", ".join(f"{n} {_steps(result['steps_' + n])}" for n in ("baseline", "curated", "random"))
    fig.suptitle(f"In-Run Data Shapley curation: steps to reach the baseline's final validation loss: {reach}",
                 fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from provenance.store import atomic

    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def _steps(value: int | None) -> str:
    return "never" if value is None else str(value)


def print_table(r: dict) -> None:
    s = r["settings"]
    rows = [
        ("training corpus", f"{r['n_train_documents']} documents, {r['n_train_chunks']} chunks, {r['n_train_tokens']} tokens"),
        ("model / schedule", f"GPT-2 {s['n_layer']} layers, width {s['n_embd']}, context {s['context_length']}, "
                             f"vocab {s['vocab_size']}; {s['steps']} steps of {s['batch_size']}, lr {s['lr']}"),
        ("validation / test", f"{r['n_val_chunks']} / {r['n_test_chunks']} held-out windows; eval every {r['eval_every']} steps"),
        ("dropped (curated)", f"{r['n_dropped']} docs ({r['dropped_share']:.1%}), {r['tokens_dropped_curated']} tokens, "
                              f"{r['dropped_sources_curated']}"),
        ("dropped (random)", f"{r['n_dropped']} docs, {r['tokens_dropped_random']} tokens, {r['dropped_sources_random']}"),
        ("baseline final validation loss", f"{r['baseline_final_validation_loss']:.4f}"),
        ("steps to reach it: baseline", _steps(r["steps_baseline"])),
        ("steps to reach it: curated", _steps(r["steps_curated"])),
        ("steps to reach it: random", _steps(r["steps_random"])),
        ("final validation loss b / c / r", " / ".join(f"{r['final_validation_loss'][n]:.4f}" for n in ("baseline", "curated", "random"))),
        ("final test loss b / c / r", " / ".join(f"{r['final_test_loss'][n]:.4f}" for n in ("baseline", "curated", "random"))),
        ("test: steps to baseline's final b / c / r",
         " / ".join(_steps(r["test_steps_to_baseline_final"][n]) for n in ("baseline", "curated", "random"))),
        ("eval vs engine's ledger (max abs diff)", f"{r['eval_vs_ledger_max_abs_diff']:.2e}"),
        ("plot", r["plot_path"]),
        ("wall seconds", str(r["wall_seconds"])),
    ]
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for smoke tests")
    parser.add_argument("--out", type=Path, default=None, help="PNG path [reports/curation.png, quick: reports/curation_quick.png]")
    parser.add_argument("--keep", type=Path, default=None, help="keep the three run directories in this (new) folder")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    out = args.out or Path("reports") / ("curation_quick.png" if args.quick else "curation.png")
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep} exists; give a new folder")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="provenance-curation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = evaluate(settings, out, workdir, progress=not args.json)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
