#!/usr/bin/env python3
"""Build the paraphrase calibration data in data/pairs/ from the King James and World English Bibles.

Two public-domain translations of the same verses are real, human-written paraphrase pairs. This script
reads both through `diatheke` (SWORD modules engKJV2006eb and engWEB2015eb), aligns them by
book/chapter/verse key, splits the books into a *fit* part and a *held-out* part, and writes:

  data/pairs/verses.parquet   one row per aligned verse: key, book, chapter, verse, kjv, web, split
  data/pairs/pairs.parquet    labelled pairs as row indices into verses.parquet (see KINDS below)
  data/pairs/hand_lists.json  the gospel parallel pericopes and the KJV-internal duplicated passages

The evidence calibration (python -m provenance.evidence.calibrate) reads these files only.

    python3 scripts/build_paraphrase_pairs.py [--out data/pairs] [--seed 0]

Quirks of the SWORD output handled here (see data/pairs/SOURCE.md): psalm titles and section headings are
printed in front of the verse key and repeated on later verses (everything before the key is dropped);
the WEB glossary printed after Revelation 22:21 is cut off; some words are glued to their neighbours in the markup (`<w>God</w><w>created</w>`), so the OSIS output
is parsed and a space is put back between adjacent words; the KJV paragraph sign (pilcrow) is removed.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MODULES = {"kjv": "engKJV2006eb", "web": "engWEB2015eb"}
RANGE = "Genesis 1:1-Revelation 22:21"

# The 66 books as diatheke names them, in canonical order.
BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "I Samuel", "II Samuel", "I Kings", "II Kings", "I Chronicles", "II Chronicles", "Ezra", "Nehemiah",
    "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah",
    "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum",
    "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi",
    "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "I Corinthians", "II Corinthians", "Galatians",
    "Ephesians", "Philippians", "Colossians", "I Thessalonians", "II Thessalonians", "I Timothy",
    "II Timothy", "Titus", "Philemon", "Hebrews", "James", "I Peter", "II Peter", "I John", "II John",
    "III John", "Jude", "Revelation of John",
)
GOSPELS = ("Matthew", "Mark", "Luke", "John")


def split_of(book: str) -> str:
    """Held-out books: the four gospels (their parallel passages are the hardest test) and every third
    other book in canonical order. Everything else is used to fit the thresholds."""
    if book in GOSPELS:
        return "held_out"
    others = [b for b in BOOKS if b not in GOSPELS]
    return "held_out" if others.index(book) % 3 == 1 else "fit"


# Well-known parallel pericopes of the gospels (standard synopsis ranges): the same event told by
# different authors. Pairs across gospels are *same-topic* cases, not paraphrases.
GOSPEL_PARALLELS: dict[str, dict[str, str]] = {
    "John the Baptist preaches": {"Matthew": "3:1-12", "Mark": "1:1-8", "Luke": "3:1-18"},
    "Baptism of Jesus": {"Matthew": "3:13-17", "Mark": "1:9-11", "Luke": "3:21-22"},
    "Temptation in the wilderness": {"Matthew": "4:1-11", "Mark": "1:12-13", "Luke": "4:1-13"},
    "Cleansing of a leper": {"Matthew": "8:1-4", "Mark": "1:40-45", "Luke": "5:12-16"},
    "Peter's mother-in-law healed": {"Matthew": "8:14-15", "Mark": "1:29-31", "Luke": "4:38-39"},
    "Calming of the storm": {"Matthew": "8:23-27", "Mark": "4:35-41", "Luke": "8:22-25"},
    "Gerasene demoniac": {"Matthew": "8:28-34", "Mark": "5:1-20", "Luke": "8:26-39"},
    "Healing of the paralytic": {"Matthew": "9:1-8", "Mark": "2:1-12", "Luke": "5:17-26"},
    "Call of Levi": {"Matthew": "9:9-13", "Mark": "2:13-17", "Luke": "5:27-32"},
    "Question about fasting": {"Matthew": "9:14-17", "Mark": "2:18-22", "Luke": "5:33-39"},
    "Jairus' daughter and the woman": {"Matthew": "9:18-26", "Mark": "5:21-43", "Luke": "8:40-56"},
    "Plucking grain on the sabbath": {"Matthew": "12:1-8", "Mark": "2:23-28", "Luke": "6:1-5"},
    "Parable of the sower": {"Matthew": "13:1-9", "Mark": "4:1-9", "Luke": "8:4-8"},
    "Parable of the mustard seed": {"Matthew": "13:31-32", "Mark": "4:30-32", "Luke": "13:18-19"},
    "Feeding of the five thousand": {"Matthew": "14:13-21", "Mark": "6:30-44", "Luke": "9:10-17", "John": "6:1-14"},
    "Walking on the water": {"Matthew": "14:22-33", "Mark": "6:45-52", "John": "6:15-21"},
    "Feeding of the four thousand": {"Matthew": "15:32-39", "Mark": "8:1-10"},
    "Peter's confession": {"Matthew": "16:13-20", "Mark": "8:27-30", "Luke": "9:18-21"},
    "Transfiguration": {"Matthew": "17:1-8", "Mark": "9:2-8", "Luke": "9:28-36"},
    "Blessing the children": {"Matthew": "19:13-15", "Mark": "10:13-16", "Luke": "18:15-17"},
    "The rich young man": {"Matthew": "19:16-22", "Mark": "10:17-22", "Luke": "18:18-23"},
    "Healing of the blind at Jericho": {"Matthew": "20:29-34", "Mark": "10:46-52", "Luke": "18:35-43"},
    "Triumphal entry": {"Matthew": "21:1-11", "Mark": "11:1-11", "Luke": "19:28-40", "John": "12:12-19"},
    "Cleansing of the temple": {"Matthew": "21:12-13", "Mark": "11:15-17", "Luke": "19:45-46", "John": "2:13-17"},
    "Parable of the wicked tenants": {"Matthew": "21:33-46", "Mark": "12:1-12", "Luke": "20:9-19"},
    "Tribute to Caesar": {"Matthew": "22:15-22", "Mark": "12:13-17", "Luke": "20:20-26"},
    "The greatest commandment": {"Matthew": "22:34-40", "Mark": "12:28-34"},
    "The widow's offering": {"Mark": "12:41-44", "Luke": "21:1-4"},
    "Anointing at Bethany": {"Matthew": "26:6-13", "Mark": "14:3-9", "John": "12:1-8"},
    "The Last Supper": {"Matthew": "26:26-29", "Mark": "14:22-25", "Luke": "22:14-20"},
    "Gethsemane": {"Matthew": "26:36-46", "Mark": "14:32-42", "Luke": "22:39-46"},
    "Arrest of Jesus": {"Matthew": "26:47-56", "Mark": "14:43-50", "Luke": "22:47-53", "John": "18:1-11"},
    "Peter's denial": {"Matthew": "26:69-75", "Mark": "14:66-72", "Luke": "22:54-62", "John": "18:25-27"},
    "The crucifixion": {"Matthew": "27:33-44", "Mark": "15:22-32", "Luke": "23:33-43", "John": "19:17-24"},
    "The empty tomb": {"Matthew": "28:1-8", "Mark": "16:1-8", "Luke": "24:1-12", "John": "20:1-10"},
}

# Passages the KJV itself carries twice, copied with small edits (same translation on both sides):
# real "verbatim with edits" cases for the verbatim label.
KJV_DUPLICATES: list[tuple[str, str]] = [
    ("Psalms 14:1-7", "Psalms 53:1-6"),
    ("Psalms 40:13-17", "Psalms 70:1-5"),
    ("Psalms 57:7-11", "Psalms 108:1-5"),
    ("Psalms 60:5-12", "Psalms 108:6-13"),
    ("II Samuel 22:1-51", "Psalms 18:1-50"),
    ("II Kings 18:13-37", "Isaiah 36:1-22"),
    ("II Kings 19:1-37", "Isaiah 37:1-38"),
    ("II Kings 20:1-19", "Isaiah 38:1-8"),
    ("Isaiah 2:2-4", "Micah 4:1-3"),
    ("Ezra 2:1-70", "Nehemiah 7:6-73"),
    ("I Chronicles 16:8-22", "Psalms 105:1-15"),
    ("I Chronicles 16:23-33", "Psalms 96:1-13"),
    ("II Kings 24:18-20", "Jeremiah 52:1-3"),
    ("II Kings 25:1-21", "Jeremiah 52:4-27"),
    ("II Samuel 5:1-10", "I Chronicles 11:1-9"),
    ("I Kings 22:1-35", "II Chronicles 18:1-34"),
]

# Pair kinds in pairs.parquet. a is always a KJV verse; b is a WEB verse unless the kind ends in "_kjv".
KINDS = {
    "paraphrase": "KJV verse vs the WEB translation of the same verse (positive)",
    "neighbour": "KJV verse vs the WEB verse just before or after it in the same chapter (hard negative, same topic)",
    "unrelated": "KJV verse vs a random WEB verse from another book of the same split (negative)",
    "parallel": "KJV gospel verse vs a WEB verse of the parallel pericope in another gospel (same topic)",
    "neighbour_kjv": "KJV verse vs the KJV verse before or after it (null for shared spans, same translation)",
    "unrelated_kjv": "KJV verse vs a random KJV verse from another book (null for shared spans)",
}

_KEY = re.compile(r"(?:^|\s)(" + "|".join(re.escape(b) for b in BOOKS) + r") (\d+):(\d+): ")
_TITLE = re.compile(r"<title[^>]*>.*?</title>", re.S)
_TAG = re.compile(r"<[^>]+>")
# The WEB module appends its glossary to the last verse of Revelation.
_APPENDIX = "The following words used in the World English Bible"


def read_module(module: str) -> dict[tuple[str, int, int], str]:
    """Verse key -> cleaned text, from diatheke's OSIS output of the whole Bible."""
    proc = subprocess.run(
        ["diatheke", "-b", module, "-f", "OSIS", "-k", RANGE], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        sys.exit(f"diatheke failed for {module} (is sword-text-{module[3:6].lower()} installed?): {proc.stderr}")
    verses: dict[tuple[str, int, int], str] = {}
    for line in proc.stdout.splitlines():
        match = _KEY.search(line)
        if match is None:
            continue  # module name trailer, deuterocanon lines such as "Esther (Greek) 1:1"
        key = (match.group(1), int(match.group(2)), int(match.group(3)))
        verses[key] = clean(line[match.end():]).split(_APPENDIX)[0].strip()
    return verses


def clean(markup: str) -> str:
    text = _TITLE.sub(" ", markup)
    text = re.sub(r"</w>(?=\w)", "</w> ", text)  # a word glued after a marked word
    text = re.sub(r"(?<=\w)<w>", " <w>", text)  # a marked word glued after a word
    text = re.sub(r"</w><w>", "</w> <w>", text)
    text = _TAG.sub("", text)
    text = html.unescape(text).replace("\u00b6", " ")
    text = re.sub(r"([,;:!?])(?=[A-Za-z])", r"\1 ", text)  # "behold,I" -> "behold, I"
    text = re.sub(r"\.(?=[A-Z][a-z])", ". ", text)
    return re.sub(r"\s+", " ", text).strip()


def parse_range(spec: str, book: str | None = None) -> tuple[str, int, int, int]:
    """'Psalms 14:1-7' or ('3:1-12', book) -> (book, chapter, first verse, last verse)."""
    if book is None:
        book, spec = spec.rsplit(" ", 1)
    chapter, verses = spec.split(":")
    first, last = verses.split("-") if "-" in verses else (verses, verses)
    return book, int(chapter), int(first), int(last)


def build(out: Path, seed: int) -> None:
    kjv, web = read_module(MODULES["kjv"]), read_module(MODULES["web"])
    keys = [k for k in kjv if k in web and kjv[k] and web[k]]
    order = {b: i for i, b in enumerate(BOOKS)}
    keys.sort(key=lambda k: (order[k[0]], k[1], k[2]))
    verses = pd.DataFrame(
        {
            "key": [f"{b} {c}:{v}" for b, c, v in keys],
            "book": [b for b, _, _ in keys],
            "book_index": np.array([order[b] for b, _, _ in keys], dtype=np.int16),
            "chapter": np.array([c for _, c, _ in keys], dtype=np.int16),
            "verse": np.array([v for _, _, v in keys], dtype=np.int16),
            "kjv": [kjv[k] for k in keys],
            "web": [web[k] for k in keys],
            "split": [split_of(b) for b, _, _ in keys],
        }
    )
    index = {k: i for i, k in enumerate(keys)}
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, int, int, str, str]] = []  # kind, a, b, split, group

    books = verses["book"].to_numpy()
    splits = verses["split"].to_numpy()
    for i, (book, chapter, verse) in enumerate(keys):
        split = splits[i]
        rows.append(("paraphrase", i, i, split, ""))
        for step in (-1, 1):
            j = index.get((book, chapter, verse + step))
            if j is not None:
                rows.append(("neighbour", i, j, split, ""))
                rows.append(("neighbour_kjv", i, j, split, ""))
        pool = np.flatnonzero((splits == split) & (books != book))
        rows.append(("unrelated", i, int(rng.choice(pool)), split, ""))
        rows.append(("unrelated_kjv", i, int(rng.choice(pool)), split, ""))

    for name, ranges in GOSPEL_PARALLELS.items():
        spans = {g: parse_range(r, g) for g, r in ranges.items()}
        members = {
            g: [index[(b, c, v)] for v in range(first, last + 1) if (b, c, v) in index]
            for g, (b, c, first, last) in spans.items()
        }
        for ga, a_rows in members.items():
            for gb, b_rows in members.items():
                if ga == gb:
                    continue
                rows.extend(("parallel", a, b, "held_out", name) for a in a_rows for b in b_rows)

    pairs = pd.DataFrame(rows, columns=["kind", "a", "b", "split", "group"])
    pairs["a"] = pairs["a"].astype(np.int32)
    pairs["b"] = pairs["b"].astype(np.int32)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("verses", verses), ("pairs", pairs)):
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False),
            out / f"{name}.parquet",
            compression="zstd",
            compression_level=19,
        )
    hand = {
        "modules": MODULES,
        "split_rule": split_of.__doc__.strip(),
        "kinds": KINDS,
        "fit_books": [b for b in BOOKS if split_of(b) == "fit"],
        "held_out_books": [b for b in BOOKS if split_of(b) == "held_out"],
        "gospel_parallels": GOSPEL_PARALLELS,
        "kjv_duplicates": [list(p) for p in KJV_DUPLICATES],
        "seed": seed,
    }
    (out / "hand_lists.json").write_text(json.dumps(hand, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    counts = pairs.groupby(["kind", "split"]).size().unstack(fill_value=0)
    print(f"{len(verses)} aligned verses ({(verses['split'] == 'fit').sum()} fit, "
          f"{(verses['split'] == 'held_out').sum()} held out)")
    print(counts.to_string())
    for f in sorted(out.iterdir()):
        print(f"{f.name:20s} {f.stat().st_size / 1e6:6.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.out, args.seed)


if __name__ == "__main__":
    main()
