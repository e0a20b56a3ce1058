"""The report's charts as RGB images (matplotlib, Agg canvas, no pyplot: no global figure state).

Charts label documents by rank ("#1", "#2", ...), never by their id: ids are untrusted text and
matplotlib would read ``$...$`` in them as mathtext; the ranked table maps ranks to documents. Equal
data give equal pixels (fixed size, dpi, fonts and margins).
"""

from __future__ import annotations

import io

from PIL import Image

from provenance.report.model import ReportRow, Trajectory

LABEL_COLORS = {
    "verbatim": "#c0392b",
    "paraphrase": "#e67e22",
    "topic": "#2e86c1",
    "unrelated": "#95a5a6",
    None: "#5d6d7e",  # no evidence index
}
DPI = 130
_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _rgb(figure) -> Image.Image:
    """The figure rasterized to an opaque RGB image (no PNG round trip; no alpha, so no soft mask in the
    PDF). reportlab compresses the pixels itself, deterministically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure.patch.set_facecolor("white")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def to_png(image: Image.Image) -> bytes:
    """PNG bytes of a chart (for callers that want a file; the PDF embeds the pixels directly)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _margins(figure, height: float, *, left: float, right: float = 0.15, wspace: float = 0.2) -> None:
    """Fixed margins in inches (tight_layout measures every text and costs more than the drawing)."""
    width = figure.get_figwidth()
    figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=0.45 / height,
                           top=1 - 0.3 / height, wspace=wspace)


def share_chart(rows: tuple[ReportRow, ...]) -> Image.Image:
    """Left: each top document's value share, coloured by evidence label. Right: cumulative share by rank."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with matplotlib.rc_context(_RC):
        height = max(2.4, 0.16 * len(rows) + 1.2)
        figure = Figure(figsize=(6.8, height), dpi=DPI)
        bars, line = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
        ranks = [f"#{r.rank}" for r in rows]
        shares = [100.0 * (r.share or 0.0) for r in rows]
        colors = [LABEL_COLORS.get(r.label, LABEL_COLORS[None]) for r in rows]
        positions = list(range(len(rows)))
        bars.barh(positions, shares, color=colors)
        bars.set_yticks(positions, ranks)
        bars.invert_yaxis()
        bars.set_xlabel("value share (%)")
        bars.set_title(f"Value share of the top {len(rows)} documents")
        top = max(shares) if shares else 1.0
        bars.set_xlim(0, top * 1.22 if top > 0 else 1.0)
        for y, share in zip(positions, shares):
            bars.text(share + top * 0.01, y, f"{share:.1f}%", va="center", fontsize=6)
        used = [label for label in ("verbatim", "paraphrase", "topic", "unrelated", None)
                if any(r.label == label for r in rows)]
        bars.legend(
            handles=[Patch(color=LABEL_COLORS[u], label=u or "no evidence") for u in used],
            loc="lower right", frameon=False, title="evidence", title_fontsize=7,
        )
        cumulative = [100.0 * (r.cumulative_share or 0.0) for r in rows]
        line.plot([r.rank for r in rows], cumulative, marker="o", markersize=3, color="#34495e")
        line.set_ylim(0, 105)
        line.set_xlabel("rank")
        line.set_ylabel("cumulative share (%)")
        line.set_title("Cumulative share down the ranking")
        line.grid(True, linewidth=0.3)
        _margins(figure, height, left=0.45, wspace=0.32)
        return _rgb(figure)


def trajectory_chart(trajectories: tuple[Trajectory, ...], unit: str | None,
                     step_range: tuple[int, int] | None = None) -> Image.Image:
    """Each top document's value summed over the steps so far, one line per document, drawn from zero
    before the first step to the last recorded step."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(6.8, 2.8), dpi=DPI)
        axes = figure.subplots()
        steps = [s for t in trajectories for s in t.steps]
        first = min([*steps, *(step_range[:1] if step_range else [])], default=1)
        last = max([*steps, *(step_range[1:] if step_range else [])], default=1)
        for t in trajectories:
            xs = [first - 1, *t.steps, last]
            ys = [0.0, *t.cumulative_value, t.cumulative_value[-1] if t.cumulative_value else 0.0]
            axes.step(xs, ys, where="post", label=f"#{t.rank}", linewidth=1.2)
        axes.axhline(0.0, color="#7f8c8d", linewidth=0.6)
        axes.set_xlim(first - 1, last)
        axes.set_xlabel("training step")
        axes.set_ylabel(f"value so far\n({unit or 'nats per output token'})")
        axes.set_title("Value over training (positive = lowered this output's loss)")
        axes.grid(True, linewidth=0.3)
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="rank", title_fontsize=7)
        _margins(figure, 2.8, left=0.85, right=0.6)
        return _rgb(figure)
