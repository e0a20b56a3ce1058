"""The PDFs read back (pdftotext) carry the run's own ranks, values, shares and hashes; every page renders.

Expected numbers are computed here from the run's files with pandas/hashlib, independently of the
report code, and formatted with the formats docs/reports.md promises (value {:+.4e}, share {:.2f}%).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import TIMESTAMP, page_count, pdftotext
from .fixture_runs import TARGETS


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected_rows(run: Path, target_id: str, top_k: int) -> pd.DataFrame:
    values = pd.read_parquet(run / "values.parquet")
    rows = values[values["target_id"] == target_id].sort_values("rank")
    rows = rows.assign(cumulative=rows["share"].cumsum())
    return rows[rows["value"] > 0].head(top_k)


def _pdf(batch, target_id: str) -> Path:
    return next(p for p in batch.reports if p.stem == target_id)


def _spaced(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("target", [t.target_id for t in TARGETS])
def test_ranked_table_equals_values_parquet(report_run, batch, target):
    text = pdftotext(_pdf(batch, target))
    expected = _expected_rows(report_run, target, 10)
    assert len(expected) > 0
    for row in expected.itertuples():
        pattern = (rf"^\s*{row.rank}\s.*{re.escape(f'{row.value:+.4e}')}\s+{re.escape(f'{100 * row.share:.2f}%')}"
                   rf"\s+{re.escape(f'{100 * row.cumulative:.2f}%')}\s")
        assert re.search(pattern, text, re.MULTILINE), f"row {row.rank} ({row.doc_id}) not found as printed"
    # the first rank printed is 1 and ranks stop at the table's length
    assert re.search(rf"^\s*{len(expected) + 1}\s.*%\s+\d", text.split("Worked against")[0], re.MULTILINE) is None


@pytest.mark.parametrize("target", [t.target_id for t in TARGETS])
def test_sidecar_numbers_are_the_run_files_numbers(report_run, batch, target):
    side = json.loads(_pdf(batch, target).with_suffix(".json").read_text(encoding="utf-8"))
    report = side["report"]
    expected = _expected_rows(report_run, target, 10)
    assert [r["rank"] for r in report["rows"]] == expected["rank"].tolist()
    assert [r["doc_id"] for r in report["rows"]] == expected["doc_id"].tolist()
    assert [r["value"] for r in report["rows"]] == expected["value"].tolist()  # exact floats
    assert [r["share"] for r in report["rows"]] == expected["share"].tolist()
    np.testing.assert_allclose([r["cumulative_share"] for r in report["rows"]], expected["cumulative"], rtol=1e-12)
    assert side["pdf"]["sha256"] == _sha(_pdf(batch, target))
    # value over training ends at each document's value
    values = dict(zip(expected["doc_id"], expected["value"]))
    for trajectory in report["trajectories"]:
        assert trajectory["cumulative_value"][-1] == pytest.approx(values[trajectory["doc_id"]], rel=1e-9, abs=1e-15)


def test_explained_share_equals_the_ledger(report_run, batch):
    target = "t-genesis"
    ledger = pd.read_parquet(report_run / "ledger.parquet")
    rows = ledger[ledger["target_id"] == target].sort_values("step")
    decrease = rows["target_loss"].iloc[0] - rows["target_loss"].iloc[-1]
    attributed = rows["attributed_sum"].iloc[:-1].sum()
    text = _spaced(pdftotext(_pdf(batch, target)))
    if decrease > 0:
        assert f"Explained share: {100 * attributed / decrease:.2f}%" in text
    else:
        assert "explained share is not defined" in text


def test_hashes_in_the_pdf_equal_the_run_files(report_run, batch):
    manifest = json.loads((report_run / "manifest.json").read_text(encoding="utf-8"))
    corpus = pd.read_parquet(report_run / "corpus.parquet")
    for spec in TARGETS:
        text = pdftotext(_pdf(batch, spec.target_id))
        flat = _spaced(text)
        target_hash = hashlib.sha256((spec.prompt + "\x00" + spec.text).encode("utf-8")).hexdigest()
        assert target_hash in flat
        assert manifest["corpus"]["sha256"] in flat
        assert _sha(report_run / "manifest.json") in flat
        for rel in ("values.parquet", "contributions.parquet", "ledger.parquet", "corpus.parquet",
                    "model/model.safetensors", "tokenizer/tokenizer.json"):
            assert _sha(report_run / rel) == manifest["files"][rel]
            assert re.search(rf"^\s*{re.escape(rel)}\s+{manifest['files'][rel]}\s+matches", text, re.MULTILINE), rel
        side = json.loads(_pdf(batch, spec.target_id).with_suffix(".json").read_text(encoding="utf-8"))
        doc_hash = dict(zip(corpus["doc_id"], corpus["sha256"]))
        for row in side["report"]["rows"]:
            assert row["doc_sha256"] == doc_hash[row["doc_id"]]
            assert re.search(rf"^\s*{row['rank']}\s.*{row['doc_sha256']}", text, re.MULTILINE)
        assert f"provenance verify --run {report_run}" in flat


def test_title_page_facts(report_run, batch):
    manifest = json.loads((report_run / "manifest.json").read_text(encoding="utf-8"))
    corpus = pd.read_parquet(report_run / "corpus.parquet")
    first_page = subprocess.run(["pdftotext", "-f", "1", "-l", "1", "-layout", str(_pdf(batch, "t-genesis")), "-"],
                                check=True, capture_output=True, text=True).stdout
    flat = _spaced(first_page)
    assert f"{len(corpus)} documents" in flat
    assert manifest["run_id"] in flat
    assert TIMESTAMP in flat
    assert "provenance 0.1.0" in flat
    assert "GPT2LMHeadModel" in flat
    assert "In the beginning God created the heaven and the earth." in flat


def test_every_page_renders(batch, tmp_path):
    for pdf in [*batch.reports, batch.summary_pdf]:
        pages = page_count(pdf)
        assert pages >= 1
        prefix = tmp_path / pdf.stem
        subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(prefix)], check=True, capture_output=True)
        images = sorted(tmp_path.glob(f"{pdf.stem}-*.png"))
        assert len(images) == pages
        from PIL import Image

        for number, image in enumerate(images, start=1):
            with Image.open(image) as im:
                extrema = im.convert("L").getextrema()
            # Small grey text (a page holding one note line and the footer) stays lighter than 128 at 40 dpi,
            # so a page also counts as rendered when it has body text besides the footer.
            text = subprocess.run(["pdftotext", "-f", str(number), "-l", str(number), "-layout", str(pdf), "-"],
                                  check=True, capture_output=True, text=True).stdout
            lines = [line for line in text.splitlines() if line.strip()]
            assert extrema[0] < 128 or len(lines) >= 2, f"{image.name} is blank"


def test_summary_lists_every_output_with_its_top_sources(report_run, batch):
    text = _spaced(pdftotext(batch.summary_pdf))
    summary = json.loads(batch.summary_json.read_text(encoding="utf-8"))
    assert [r["target_id"] for r in summary["reports"]] == [t.target_id for t in TARGETS]
    for spec, entry in zip(TARGETS, summary["reports"]):
        assert spec.target_id in text
        expected = _expected_rows(report_run, spec.target_id, 3)
        assert [t["doc_id"] for t in entry["top"]] == expected["doc_id"].tolist()
        assert f"{100 * expected['share'].iloc[0]:.2f}%" in text
        assert entry["pdf_sha256"] == _sha(batch.summary_pdf.parent / entry["pdf"])
    assert summary["pdf_sha256"] == _sha(batch.summary_pdf)


def test_charts_and_excerpts_are_present(batch):
    text = _spaced(pdftotext(_pdf(batch, "t-genesis")))
    for heading in ("1. Method", "2. Ranked documents", "3. Charts", "4. Evidence excerpts", "5. Chain of custody",
                    "Appendix: how to reproduce this report", "First and second order", "Limits of the method"):
        assert heading in text
    listing = subprocess.run(["pdfimages", "-list", str(_pdf(batch, "t-genesis"))], check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[2:]
    assert [line.split()[2] for line in listing] == ["image", "image"]  # share chart + value over training
    # the document holding the target word for word is labelled verbatim and its span is printed
    assert "bible:kjv-genesis" in text and "verbatim" in text
    assert re.search(r"Longest shared span \(10 words\)", text)
