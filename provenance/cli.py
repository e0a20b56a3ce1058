"""The `provenance` command line: a thin shell over the library (every command has --help).

Commands only parse options, call library functions and turn domain errors (provenance.errors) into a
one-line message and exit code 1; no attribution logic lives here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Transparent huge pages for PyTorch's CPU tensors (torch reads this once, at its first allocation, so it
# is set before anything imports torch). The engine allocates hundreds of MB of per-row blocks and target
# directions every step; with 4 KiB pages their page faults cost more than the arithmetic they hold
# (bench/engine.py, first order: 1.20 -> 1.07 x plain training, which runs with it too, in one pair of runs;
# 1.07-1.19 over three). The numbers are unchanged (checked bitwise); THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from provenance.errors import ProvenanceError, VerificationError  # noqa: E402

DEFAULT_RUNS_DIR = Path("attribution_runs")

app = typer.Typer(
    help="In-Run Data Shapley for language models: which training documents produced this output?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def resolve_run(run: str) -> Path:
    """A run is a path, or a bare id under ./attribution_runs/."""
    path = Path(run)
    if path.exists() or os.sep in run or "/" in run:
        return path
    return DEFAULT_RUNS_DIR / run


@contextlib.contextmanager
def domain_errors() -> Iterator[None]:
    try:
        yield
    except ProvenanceError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


@app.command()
def train(
    run: str = typer.Option(..., "--run", help="Run directory (path, or an id under ./attribution_runs/)."),
    corpus: Optional[Path] = typer.Option(
        None, "--corpus", help="Folder of .txt/.md, a .jsonl, a .parquet or an HF dataset folder."
    ),
    targets: Optional[Path] = typer.Option(
        None, "--targets", help="JSONL of {id, prompt, text} registered before training."
    ),
    tokenizer: Optional[Path] = typer.Option(
        None, "--tokenizer", help="Use this tokenizer.json instead of training a BPE on the corpus."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its latest checkpoint."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps [default 300]."),
    batch_size: Optional[int] = typer.Option(None, help="Chunks per optimizer step [default 16]."),
    micro_batch_size: Optional[int] = typer.Option(None, help="Rows per forward pass [default 16]."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default 6e-4]."),
    min_lr: Optional[float] = typer.Option(None, help="Final learning rate of the cosine decay [default 6e-5]."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear warmup steps [default 20]."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay on matrices [default 0.1]."),
    max_grad_norm: Optional[float] = typer.Option(None, help="Gradient clipping norm, 0 = off [default 1.0]."),
    seed: Optional[int] = typer.Option(None, help="Seed of the init and the data order [default 0]."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps [default 100]."),
    vocab_size: Optional[int] = typer.Option(None, help="BPE vocabulary when training a tokenizer [default 4096]."),
    n_layer: Optional[int] = typer.Option(None, help="Transformer blocks [default 4]."),
    n_head: Optional[int] = typer.Option(None, help="Attention heads [default 4]."),
    n_embd: Optional[int] = typer.Option(None, help="Model width [default 128]."),
    context_length: Optional[int] = typer.Option(None, help="Tokens per sequence / chunk [default 128]."),
    order: Optional[int] = typer.Option(None, help="1 = first-order values, 2 = with the Hessian term [default 1]."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (recorded; replay uses the same) [default: torch's]."),
    keep_rows_mb: Optional[float] = typer.Option(
        None, help="MB of per-row gradients kept from backward (recorded). Lower it when memory, not time, is "
        "the limit: 256 kept peak memory under 1.3x plain training at the benchmark size for 4-14% slower "
        "steps (docs/engine.md) [default 4096]."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    sketch: bool = typer.Option(
        False, "--sketch", help="Also store projected-gradient sketches for fast approximate queries "
        "(`provenance approximate`; docs/posthoc.md)."),
    sketch_every: Optional[int] = typer.Option(
        None, help="Steps per sketch segment; must divide --checkpoint-every [default 50]."),
    sketch_k: Optional[int] = typer.Option(
        None, help="Sketch size per matrix side (k_out = k_in) [default 32]; storage grows with its square."),
    sketch_projection: str = typer.Option(
        "gaussian", help="'gaussian' (fixed random) or 'pca' (calibrated on the first segment; far more "
        "accurate, docs/posthoc.md)."),
    sketch_skip_embeddings: bool = typer.Option(
        False, "--sketch-skip-embeddings", help="Leave embedding tables (and a head tied to them) out of the "
        "sketches: smaller rows, faster queries, measured more accurate on the demo run (docs/posthoc.md)."),
) -> None:
    """Pretrain a GPT-2 from scratch with the attribution engine attached; write the run directory."""
    from provenance.config import AttributionConfig, ModelConfig, RunConfig, SketchConfig, TrainConfig
    from provenance.train import read_targets_jsonl
    from provenance.train import resume as resume_run
    from provenance.train import train as train_run

    model_over = {k: v for k, v in dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                         context_length=context_length).items() if v is not None}
    train_over = {k: v for k, v in dict(
        steps=steps, batch_size=batch_size, micro_batch_size=micro_batch_size, lr=lr, min_lr=min_lr,
        warmup_steps=warmup_steps, weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed,
        checkpoint_every=checkpoint_every, tokenizer_vocab_size=vocab_size).items() if v is not None}
    attr_over = {k: v for k, v in dict(order=order, keep_rows_mb=keep_rows_mb).items() if v is not None}
    path = resolve_run(run)
    with domain_errors():
        if resume:
            if corpus or targets or tokenizer or threads:
                raise ProvenanceError(
                    "--resume reads the corpus, targets, tokenizer and thread count from the run directory; "
                    "drop --corpus/--targets/--tokenizer/--threads"
                )
            config = None
            if model_over or train_over or attr_over:
                from provenance.store.run_dir import RunDirectory

                manifest = RunDirectory.open(path, require_complete=False).read_manifest()
                recorded = RunConfig.from_json({k: v for k, v in manifest["config"].items() if k != "engine"})
                config = RunConfig(
                    model=replace(recorded.model, **model_over),
                    train=replace(recorded.train, **train_over),
                    attribution=replace(recorded.attribution, **attr_over),
                    sketch=recorded.sketch,
                )
            result = resume_run(path, config, progress=not quiet)
        else:
            if corpus is None:
                raise ProvenanceError("--corpus is required for a new run (or pass --resume)")
            small = RunConfig()
            if batch_size is not None and micro_batch_size is None:
                train_over["micro_batch_size"] = min(batch_size, small.train.micro_batch_size)
                if batch_size % train_over["micro_batch_size"]:
                    train_over["micro_batch_size"] = batch_size
            config = RunConfig(
                model=ModelConfig(**model_over),
                train=TrainConfig(**train_over),
                attribution=AttributionConfig(**attr_over),
                sketch=SketchConfig(
                    enabled=sketch,
                    projection=sketch_projection,
                    skip_embeddings=sketch_skip_embeddings,
                    **({"every": sketch_every} if sketch_every else {}),
                    **({"k_out": sketch_k, "k_in": sketch_k} if sketch_k else {}),
                ),
            )
            target_list = read_targets_jsonl(targets) if targets else []
            result = train_run(corpus, path, config, targets=target_list, tokenizer=tokenizer,
                               threads=threads, progress=not quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns here; rank 0 wrote the run
        typer.echo(f"run complete: {result.path}")


@app.command()
def generate(
    run: str = typer.Option(..., "--run", help="Run directory (path or id)."),
    prompt: str = typer.Option(..., "--prompt", help="Text the model continues."),
    max_new_tokens: int = typer.Option(48, help="Tokens to sample at most."),
    temperature: float = typer.Option(0.8, help="Sampling temperature (0 = greedy)."),
    top_k: int = typer.Option(40, help="Sample among the k most likely tokens (0 = all)."),
    seed: int = typer.Option(0, help="Sampling seed (same seed, same output)."),
    save: Optional[Path] = typer.Option(
        None, "--save", help="Append {id, prompt, text} to this JSONL (for a later `attribute --targets`)."
    ),
    register: Optional[str] = typer.Option(
        None, "--register", help="Attribute the output now under this target id (replays the run)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Sample from the trained model; optionally save or attribute the output."""
    from provenance.train import SamplingConfig, TargetSpec, attribute
    from provenance.train import generate as generate_text

    path = resolve_run(run)
    with domain_errors():
        text = generate_text(path, prompt, SamplingConfig(max_new_tokens, temperature, top_k, seed))
        typer.echo(text)
        target_id = register or f"generated-{seed}"
        if save is not None:
            with open(save, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"id": target_id, "prompt": prompt, "text": text}, ensure_ascii=False) + "\n")
            typer.echo(f"saved as target {target_id!r} in {save}", err=True)
        if register is not None:
            values = attribute(path, [TargetSpec(register, prompt, text)], progress=not quiet)
            _print_top(values, register, 5)


@app.command()
def attribute(
    run: str = typer.Option(..., "--run", help="Run directory (path or id)."),
    targets: Path = typer.Option(..., "--targets", help="JSONL of {id, prompt, text}: outputs to attribute."),
    top: int = typer.Option(5, help="Documents to print per target."),
    workers: int = typer.Option(
        1, "--workers", help="Replay the checkpoint segments in this many processes at once (1 = in this one; under torchrun the ranks are the workers)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Replay the recorded run with new targets (loss checked at every step) and write their values."""
    from provenance.train import attribute as attribute_run
    from provenance.train import read_targets_jsonl

    path = resolve_run(run)
    with domain_errors():
        specs = read_targets_jsonl(targets)
        values = attribute_run(path, specs, workers=workers, progress=not quiet)
        if values is None:  # a torchrun rank other than 0: rank 0 wrote and prints the values
            return
        for spec in specs:
            _print_top(values, spec.target_id, top)


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def approximate(
    run: str = typer.Option(..., "--run", help="Run directory (path or id) trained with --sketch."),
    text: str = typer.Option(..., "--text", help="The output text to value (only its tokens carry loss)."),
    prompt: str = typer.Option("", "--prompt", help="The prompt that produced it (no loss)."),
    top: int = typer.Option(10, help="Rows to show (0 = all)."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv or json."),
) -> None:
    """Approximate values of a new output in seconds, from sketches stored during training (no replay)."""
    from provenance.sketch.query import APPROXIMATE_LABEL, ApproximateQuery
    from provenance.train.targets import TargetSpec

    with domain_errors():
        query = ApproximateQuery(resolve_run(run))
        frame = query.values([TargetSpec("approximate-query", prompt, text)])
    shown = frame.head(top) if top > 0 else frame
    if fmt is OutputFormat.json:
        typer.echo(json.dumps({"label": APPROXIMATE_LABEL, "seconds": round(query.timings.seconds_total, 3),
                               "rows": shown.drop(columns=["target_id"]).to_dict(orient="records")}))
    elif fmt is OutputFormat.csv:
        typer.echo(shown.drop(columns=["target_id"]).to_csv(index=False), nl=False)
    else:
        typer.echo(f"APPROXIMATE values ({APPROXIMATE_LABEL})")
        for row in shown.itertuples(index=False):
            typer.echo(f"  {row.rank:>4}  {row.doc_id:<40}  value ~{row.value:+.4e}  share ~{row.share:6.1%}")
        typer.echo(f"value = approximate decrease of the output's loss (nats per output token) caused by the "
                   f"document; {query.timings.seconds_total:.2f} s")


@app.command()
def values(
    run: str = typer.Option(..., "--run", help="Run directory (path or id)."),
    target: Optional[str] = typer.Option(None, "--target", help="Target id (default: list the targets)."),
    top: int = typer.Option(10, help="Rows to show (0 = all)."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv or json."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to this file instead of stdout."),
) -> None:
    """Print or export the top documents for a target (value, share, cumulative share)."""
    from provenance.store.query import list_targets, top_values

    path = resolve_run(run)
    with domain_errors():
        if target is None:
            typer.echo(list_targets(path).to_string(index=False))
            return
        frame = top_values(path, target, top or None)
        if fmt is OutputFormat.csv:
            text = frame.to_csv(index=False)
        elif fmt is OutputFormat.json:
            text = json.dumps({"target_id": target, "rows": frame.to_dict(orient="records")}, indent=2) + "\n"
        else:
            from provenance.evidence.schema import SHARE_DEFINITION, VALUE_DEFINITION

            text = frame.to_string(index=False) + f"\n\n{VALUE_DEFINITION}\n{SHARE_DEFINITION}\n"
        if out is not None:
            from provenance.store import atomic

            atomic.write_text(out, text)
            typer.echo(f"wrote {out}", err=True)
        else:
            typer.echo(text, nl=False)


@app.command()
def verify(
    run: str = typer.Option(..., "--run", help="Run directory (path or id)."),
    sample_steps: int = typer.Option(2, help="Steps whose values are re-derived by brute force (0 = hashes only)."),
    steps: Optional[str] = typer.Option(None, help="Comma-separated steps to re-derive instead of a sample."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Recompute every hash (documents, tokenizer, weights, tables) and re-derive sampled steps' values."""
    from provenance.train.verify import verify_run

    path = resolve_run(run)
    chosen = [int(s) for s in steps.split(",") if s.strip()] if steps else None
    try:
        report = verify_run(path, sample_steps=sample_steps, steps=chosen, progress=not quiet)
    except VerificationError as exc:
        typer.secho(f"verify FAILED: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except ProvenanceError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(report.summary())


@app.command()
def demo(
    runs_dir: Path = typer.Option(DEFAULT_RUNS_DIR, help="Where the demo run directory is written."),
    threads: int = typer.Option(1, help="CPU threads (1: small matrices, immune to oversubscription)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Shipped corpus -> tokenizer -> train a small GPT-2 on CPU -> values of the planted targets."""
    from provenance.train.demo import run_demo

    with domain_errors():
        run_demo(runs_dir, progress=not quiet, echo=typer.echo, threads=threads)


@app.command()
def curate(
    run: str = typer.Option(..., "--run", help="Run directory (path or id) whose values rank the documents."),
    drop: str = typer.Option(..., "--drop", help="'negative' (value < 0) or 'bottom-FRACTION' (e.g. bottom-0.16)."),
    out: Path = typer.Option(..., "--out", help="Curated corpus to write (.jsonl); the dropped list goes next to it."),
    target: Optional[list[str]] = typer.Option(
        None, "--target", help="Rank by these targets' values (repeatable; mean over them)."
    ),
    validation: bool = typer.Option(
        False, "--validation", help="Rank by the mean value over the run's 'validation:' targets (the default)."
    ),
) -> None:
    """Write a corpus without the documents that worked against the targets (for a new `train`)."""
    from provenance.curate import curate as curate_corpus

    path = resolve_run(run)
    with domain_errors():
        result = curate_corpus(path, drop, out, targets=target or None, validation=validation)
    typer.echo(result.summary())


def _print_top(values, target_id: str, top: int) -> None:
    rows = values[values["target_id"] == target_id].sort_values("rank").head(top)
    typer.echo(f"\ntarget {target_id}: top {len(rows)} documents (value in nats per output token)")
    for row in rows.itertuples(index=False):
        typer.echo(f"  {row.rank:>4}  {row.doc_id:<40}  value {row.value:+.4e}  share {row.share:6.1%}")


def _register_other_commands() -> None:
    """Commands owned by other subpackages (evidence: `index`, `query`; report: `report`) plug in here."""
    from provenance.evidence.commands import register as register_evidence
    from provenance.report.commands import register as register_report

    register_evidence(app)
    register_report(app)


_register_other_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
