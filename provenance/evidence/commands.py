"""CLI commands `index` and `query` (thin shells; provenance/cli.py calls ``register(app)``)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer


class QueryOrder(str, Enum):
    value = "value"
    combined = "combined"


class QueryFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def register(app: typer.Typer) -> None:
    """Add `index` and `query` to the provenance command line."""
    app.command("index")(index)
    app.command("query")(query)


def _shell():
    # Imported when a command runs: provenance.cli imports this module to call register().
    from provenance.cli import domain_errors, resolve_run

    return domain_errors, resolve_run


def index(
    run: str = typer.Option(..., "--run", help="Run directory (path, or an id under ./attribution_runs/)."),
    embedder: Optional[Path] = typer.Option(
        None, "--embedder", help="Local sentence-transformers model folder (default: bundled all-MiniLM-L6-v2)."
    ),
    approximate: bool = typer.Option(
        False, "--approximate", help="HNSW instead of exact search (large corpora); prints recall@10 vs exact."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Passages per embedding batch."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the index is up to date."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Cut the corpus into passages, embed them and build the evidence index (resumable)."""
    from provenance.evidence.index import build_index

    domain_errors, resolve_run = _shell()
    with domain_errors():
        info = build_index(
            resolve_run(run), embedder=embedder, approximate=approximate, batch_size=batch_size,
            progress=not quiet, force=force, echo=typer.echo,
        )
    recall = "" if info.recall_at_10 is None else f", recall@10 vs exact {info.recall_at_10:.4f}"
    typer.echo(
        f"index: {info.n_passages} passages of {info.n_documents} documents, {info.index_type}{recall}, "
        f"embedder {info.embedder} ({info.embedder_sha256[:12]}), {info.seconds:.1f} s -> {info.path}"
    )


def query(
    run: str = typer.Option(..., "--run", help="Run directory (path or id)."),
    text: Optional[str] = typer.Option(None, "--text", help="The output text to explain."),
    text_file: Optional[Path] = typer.Option(None, "--text-file", help="Read the output text from a file."),
    target_id: Optional[str] = typer.Option(None, "--target-id", help="A registered target's id."),
    top: int = typer.Option(20, "--top", min=1, help="Documents to list."),
    fmt: QueryFormat = typer.Option(QueryFormat.table, "--format", help="table, csv or json."),
    align: int = typer.Option(1, "--align", min=0, help="Top rows that get sentence-by-sentence alignment (costs embedder time)."),
    order: QueryOrder = typer.Option(
        QueryOrder.value, "--order",
        help="Attributed targets: 'value' (raw value) or 'combined' (largely copied documents first, then "
        "BM25 + evidence score + target-specific value; needs >= 20 other attributed targets).",
    ),
    approximate: bool = typer.Option(
        False, "--approximate", help="A text without exact values: rank by values estimated in seconds from the "
        "gradient sketches the run stored while training (train --sketch), marked approximate.",
    ),
) -> None:
    """Which training documents produced this output: value, share and evidence per document."""
    from provenance.errors import TargetError
    from provenance.evidence import render
    from provenance.evidence.index import load_index
    from provenance.evidence.answer import query as run_query

    domain_errors, resolve_run = _shell()
    with domain_errors():
        if text_file is not None:
            if text is not None:
                raise TargetError("pass either --text or --text-file, not both")
            try:
                text = text_file.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise TargetError(f"cannot read --text-file {text_file}: {exc}") from exc
        path = resolve_run(run)
        loaded = load_index(path)
        result = run_query(path, text=text, target_id=target_id, top_k=top, index=loaded, align_top=align,
                           order=order.value, approximate=approximate)
    if fmt is QueryFormat.json:
        typer.echo(render.to_json(result))
    elif fmt is QueryFormat.csv:
        typer.echo(render.to_csv(result), nl=False)
        typer.echo(f"query time {result.latency_seconds * 1000:.0f} ms (index loaded)", err=True)
    else:
        typer.echo(render.to_table(result))
