"""Fit the evidence-label thresholds on real paraphrase pairs and measure them on held-out books.

    python -m provenance.evidence.calibrate [--pairs data/pairs] [--out provenance/evidence/thresholds.json]

Data (data/pairs/, built by scripts/build_paraphrase_pairs.py): King James (KJV) and World English Bible
(WEB) verses aligned by key. The output side of every pair is a KJV verse; the document side is a WEB
verse (or a KJV verse for the span null). Thresholds are fitted on the *fit* books only; every figure
under "held_out" comes from other books (the four gospels among them). The fitted rules and the measured
figures are written to thresholds.json (read by provenance.evidence.labels) and printed as markdown for
docs/evidence.md. A maintainer tool: it needs scikit-learn (the `dev` extra).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from provenance.evidence.assess import DocumentView, assess, prepared_from_vectors
from provenance.evidence.encoder import Encoder, load_encoder
from provenance.evidence.labels import PairFeatures, Thresholds, content_words, overlap, pair_features
from provenance.evidence.passages import PassageParams, split_passages
from provenance.evidence.text import Words, words

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PAIRS = REPO / "data" / "pairs"
DEFAULT_OUT = Path(__file__).with_name("thresholds.json")
MIN_SPAN_WORDS = 4  # shortest shared run of words that counts as a span (see docs/evidence.md)
NULL_RATE = 0.01  # verbatim: at most this share of different-verse pairs may reach the thresholds
FIT_PRECISION = 0.95  # paraphrase: the lowest score threshold with this precision on the fit books
# The null for shared spans: different verses, across and within translations. Multi-verse windows are not
# part of it: within one translation, neighbouring passages repeat whole formulas and lists (Numbers 7
# twelve times), which is real repetition, not chance; with them the rule would demand 29 words.
NULL_KINDS = ("neighbour", "unrelated", "neighbour_kjv", "unrelated_kjv")
POSITIVE_KINDS = ("paraphrase", "window_paraphrase")
NEGATIVE_KINDS = ("neighbour", "unrelated", "window_neighbour")
WINDOW_SIZES = (2, 4, 6)  # multi-verse outputs: long outputs behave differently from single verses
WINDOWS_PER_SIZE = 700


# -- data ------------------------------------------------------------------------------------------------
def load_pairs(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    verses = pd.read_parquet(folder / "verses.parquet")
    pairs = pd.read_parquet(folder / "pairs.parquet")
    hand = json.loads((folder / "hand_lists.json").read_text(encoding="utf-8"))
    return verses, pairs, hand


def cached_embeddings(encoder: Encoder, texts: list[str], cache: Path, tag: str) -> np.ndarray:
    """Embeddings of texts, cached on disk by embedder hash and text hash (npy, no pickle)."""
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    file = cache / f"{encoder.sha256[:16]}_{tag}_{digest}.npy"
    if file.is_file():
        return np.load(file, allow_pickle=False)
    cache.mkdir(parents=True, exist_ok=True)
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    vectors = np.empty((len(texts), encoder.dim), dtype=np.float32)
    step = 2048
    for i in tqdm(range(0, len(texts), step), desc=f"embed {tag}", unit="batch"):
        chunk = order[i : i + step]
        vectors[chunk] = encoder.encode([texts[j] for j in chunk], batch_size=128)
    tmp = file.with_suffix(".tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    tmp.replace(file)
    return vectors


def verse_features(
    pairs: pd.DataFrame,
    kjv_words: list[Words],
    web_words: list[Words],
    kjv_vec: np.ndarray,
    web_vec: np.ndarray,
    min_span: int,
) -> pd.DataFrame:
    """Features of every pair (output = KJV verse a; document = WEB verse b, or KJV b for *_kjv kinds)."""
    rows = []
    for kind, a, b in tqdm(
        zip(pairs["kind"].tolist(), pairs["a"].tolist(), pairs["b"].tolist()),
        total=len(pairs),
        desc="pair features",
        unit="pair",
        mininterval=2,
    ):
        same = kind.endswith("_kjv")
        doc_words = kjv_words[b] if same else web_words[b]
        sim = float(kjv_vec[a] @ (kjv_vec[b] if same else web_vec[b]))
        f, _ = pair_features(kjv_words[a], doc_words, sim, min_span)
        reverse = overlap(content_words(doc_words), kjv_words[a])
        rows.append((f.similarity, f.overlap, f.longest, f.coverage, f.n_output_words, min(f.overlap, reverse)))
    frame = pd.DataFrame(
        rows, columns=["similarity", "overlap", "longest", "coverage", "n_output_words", "mutual_overlap"]
    )
    return pd.concat([pairs.reset_index(drop=True), frame], axis=1)


def window_features(
    verses: pd.DataFrame, encoder: Encoder, cache: Path, min_span: int, seed: int
) -> pd.DataFrame:
    """Multi-verse pairs, per split: KJV verses i..i+k-1 (output) vs the WEB text of the same verses
    (window_paraphrase), vs the WEB text of the next k verses of the chapter (window_neighbour), and vs
    the KJV text of those next verses (window_neighbour_kjv: span null within one translation)."""
    rng = np.random.default_rng(seed)
    chapter_key = (verses["book"] + "|" + verses["chapter"].astype(str)).to_numpy()
    splits = verses["split"].to_numpy()
    rows = []
    for split in ("fit", "held_out"):
        for k in WINDOW_SIZES:
            ok = [
                i for i in range(len(verses) - 2 * k + 1)
                if splits[i] == split and chapter_key[i] == chapter_key[i + 2 * k - 1]
            ]
            for i in rng.choice(ok, size=min(WINDOWS_PER_SIZE, len(ok)), replace=False).tolist():
                rows.append((split, k, i))
    join = lambda side, i, k: " ".join(verses[side].iloc[i : i + k].tolist())  # noqa: E731
    out_texts = [join("kjv", i, k) for _, k, i in rows]
    same_web = [join("web", i, k) for _, k, i in rows]
    next_web = [join("web", i + k, k) for _, k, i in rows]
    next_kjv = [join("kjv", i + k, k) for _, k, i in rows]
    vec = {
        name: cached_embeddings(encoder, texts, cache, f"windows-{name}")
        for name, texts in (("out", out_texts), ("same", same_web), ("next", next_web), ("nextkjv", next_kjv))
    }
    records = []
    for j, (split, k, i) in enumerate(tqdm(rows, desc="window features", unit="window", mininterval=2)):
        output = words(out_texts[j])
        for kind, text, name in (
            ("window_paraphrase", same_web[j], "same"),
            ("window_neighbour", next_web[j], "next"),
            ("window_neighbour_kjv", next_kjv[j], "nextkjv"),
        ):
            doc = words(text)
            f, _ = pair_features(output, doc, float(vec["out"][j] @ vec[name][j]), min_span)
            reverse = overlap(content_words(doc), output)
            records.append((kind, i, i, split, f"k={k}", f.similarity, f.overlap, f.longest, f.coverage,
                            f.n_output_words, min(f.overlap, reverse)))
    return pd.DataFrame(records, columns=["kind", "a", "b", "split", "group", "similarity", "overlap", "longest",
                                          "coverage", "n_output_words", "mutual_overlap"])


def as_features(frame: pd.DataFrame) -> list[PairFeatures]:
    return [
        PairFeatures(s, o, int(lg), c, int(n))
        for s, o, lg, c, n in zip(
            frame["similarity"], frame["overlap"], frame["longest"], frame["coverage"], frame["n_output_words"]
        )
    ]


def matrix(frame: pd.DataFrame) -> np.ndarray:
    return np.column_stack(
        [frame["similarity"], frame["overlap"], np.log1p(frame["longest"]), frame["coverage"]]
    ).astype(np.float64)


# -- fitting ---------------------------------------------------------------------------------------------
def fit_verbatim(null: pd.DataFrame, min_span: int) -> tuple[int, float, int]:
    """Smallest span length and coverage that at most NULL_RATE of each null kind reaches."""
    longest = next(
        length
        for length in range(min_span, 200)
        if all((g["longest"] >= length).mean() <= NULL_RATE for _, g in null.groupby("kind"))
    )
    min_words = min_span
    eligible = null[null["n_output_words"] >= min_words]
    coverage = next(
        c
        for c in np.round(np.arange(0.05, 1.0001, 0.05), 2)
        if all((g["coverage"] >= c).mean() <= NULL_RATE for _, g in eligible.groupby("kind"))
    )
    return int(longest), float(coverage), int(min_words)


def fit_paraphrase(fit: pd.DataFrame) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    train = fit[fit["kind"].isin(POSITIVE_KINDS + NEGATIVE_KINDS)]
    y = train["kind"].isin(POSITIVE_KINDS).to_numpy()
    model = LogisticRegression(C=10.0, class_weight="balanced", max_iter=1000)
    model.fit(matrix(train), y)
    return model.coef_[0].astype(float), float(model.intercept_[0])


def pick_paraphrase_threshold(thresholds: Thresholds, fit: pd.DataFrame) -> float:
    """Lowest score threshold whose paraphrase-or-verbatim decision keeps FIT_PRECISION against the
    neighbouring verses of the fit books (the most recall at that precision)."""
    rows = fit[fit["kind"].isin(["paraphrase", "neighbour", "window_paraphrase", "window_neighbour"])]
    feats = as_features(rows)
    y = rows["kind"].isin(POSITIVE_KINDS).to_numpy()
    never = replace(thresholds, paraphrase_min_score=2.0)  # scores are < 1: only the verbatim rule fires
    verbatim = np.array([never.label(f)[0] == "verbatim" for f in feats])
    scores = np.array([thresholds.paraphrase_score(f) for f in feats])
    tp0, fp0 = int((verbatim & y).sum()), int((verbatim & ~y).sum())
    rest = np.flatnonzero(~verbatim)
    order = rest[np.argsort(-scores[rest], kind="stable")]
    tp = tp0 + np.cumsum(y[order])
    fp = fp0 + np.cumsum(~y[order])
    ok = np.flatnonzero(tp / (tp + fp) >= FIT_PRECISION)
    if ok.size == 0:
        return 1.0
    k = int(ok.max())
    while k + 1 < order.size and scores[order[k + 1]] == scores[order[k]]:
        k -= 1  # a threshold cannot split tied scores: stop before the tie
    return float(scores[order[k]]) if k >= 0 else 1.0


def fit_topic(fit: pd.DataFrame) -> float:
    """Similarity threshold between same-topic (neighbouring verses) and unrelated verses: max Youden J."""
    rows = fit[fit["kind"].isin(["neighbour", "unrelated"])]
    y = (rows["kind"] == "neighbour").to_numpy()
    sim = rows["similarity"].to_numpy()
    grid = np.round(np.arange(0.0, 1.0, 0.005), 3)
    j = [((sim >= t) & y).sum() / y.sum() - ((sim >= t) & ~y).sum() / (~y).sum() for t in grid]
    return float(grid[int(np.argmax(j))])


# -- measuring -------------------------------------------------------------------------------------------
def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def recall_at_precision(pos: np.ndarray, neg: np.ndarray, precision: float = 0.9) -> float:
    """Best recall with precision >= the target (threshold chosen on these very scores: an oracle figure)."""
    scores = np.r_[pos, neg]
    y = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(y[order])
    fp = np.cumsum(~y[order])
    ok = tp / (tp + fp) >= precision
    return float((tp[ok] / len(pos)).max()) if ok.any() else 0.0


def label_counts(labels: list[str]) -> dict[str, float]:
    n = max(1, len(labels))
    return {k: round(labels.count(k) / n, 4) for k in ("verbatim", "paraphrase", "topic", "unrelated")}


def decision_quality(labels_pos: list[str], labels_neg: list[str], positive: set[str]) -> dict[str, float]:
    tp = sum(label in positive for label in labels_pos)
    fp = sum(label in positive for label in labels_neg)
    return {
        "precision": round(tp / max(1, tp + fp), 4),
        "recall": round(tp / max(1, len(labels_pos)), 4),
        "n_positive": len(labels_pos),
        "n_negative": len(labels_neg),
    }


def feature_aurocs(pos: pd.DataFrame, neg: pd.DataFrame, thresholds: Thresholds) -> dict[str, float]:
    out = {name: auroc(pos[name].to_numpy(), neg[name].to_numpy()) for name in ("similarity", "overlap", "longest", "coverage")}
    out["score"] = auroc(
        np.array([thresholds.paraphrase_score(f) for f in as_features(pos)]),
        np.array([thresholds.paraphrase_score(f) for f in as_features(neg)]),
    )
    return {k: round(v, 4) for k, v in out.items()}


def evaluate_verses(frame: pd.DataFrame, thresholds: Thresholds) -> dict:
    """Held-out verse-level figures (every row of frame is from held-out books)."""
    labels = {kind: [thresholds.label(f)[0] for f in as_features(g)] for kind, g in frame.groupby("kind")}
    para, neigh, unrel = (frame[frame["kind"] == k] for k in ("paraphrase", "neighbour", "unrelated"))
    related = {"verbatim", "paraphrase"}
    out: dict = {
        "paraphrase_vs_neighbour": {
            "cosine_auroc": round(auroc(para["similarity"].to_numpy(), neigh["similarity"].to_numpy()), 4),
            "cosine_recall_at_90_precision": round(
                recall_at_precision(para["similarity"].to_numpy(), neigh["similarity"].to_numpy()), 4
            ),
            "feature_auroc": feature_aurocs(para, neigh, thresholds),
            "label_decision": decision_quality(labels["paraphrase"], labels["neighbour"], related),
            "note": "positive = label verbatim or paraphrase; negatives = the WEB verses before and after",
        },
        "topic_vs_unrelated": {
            "label_decision": decision_quality(labels["neighbour"], labels["unrelated"], {"verbatim", "paraphrase", "topic"}),
            "cosine_auroc": round(auroc(neigh["similarity"].to_numpy(), unrel["similarity"].to_numpy()), 4),
            "note": "positive = any label but unrelated; same-topic = neighbouring verses, unrelated = random verse of another book",
        },
        "label_distribution": {kind: label_counts(lbls) for kind, lbls in labels.items() if kind != "parallel"},
    }
    if "window_paraphrase" in labels:
        wp, wn = (frame[frame["kind"] == k] for k in ("window_paraphrase", "window_neighbour"))
        out["window_paraphrase_vs_neighbour"] = {
            "sizes": list(WINDOW_SIZES),
            "cosine_auroc": round(auroc(wp["similarity"].to_numpy(), wn["similarity"].to_numpy()), 4),
            "feature_auroc": feature_aurocs(wp, wn, thresholds),
            "label_decision": decision_quality(labels["window_paraphrase"], labels["window_neighbour"], related),
            "note": "output = 2, 4 or 6 consecutive KJV verses; negative = WEB text of the next verses",
        }
    return out


def evaluate_parallels(frame: pd.DataFrame, thresholds: Thresholds) -> dict:
    """Paraphrase (same verse, other translation) vs same topic (parallel pericope, other gospel)."""
    parallel = frame[frame["kind"] == "parallel"]
    members = set(parallel["a"].tolist())
    para = frame[(frame["kind"] == "paraphrase") & frame["a"].isin(members)]
    hardest = parallel.loc[parallel.groupby("a")["similarity"].idxmax()]
    out = {"n_pericopes": int(parallel["group"].nunique()), "n_verses": len(members)}
    for name, neg in (("all_parallel_pairs", parallel), ("closest_parallel_verse", hardest)):
        lab_pos = [thresholds.label(f)[0] for f in as_features(para)]
        lab_neg = [thresholds.label(f)[0] for f in as_features(neg)]
        out[name] = {
            "n_negative": len(neg),
            "feature_auroc": feature_aurocs(para, neg, thresholds),
            "analysis_auroc": {
                "mutual_overlap (min of both directions; not usable against long passages)": round(
                    auroc(para["mutual_overlap"].to_numpy(), neg["mutual_overlap"].to_numpy()), 4
                ),
                "similarity + mutual_overlap": round(
                    auroc((para["similarity"] + para["mutual_overlap"]).to_numpy(),
                          (neg["similarity"] + neg["mutual_overlap"]).to_numpy()), 4
                ),
            },
            "label_decision": decision_quality(lab_pos, lab_neg, {"verbatim", "paraphrase"}),
            "negative_labels": label_counts(lab_neg),
        }
    return out


def chapter_views(
    verses: pd.DataFrame, rows: np.ndarray, side: str, encoder: Encoder, params: PassageParams, cache: Path
) -> dict[tuple[str, int], DocumentView]:
    """Whole chapters of one translation as documents, cut into passages the way the index cuts them."""
    keys = sorted({(verses["book"].iat[i], int(verses["chapter"].iat[i])) for i in rows})
    texts, spans, owners = {}, [], []
    for book, chapter in keys:
        part = verses[(verses["book"] == book) & (verses["chapter"] == chapter)]
        text = " ".join(part[side].tolist())
        texts[(book, chapter)] = text
        for a, b in split_passages(text, encoder.count_tokens, encoder.token_offsets, params):
            spans.append((a, b))
            owners.append((book, chapter))
    vectors = cached_embeddings(encoder, [texts[o][a:b] for o, (a, b) in zip(owners, spans)], cache, f"{side}-chapters")
    views = {}
    owners_arr = np.array([f"{b}|{c}" for b, c in owners])
    for key, text in texts.items():
        idx = np.flatnonzero(owners_arr == f"{key[0]}|{key[1]}")
        views[key] = DocumentView(text, words(text), tuple(spans[i] for i in idx), vectors[idx])
    return views


def evaluate_documents(
    verses: pd.DataFrame, kjv_vec: np.ndarray, thresholds: Thresholds, encoder: Encoder, cache: Path, n: int, seed: int
) -> dict:
    """Query conditions: a KJV verse against whole WEB chapters cut into passages. Positive: its own
    chapter; same topic: the next (or previous) chapter of the same book."""
    rng = np.random.default_rng(seed)
    held = np.flatnonzero(verses["split"].to_numpy() == "held_out")
    sample = np.sort(rng.choice(held, size=min(n, held.size), replace=False))
    chapters = verses.groupby("book")["chapter"].max().to_dict()
    pos_keys, neg_keys = [], []
    for i in sample:
        book, chapter = verses["book"].iat[i], int(verses["chapter"].iat[i])
        other = chapter + 1 if chapter < chapters[book] else chapter - 1
        pos_keys.append((book, chapter))
        neg_keys.append((book, other) if other >= 1 and other != chapter else None)
    needed = np.flatnonzero(
        verses.set_index(["book", "chapter"]).index.isin([k for k in pos_keys + neg_keys if k is not None])
    )
    views = chapter_views(verses, needed, "web", encoder, PassageParams(), cache)
    lab_pos, lab_neg = [], []
    for i, pos, neg in zip(sample, pos_keys, neg_keys):
        text = verses["kjv"].iat[i]
        output = prepared_from_vectors(text, [(0, len(text))], kjv_vec[i : i + 1])
        lab_pos.append(assess(output, views[pos], thresholds).label)
        if neg is not None and neg in views:
            lab_neg.append(assess(output, views[neg], thresholds).label)
    return {
        "n_verses": len(sample),
        "own_chapter_labels": label_counts(lab_pos),
        "adjacent_chapter_labels": label_counts(lab_neg),
        "paraphrase_decision": decision_quality(lab_pos, lab_neg, {"verbatim", "paraphrase"}),
        "note": "document = a whole WEB chapter cut into passages as the index does; positive = own chapter",
    }


def _pericope_rows(verses: pd.DataFrame, gospel: str, spec: str) -> pd.DataFrame:
    return _verse_block(verses, f"{gospel} {spec}")


def evaluate_pericopes(verses: pd.DataFrame, hand: dict, thresholds: Thresholds, encoder: Encoder, cache: Path) -> dict:
    """Whole pericopes: the KJV text of a gospel's pericope (output) against the WEB text of the same
    pericope (paraphrase) and against the WEB text of the parallel pericope in another gospel (topic)."""
    params = PassageParams()
    texts: dict[tuple[str, str, str], str] = {}
    for name, ranges in hand["gospel_parallels"].items():
        for gospel, spec in ranges.items():
            rows = _pericope_rows(verses, gospel, spec)
            for side in ("kjv", "web"):
                texts[(name, gospel, side)] = " ".join(rows[side].tolist())
    pieces, owners = [], []
    for key, text in texts.items():
        for a, b in split_passages(text, encoder.count_tokens, encoder.token_offsets, params):
            pieces.append((a, b))
            owners.append(key)
    vectors = cached_embeddings(encoder, [texts[o][a:b] for o, (a, b) in zip(owners, pieces)], cache, "pericopes")
    by_key: dict[tuple[str, str, str], list[int]] = {}
    for i, owner in enumerate(owners):
        by_key.setdefault(owner, []).append(i)

    def view(key):
        idx = by_key[key]
        return DocumentView(texts[key], words(texts[key]), tuple(pieces[i] for i in idx), vectors[idx])

    pos, neg = [], []
    for name, ranges in hand["gospel_parallels"].items():
        for gospel in ranges:
            out_key = (name, gospel, "kjv")
            idx = by_key[out_key]
            output = prepared_from_vectors(texts[out_key], [pieces[i] for i in idx], vectors[idx])
            pos.append(assess(output, view((name, gospel, "web")), thresholds))
            neg.extend(assess(output, view((name, other, "web")), thresholds) for other in ranges if other != gospel)

    def au(get) -> float:
        return round(auroc(np.array([get(e) for e in pos]), np.array([get(e) for e in neg])), 4)

    return {
        "n_outputs": len(pos),
        "n_parallel_pairs": len(neg),
        "auroc": {
            "similarity": au(lambda e: e.similarity),
            "overlap": au(lambda e: e.overlap),
            "longest": au(lambda e: e.longest_span_tokens),
            "coverage": au(lambda e: e.span_coverage),
            "score": au(lambda e: e.score),
        },
        "label_decision": decision_quality([e.label for e in pos], [e.label for e in neg], {"verbatim", "paraphrase"}),
        "same_pericope_labels": label_counts([e.label for e in pos]),
        "parallel_pericope_labels": label_counts([e.label for e in neg]),
        "note": "output = KJV text of a whole pericope, cut into windows as the query does; documents = WEB pericopes cut into passages",
    }


def _verse_block(verses: pd.DataFrame, spec: str) -> pd.DataFrame:
    book, rest = spec.rsplit(" ", 1)
    chapter, span = rest.split(":")
    first, last = (int(x) for x in span.split("-"))
    return verses[(verses["book"] == book) & (verses["chapter"] == int(chapter)) & verses["verse"].between(first, last)]


def evaluate_duplicate_passages(
    verses: pd.DataFrame, hand: dict, thresholds: Thresholds, encoder: Encoder, cache: Path
) -> dict:
    """Verbatim-with-edits: 3-verse KJV windows of one passage against the KJV passage that repeats it
    (Psalm 14 / Psalm 53, 2 Kings 18-20 / Isaiah 36-38, ...), and against an unrelated passage."""
    outputs, docs = [], []
    blocks = []
    for a_spec, b_spec in hand["kjv_duplicates"]:
        a, b = _verse_block(verses, a_spec), _verse_block(verses, b_spec)
        blocks.append((a_spec, b_spec, a, b))
    doc_texts = [" ".join(b["kjv"].tolist()) for *_, b in blocks]
    doc_spans, doc_owner = [], []
    for k, text in enumerate(doc_texts):
        for span in split_passages(text, encoder.count_tokens, encoder.token_offsets, PassageParams()):
            doc_spans.append(span)
            doc_owner.append(k)
    doc_vec = cached_embeddings(encoder, [doc_texts[o][a:b] for o, (a, b) in zip(doc_owner, doc_spans)], cache, "dup-docs")
    owner = np.array(doc_owner)
    views = [
        DocumentView(t, words(t), tuple(doc_spans[i] for i in np.flatnonzero(owner == k)), doc_vec[owner == k])
        for k, t in enumerate(doc_texts)
    ]
    for k, (_, _, a, _) in enumerate(blocks):
        lines = a["kjv"].tolist()
        for i in range(0, max(1, len(lines) - 2), 3):
            outputs.append((k, " ".join(lines[i : i + 3])))
    out_vec = cached_embeddings(encoder, [t for _, t in outputs], cache, "dup-outputs")
    own, other = [], []
    for (k, text), vec in zip(outputs, out_vec):
        prepared = prepared_from_vectors(text, [(0, len(text))], vec[None, :])
        own.append(assess(prepared, views[k], thresholds).label)
        other.append(assess(prepared, views[(k + len(views) // 2) % len(views)], thresholds).label)
    return {
        "n_passage_pairs": len(blocks),
        "n_windows": len(outputs),
        "copied_passage_labels": label_counts(own),
        "unrelated_passage_labels": label_counts(other),
        "verbatim_recall": round(own.count("verbatim") / max(1, len(own)), 4),
        "verbatim_false_positive_rate": round(other.count("verbatim") / max(1, len(other)), 4),
    }


# -- main ------------------------------------------------------------------------------------------------
def calibrate(pairs_dir: Path, out: Path, cache: Path, embedder: str | None, n_documents: int, seed: int) -> dict:
    started = time.perf_counter()
    encoder = load_encoder(embedder)
    verses, pairs, hand = load_pairs(pairs_dir)
    kjv_vec = cached_embeddings(encoder, verses["kjv"].tolist(), cache, "kjv")
    web_vec = cached_embeddings(encoder, verses["web"].tolist(), cache, "web")
    kjv_words = [words(t) for t in verses["kjv"]]
    web_words = [words(t) for t in verses["web"]]
    frame = verse_features(pairs, kjv_words, web_words, kjv_vec, web_vec, MIN_SPAN_WORDS)
    frame = pd.concat([frame, window_features(verses, encoder, cache, MIN_SPAN_WORDS, seed)], ignore_index=True)
    fit = frame[frame["split"] == "fit"]
    held = frame[frame["split"] == "held_out"]

    longest, coverage, min_words = fit_verbatim(fit[fit["kind"].isin(NULL_KINDS)], MIN_SPAN_WORDS)
    weights, intercept = fit_paraphrase(fit)
    thresholds = Thresholds(
        min_span_words=MIN_SPAN_WORDS,
        verbatim_min_longest=longest,
        verbatim_min_coverage=coverage,
        verbatim_min_output_words=min_words,
        paraphrase_weights=tuple(round(float(w), 6) for w in weights),
        paraphrase_intercept=round(intercept, 6),
        paraphrase_min_score=0.5,
        topic_min_similarity=fit_topic(fit),
        embedder=encoder.name,
        embedder_sha256=encoder.sha256,
    )
    thresholds = replace(thresholds, paraphrase_min_score=pick_paraphrase_threshold(thresholds, fit))
    measured = {
        "data": {
            "source": "KJV (engKJV2006eb) and WEB (engWEB2015eb) via diatheke; scripts/build_paraphrase_pairs.py",
            "n_verses": len(verses),
            "fit_books": hand["fit_books"],
            "held_out_books": hand["held_out_books"],
            "pairs": {f"{k}/{s}": int(n) for (k, s), n in frame.groupby(["kind", "split"]).size().items()},
        },
        "fit_rules": {
            "verbatim": f"smallest span length / coverage reached by <= {NULL_RATE:.0%} of each null kind "
            f"({', '.join(NULL_KINDS)}) on the fit books",
            "paraphrase": "logistic regression (balanced) of paraphrase + window_paraphrase vs neighbour + unrelated + "
            "window_neighbour on the fit books; min_score = lowest threshold with precision >= "
            f"{FIT_PRECISION} against neighbours (verses and windows, fit books)",
            "topic": "similarity threshold with the largest Youden J, neighbours (same topic) vs unrelated, fit books",
        },
        "fit": evaluate_verses(fit, thresholds),
        "held_out": evaluate_verses(held, thresholds),
        "gospel_parallels": evaluate_parallels(held, thresholds),
        "gospel_pericopes": evaluate_pericopes(verses, hand, thresholds, encoder, cache),
        "document_context": evaluate_documents(verses, kjv_vec, thresholds, encoder, cache, n_documents, seed),
        "kjv_duplicates": evaluate_duplicate_passages(verses, hand, thresholds, encoder, cache),
        "seconds": round(time.perf_counter() - started, 1),
    }
    thresholds = replace(thresholds, measured=measured)
    out.write_text(json.dumps(thresholds.to_json(), indent=2) + "\n", encoding="utf-8")
    return thresholds.to_json()


def markdown(result: dict) -> str:
    """The tables docs/evidence.md carries (pasted from this output)."""
    m = result["measured"]
    lines = ["| rule | fitted value |", "| --- | --- |"]
    lines.append(f"| min span (words) | {result['min_span_words']} |")
    v = result["verbatim"]
    lines.append(f"| verbatim: longest span >= | {v['min_longest_span_words']} words |")
    lines.append(f"| verbatim: or coverage >= | {v['min_coverage']} (outputs of >= {v['min_output_words']} words) |")
    p = result["paraphrase"]
    weights = ", ".join(f"{n} {w:+.3f}" for n, w in zip(p["features"], p["weights"]))
    lines.append(f"| paraphrase: logistic score >= | {p['min_score']} (weights {weights}; intercept {p['intercept']:+.3f}) |")
    lines.append(f"| topic: similarity >= | {result['topic']['min_similarity']} |")
    lines.append("")
    lines.append("| measure (held-out books) | value |")
    lines.append("| --- | --- |")
    pn = m["held_out"]["paraphrase_vs_neighbour"]
    lines.append(f"| paraphrase vs neighbouring verses: cosine AUROC | {pn['cosine_auroc']} |")
    lines.append(f"| ... cosine recall at 90% precision (oracle threshold) | {pn['cosine_recall_at_90_precision']} |")
    lines.append(f"| ... combined score AUROC | {pn['feature_auroc']['score']} |")
    d = pn["label_decision"]
    lines.append(f"| ... label verbatim/paraphrase: precision / recall | {d['precision']} / {d['recall']} ({d['n_positive']} pos, {d['n_negative']} neg) |")
    tu = m["held_out"]["topic_vs_unrelated"]["label_decision"]
    wpn = m["held_out"]["window_paraphrase_vs_neighbour"]
    wd = wpn["label_decision"]
    lines.append(f"| windows of 2/4/6 verses vs next verses: cosine AUROC / score AUROC | {wpn['cosine_auroc']} / {wpn['feature_auroc']['score']} |")
    lines.append(f"| ... label verbatim/paraphrase: precision / recall | {wd['precision']} / {wd['recall']} ({wd['n_positive']} pos, {wd['n_negative']} neg) |")
    lines.append(f"| same topic (neighbours) vs unrelated: precision / recall of label != unrelated | {tu['precision']} / {tu['recall']} |")
    for name in ("all_parallel_pairs", "closest_parallel_verse"):
        g = m["gospel_parallels"][name]
        fa = g["feature_auroc"]
        lines.append(
            f"| gospel parallels ({name}): AUROC cosine / overlap / longest / coverage / score | "
            f"{fa['similarity']} / {fa['overlap']} / {fa['longest']} / {fa['coverage']} / {fa['score']} |"
        )
        gd = g["label_decision"]
        lines.append(f"| ... label verbatim/paraphrase: precision / recall | {gd['precision']} / {gd['recall']} ({gd['n_negative']} neg) |")
        lines.append(f"| ... labels of the parallel (topic) pairs | {g['negative_labels']} |")
    gp = m["gospel_pericopes"]
    au = gp["auroc"]
    lines.append(
        f"| gospel pericopes, whole ({gp['n_outputs']} outputs, {gp['n_parallel_pairs']} parallels): AUROC cosine / "
        f"overlap / longest / coverage / score | {au['similarity']} / {au['overlap']} / {au['longest']} / "
        f"{au['coverage']} / {au['score']} |"
    )
    lines.append(f"| ... label verbatim/paraphrase: precision / recall | {gp['label_decision']['precision']} / {gp['label_decision']['recall']} |")
    lines.append(f"| ... labels of the parallel pericopes | {gp['parallel_pericope_labels']} |")
    dc = m["document_context"]
    lines.append(f"| document context ({dc['n_verses']} verses vs whole WEB chapters): own chapter labels | {dc['own_chapter_labels']} |")
    lines.append(f"| ... adjacent chapter labels | {dc['adjacent_chapter_labels']} |")
    lines.append(f"| ... paraphrase decision precision / recall | {dc['paraphrase_decision']['precision']} / {dc['paraphrase_decision']['recall']} |")
    du = m["kjv_duplicates"]
    lines.append(f"| KJV duplicated passages ({du['n_windows']} windows): verbatim recall | {du['verbatim_recall']} |")
    lines.append(f"| ... verbatim on an unrelated passage | {du['verbatim_false_positive_rate']} |")
    dist = m["held_out"]["label_distribution"]
    lines.append("")
    lines.append("| held-out pair kind | " + " | ".join(("verbatim", "paraphrase", "topic", "unrelated")) + " |")
    lines.append("| --- | --- | --- | --- | --- |")
    for kind, counts in dist.items():
        lines.append(f"| {kind} | " + " | ".join(str(counts[k]) for k in ("verbatim", "paraphrase", "topic", "unrelated")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fit and measure the evidence-label thresholds.")
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS, help="folder of the calibration data")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="thresholds JSON to write")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "provenance" / "calibration",
                        help="folder for cached verse embeddings (npy)")
    parser.add_argument("--embedder", default=None, help="local sentence-transformers folder (default MiniLM)")
    parser.add_argument("--documents", type=int, default=1500, help="held-out verses for the document-context test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.pairs / "verses.parquet").is_file():
        sys.exit(f"{args.pairs} has no verses.parquet; build it with scripts/build_paraphrase_pairs.py")
    result = calibrate(args.pairs, args.out, args.cache, args.embedder, args.documents, args.seed)
    print(markdown(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
