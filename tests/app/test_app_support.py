"""provenance.app_support: the app's helpers that need no Streamlit (escaping, highlights, histogram,
where the runs are, chunk ranges)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from provenance import app_support as sup


def test_runs_root_order_of_precedence():
    assert sup.runs_root(["--runs", "a"], {sup.RUNS_ENV: "b"}) == Path("a")
    assert sup.runs_root(["--runs=c"], {}) == Path("c")
    assert sup.runs_root([], {sup.RUNS_ENV: "b"}) == Path("b")
    assert sup.runs_root([], {}) == Path("attribution_runs")


def test_run_folders_skip_files_and_hidden_temp_folders(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / ".a.x1.tmp").mkdir()
    (tmp_path / "README.md").write_text("runs")
    assert [p.name for p in sup.run_folders(tmp_path)] == ["a", "b"]
    assert sup.run_folders(tmp_path / "missing") == []


def test_highlighted_html_escapes_everything_and_merges_overlaps():
    text = "<b>x</b> & the earth was without form"
    start = text.index("the earth")
    marks = [sup.Mark(start, len(text), "verbatim", 'span "1"'),
             sup.Mark(start + 4, start + 9, "paraphrase", "<pair>")]
    out = sup.highlighted_html(text, marks)
    assert "<b>" not in out and "&lt;b&gt;x&lt;/b&gt; &amp; " in out
    assert '<span class="mark verbatim paraphrase"' in out  # "earth" is in both
    assert 'title="span &quot;1&quot;; &lt;pair&gt;"' in out
    # the visible text is the input, character for character
    visible = html.unescape(pd.Series([out]).str.replace(r"<[^>]+>", "", regex=True).iat[0])
    assert visible == text


def test_marks_outside_the_text_are_clipped_or_dropped():
    out = sup.highlighted_html("abc", [sup.Mark(-5, 2, "verbatim"), sup.Mark(5, 9, "verbatim")])
    assert out.count('class="mark') == 1 and ">ab</span>c" in out


def test_shaded_html_colours_by_sign_and_escapes():
    out = sup.shaded_html("<i>a</i> bc", [(0, 8, 2.0, "chunk 0"), (8, 11, -1.0, "chunk 1")])
    assert "<i>" not in out and "&lt;i&gt;a&lt;/i&gt;" in out
    assert "rgba(46,160,67,0.70)" in out and "rgba(215,58,73,0.40)" in out


def test_markdown_literal_escapes_markdown():
    assert sup.markdown_literal("**x** _y_ [a](b) `c`") == r"\*\*x\*\* \_y\_ \[a\]\(b\) \`c\`"


def test_value_histogram_keeps_signs_apart_and_counts_everything():
    values = np.array([-3.0, -1.0, -0.5, 0.0, 0.0, 0.2, 0.4, 2.0, 5.0])
    hist = sup.value_histogram(values, bins=10)
    by_sign = hist.groupby("sign")["count"].sum().to_dict()
    assert by_sign == {"negative": 3, "zero": 2, "positive": 4}
    assert (hist[hist["sign"] == "negative"]["end"] <= 0).all()
    assert (hist[hist["sign"] == "positive"]["start"] >= 0).all()
    zero = hist[hist["sign"] == "zero"].iloc[0]
    assert zero["start"] < 0 < zero["end"]  # a visible bar around 0
    only_positive = sup.value_histogram([1.0, 2.0, 3.0], bins=4)
    assert set(only_positive["sign"]) == {"positive"} and only_positive["count"].sum() == 3


def test_filter_table():
    frame = pd.DataFrame({"label": ["verbatim", "topic", "topic"], "source": ["a", "a", "b"],
                          "value_share": [0.5, 0.3, np.nan]})
    assert len(sup.filter_table(frame)) == 3
    assert sup.filter_table(frame, labels=["topic"], sources=["a"])["value_share"].tolist() == [0.3]
    assert sup.filter_table(frame, min_share=0.4)["label"].tolist() == ["verbatim"]


def test_values_over_steps_sums_chunks_and_accumulates():
    contributions = pd.DataFrame({"step": [1, 1, 3, 2], "doc_id": ["d", "d", "d", "e"], "chunk_id": [0, 1, 0, 2],
                                  "value": [1.0, 2.0, -0.5, 4.0]})
    steps = sup.values_over_steps(contributions)
    d = steps[steps["doc_id"] == "d"]
    assert d["step"].tolist() == [1, 3] and d["value"].tolist() == [3.0, -0.5]
    assert d["cumulative_value"].tolist() == [3.0, 2.5]
    assert sup.chunk_values(contributions, "d").to_dict() == {0: 0.5, 1: 2.0}


def test_chunk_char_ranges_follow_the_separator_convention():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "aa": 1, "bb": 2, "cc": 3}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    text = "aa bb cc"
    # positions: 0 = <|endoftext|>, 1..3 = aa bb cc, 4 = <|endoftext|>
    chunks = pd.DataFrame({"chunk_id": [7, 8], "start_token": [0, 2], "end_token": [2, 5]})
    assert sup.chunk_char_ranges(text, chunks, tokenizer) == [(7, 0, 2), (8, 3, 8)]


def test_run_facts_tolerate_a_sparse_manifest():
    facts = sup.run_facts({"run_id": "r", "corpus": {"n_documents": 3}, "values": {"order": 2}})
    assert facts.n_documents == 3 and facts.value_order == 2 and facts.steps_logged is None
    assert facts.model == "model" and facts.file_hashes == {}
