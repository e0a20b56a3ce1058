"""The method section in plain language, with this output's own ledger numbers filled in.

Returns (heading, markup) pairs; the markup holds only text written here and numbers, never run text.
"""

from __future__ import annotations

from provenance.report.layout import fmt_share
from provenance.report.model import ReportData


def method_paragraphs(data: ReportData) -> list[tuple[str | None, str]]:
    order = data.run.value_order
    out: list[tuple[str | None, str]] = [
        ("What the values measure", (
            "The values come from <b>In-Run Data Shapley</b> (Wang, Mittal, Song and Jia, ICLR 2025). While the "
            "model was being trained, at every optimizer step, an attribution engine measured for each training "
            "document in that step's batch how much its part of the update lowered (or raised) the loss of this "
            "output: the model's loss on the output's tokens, given its prompt, in nats per output token. A "
            "document's <b>value</b> is the sum of those per-step contributions over the whole run and over all "
            "chunks of the document. Within a step the contributions are Shapley values of the step's effect on "
            "the output, so the documents of a batch split that effect between them exactly: nothing is counted "
            "twice and nothing is left out. A positive value means the document made this output more likely; a "
            "negative value means it worked against it."
        )),
        ("First and second order", (
            "<b>First order</b> treats each step as a straight move: a document's contribution is the step size "
            "times the dot product of the document's gradient with the output's gradient (for AdamW, with Adam's "
            "per-parameter scaling held at its value from before the step). <b>Second order</b> adds the curvature "
            "of the output's loss, which accounts for how the documents of one batch interact; it costs about twice "
            "as much. "
            + (f"This run recorded <b>order {order}</b> values." if order in (1, 2) else
               "The run does not record which order it used.")
        )),
    ]
    out.append(("The ledger: how much the values explain", _ledger_text(data)))
    out.append(("Limits of the method", (
        "The values describe <b>this</b> training run (its data order, seed, schedule and model), not what a "
        "different run would have learned. A high value is not by itself proof of copying: the evidence labels "
        "(verbatim, paraphrase, topic) are a separate, text-based check, shown next to each value, and they can "
        "disagree with it. Documents that were not in the training corpus cannot appear. A small or negative "
        "value does not prove a document was irrelevant: its effect may have been undone by later steps, or be "
        "spread over many similar documents. Under AdamW the values linearize each update with Adam's state "
        "frozen; the part of the update that no document of the batch owns (momentum from earlier batches, weight "
        "decay) is not given to any document and appears in the ledger instead. Shares are computed over the "
        "positive values only. Evidence labels come from thresholds calibrated on paraphrase pairs, with "
        "measured but imperfect precision and recall (docs/evidence.md)."
    )))
    return out


def _ledger_text(data: ReportData) -> str:
    intro = (
        "The run also recorded this output's loss before every training step. The measured fall of that loss from "
        "the first to the last recorded step is set against the sum of all documents' values (<i>attributed</i>) "
        "and the part of each update no document owns (<i>history</i>: momentum carried from earlier batches, "
        "weight decay). <b>Explained share</b> = attributed / measured decrease. Near 100% the values account "
        "for the change; far from it, the approximation or the history term matters, and the remainder is "
        "reported here, not hidden. "
    )
    ledger = data.ledger
    if ledger is None:
        return intro + "This output has no ledger in the run (it is not attributed, or fewer than two steps were recorded)."
    residual = ledger.measured_decrease - ledger.attributed_total - ledger.history_total
    numbers = (
        f"For this output: loss {ledger.initial_loss:.4f} \u2192 {ledger.final_loss:.4f} nats per token, a measured "
        f"decrease of {ledger.measured_decrease:+.4f}; attributed to documents {ledger.attributed_total:+.4f}; "
        f"history {ledger.history_total:+.4f}; remainder (higher-order effects) {residual:+.4f}. "
    )
    if ledger.explained_share is None:
        verdict = "The loss did not fall over training, so an explained share is not defined."
    else:
        verdict = f"<b>Explained share: {fmt_share(ledger.explained_share)}</b>."
        if ledger.explained_share > 1.5:
            verdict += (" The values sum to well over the measured decrease: the per-step linear estimates "
                        "overstate the net effect (later steps partly undid earlier ones, or curvature matters), "
                        "so read shares as relative weights, not as fractions of the fall in loss.")
        elif ledger.explained_share < 0.5:
            verdict += (" Much of the fall in loss is not attributed to individual documents; read the values as "
                        "a partial account.")
    return intro + numbers + verdict
