#!/usr/bin/env python3
"""Build the shipped demo corpus (data/demo/) from Debian packages installed on this machine.

Why these texts: they are real, human-written, public domain or BSD, and installed by `apt-get` on any
Debian/Ubuntu box, so the demo needs no download from a model or dataset hub. The King James Version
is used only for targets: the KJV rendering of a World English Bible passage is a real, independent
human paraphrase of a text the demo model trains on.

    python3 scripts/build_demo_corpus.py            # (re)write data/demo/
    python3 scripts/build_demo_corpus.py --check    # rebuild in memory, fail if any byte differs

Needs: diatheke, sword-text-web, sword-text-kjv, fortunes, fortunes-min (Debian packages).
The output is deterministic: the same packages give the same bytes (the .xz file: the same
uncompressed bytes; its compressed bytes also depend on the liblzma version).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import lzma
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "data" / "demo"

WEB_MODULE = "engWEB2015eb"
KJV_MODULE = "engKJV2006eb"
BIBLE_KEY = "Genesis 1:1-Revelation 22:21"
FORTUNE_DIR = Path("/usr/share/games/fortunes")
PACKAGES = ("diatheke", "libsword1.9.0", "sword-text-web", "sword-text-kjv", "fortunes", "fortunes-min")

# Book names exactly as diatheke prints them for these modules (WEB includes the deuterocanon).
OLD_TESTAMENT = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "I Samuel", "II Samuel", "I Kings", "II Kings", "I Chronicles", "II Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah",
    "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah",
    "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi",
)
DEUTEROCANON = (
    "Tobit", "Judith", "Esther (Greek)", "Wisdom", "Sirach", "Baruch", "Prayer of Azariah",
    "Susanna", "Bel and the Dragon", "I Maccabees", "II Maccabees", "I Esdras",
    "Prayer of Manasses", "Additional Psalm", "III Maccabees", "II Esdras", "IV Maccabees",
)
NEW_TESTAMENT = (
    "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "I Corinthians", "II Corinthians",
    "Galatians", "Ephesians", "Philippians", "Colossians", "I Thessalonians", "II Thessalonians",
    "I Timothy", "II Timothy", "Titus", "Philemon", "Hebrews", "James", "I Peter", "II Peter",
    "I John", "II John", "III John", "Jude", "Revelation of John",
)
SECTION = {
    **{b: "Old Testament" for b in OLD_TESTAMENT},
    **{b: "Deuterocanon" for b in DEUTEROCANON},
    **{b: "New Testament" for b in NEW_TESTAMENT},
}
_BOOK_ALT = "|".join(re.escape(b) for b in sorted(SECTION, key=len, reverse=True))
# A verse key: "<book> <chapter>:<verse>: ", at the start of a line or after a pre-verse heading.
KEY_RE = re.compile(r"(?<![^\s>])(?P<book>" + _BOOK_ALT + r") (?P<chapter>\d+):(?P<verse>\d+): ")
NOTE_RE = re.compile(r"<note\b[^>]*>.*?</note>", re.DOTALL)
TAG_RE = re.compile(r"<[^>]+>")
NOTE_MARK = "\x00"
# The Song of Solomon has speaker labels inside three verses ("rooms.  Friends  We will ..."); each
# is put on its own line, like the labels printed as headings.
SPEAKER_RE = re.compile(r"\s{2,}(Beloved|Lover|Friends|Brothers)\s{2,}")
# Words glued by the module's markup itself (adjacent <w> elements): "flesh,so", "world.He", "ofAchan".
GLUED_PUNCT_RE = re.compile(r"(?<=[a-z][,;:!?.])(?=[A-Za-z])")
GLUED_WORDS_RE = re.compile(r"\b(of|to|in|and|the)(?=[A-Z][a-z])")
# The WEB module appends its glossary to the text of Revelation 22:21; it is not scripture.
WEB_GLOSSARY_START = "World English Bible Glossary"

# Fortune sets left out, and why (documented in SOURCE.md):
FORTUNE_SKIP = {
    "ascii-art": "pictures, not prose",
    "translate-me": "mostly non-English",
    "ethnic": "jokes about groups of people (not fit for a demo)",
    "men-women": "jokes trading on gender stereotypes (not fit for a demo)",
    "songs-poems": "many song-lyric excerpts whose own copyright the collection's BSD licence cannot cover",
}
FORTUNE_MIN_CHARS = 60
FORTUNE_MAX_CHARS = 700
FORTUNE_STRIDE = 3  # ship every 3rd eligible item position (n % 3 == 0): a few thousand texts
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
OVERSTRIKE_RE = re.compile(r"[^\x08]\x08")

# The demo training subset: whole books (a reader can name them) + a quarter of the shipped fortunes.
DEMO_BOOKS = ("Genesis", "Ruth", "Jonah", "Proverbs", "Mark")
DEMO_PSALMS = range(1, 73)  # Psalms 1-72: Books One and Two of the Psalter, a traditional division
DEMO_FORTUNE_STRIDE = 4  # every 4th shipped fortune, in file order


@dataclass(frozen=True)
class Passage:
    """A verse range of one chapter."""

    book: str
    chapter: int
    first: int
    last: int

    @property
    def ref(self) -> str:
        return f"{self.book} {self.chapter}:{self.first}-{self.last}"


@dataclass(frozen=True)
class TargetSpec:
    target_id: str
    kind: str
    prompt: str
    text_from: str  # "kjv" | "web" | "fortune"
    passage: Passage | None = None  # where the target text comes from (kjv/web)
    fortune: tuple[str, int] | None = None  # (file, item index) for kind "unrelated"
    source_passage: Passage | None = None  # the passage of the training document it relates to
    note: str = ""


TARGETS = (
    TargetSpec(
        "paraphrase-1", "paraphrase", "From the book of Genesis:\n", "kjv",
        passage=Passage("Genesis", 1, 1, 4), source_passage=Passage("Genesis", 1, 1, 4),
        note="KJV rendering of the WEB creation account the model trains on (Genesis 1)",
    ),
    TargetSpec(
        "paraphrase-2", "paraphrase", "A psalm of David:\n", "kjv",
        passage=Passage("Psalms", 23, 1, 4), source_passage=Passage("Psalms", 23, 1, 4),
        note="KJV rendering of the WEB Psalm 23 the model trains on",
    ),
    TargetSpec(
        "paraphrase-3", "paraphrase", "A parable from the Gospel of Mark:\n", "kjv",
        passage=Passage("Mark", 4, 3, 5), source_passage=Passage("Mark", 4, 3, 5),
        note="KJV rendering of the WEB parable of the sower the model trains on (Mark 4)",
    ),
    TargetSpec(
        "topic-1", "topic", "A parable from the Gospel of Luke:\n", "web",
        passage=Passage("Luke", 8, 5, 7), source_passage=Passage("Mark", 4, 3, 7),
        note="Luke's own account of the parable of the sower (Luke is not in the demo subset)",
    ),
    TargetSpec(
        "topic-2", "topic", "From the Gospel of John:\n", "web",
        passage=Passage("John", 1, 1, 5), source_passage=Passage("Genesis", 1, 1, 5),
        note="John's prologue retells the beginning, light and darkness (John is not in the demo subset)",
    ),
    TargetSpec(
        "topic-3", "topic", "From the Gospel of Matthew:\n", "web",
        passage=Passage("Matthew", 14, 15, 17), source_passage=Passage("Mark", 6, 35, 38),
        note="Matthew's account of the feeding of the five thousand (Matthew is not in the demo subset)",
    ),
    TargetSpec(
        "unrelated-1", "unrelated", "A fortune cookie:\n", "fortune", fortune=("computers", 23),
        note="a fortune that is not in the shipped corpus (so not in any training subset)",
    ),
    TargetSpec(
        "unrelated-2", "unrelated", "A fortune cookie:\n", "fortune", fortune=("science", 32),
        note="a fortune that is not in the shipped corpus (so not in any training subset)",
    ),
    TargetSpec(
        "unrelated-3", "unrelated", "A fortune cookie:\n", "fortune", fortune=("pets", 11),
        note="a fortune that is not in the shipped corpus (so not in any training subset)",
    ),
)


# --------------------------------------------------------------------------------------------------
# Bible text: diatheke OSIS output -> verses -> chapter documents


@dataclass
class Verse:
    number: int
    text: str
    heading: str = ""


@dataclass
class BibleStats:
    lines: int = 0
    verses: int = 0
    empty_verses: int = 0
    empty_by_book: dict[str, int] = field(default_factory=dict)
    notes_removed: int = 0
    glue_repaired: int = 0
    headings: int = 0
    leaked_headings_dropped: list[str] = field(default_factory=list)
    glossary_chars_removed: int = 0


def run_diatheke(module: str) -> str:
    """OSIS output with footnotes (f) and headings (h) switched on.

    OSIS, not plain: in plain output, footnote markers glue words ("Godcreated"), poetry spans
    lines and headings repeat on every verse. In OSIS with -o fh every verse is one line, notes
    are <note> elements (removed here) and a heading is printed once, before its verse key.
    """
    cmd = ["diatheke", "-b", module, "-f", "OSIS", "-o", "fh", "-k", BIBLE_KEY]
    out = subprocess.run(cmd, check=True, capture_output=True)
    return out.stdout.decode("utf-8")


def clean_markup(raw: str, stats: BibleStats) -> str:
    """Strip OSIS tags and notes, keep the words; a removed note leaves a word break."""
    text, n = NOTE_RE.subn(NOTE_MARK, raw)
    stats.notes_removed += n
    text = html.unescape(TAG_RE.sub("", text))
    text = text.replace("¶", " ")  # KJV paragraph marks are editorial
    # A note sat between two words ("God<note/>created") or before punctuation ("Son,<note/> lest").
    text = re.sub(r"\s*\x00\s*(?=[,.;:!?’”)\]])", "", text)
    text = re.sub(r"\s*\x00\s*", " ", text)
    text, n1 = GLUED_PUNCT_RE.subn(" ", text)
    text, n2 = GLUED_WORDS_RE.subn(r"\1 ", text)
    stats.glue_repaired += n1 + n2
    text = re.sub(r"[^\S\n]+", " ", text)  # newlines only come from SPEAKER_RE
    return re.sub(r" ?\n ?", "\n", text).strip()


def parse_osis(raw: str, module: str, stats: BibleStats) -> dict[tuple[str, int], list[Verse]]:
    """Map (book, chapter) -> verses in text order."""
    chapters: dict[tuple[str, int], list[Verse]] = {}
    lines = raw.split("\n")
    previous_heading = ""
    previous_book = ""
    for line in lines:
        if not line.strip() or line.strip() == f"({module})":
            continue
        stats.lines += 1
        match = KEY_RE.search(line)
        if match is None:
            raise SystemExit(f"{module}: line without a verse key: {line[:120]!r}")
        book, chapter, verse = match["book"], int(match["chapter"]), int(match["verse"])
        heading = clean_markup(line[: match.start()], stats)
        body = line[match.end() :]
        if WEB_GLOSSARY_START in body:
            cut = body.index(WEB_GLOSSARY_START)
            stats.glossary_chars_removed += len(body) - cut
            body = body[:cut]
        if heading and book != previous_book and heading == previous_heading:
            # SWORD carries the last pre-verse heading over a book boundary ("Beloved" from the
            # Song of Solomon lands on Isaiah 1:1): drop it.
            stats.leaked_headings_dropped.append(f"{book} {chapter}:{verse}: {heading}")
            heading = ""
        if heading:
            stats.headings += 1
            previous_heading = heading
        previous_book = book
        if book == "Song of Solomon":
            body = SPEAKER_RE.sub(r"\n\1\n", body)
        text = clean_markup(body, stats)
        if not text:
            stats.empty_verses += 1
            stats.empty_by_book[book] = stats.empty_by_book.get(book, 0) + 1
            continue
        stats.verses += 1
        chapters.setdefault((book, chapter), []).append(Verse(verse, text, heading))
    return chapters


def book_slug(book: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "", book.replace(" ", "_"))


def web_doc_id(book: str, chapter: int) -> str:
    return f"web:{book_slug(book)}.{chapter}"


def chapter_document(book: str, chapter: int, verses: list[Verse]) -> dict:
    """One document per chapter: verses joined by spaces, a heading on its own line.

    Verse numbers are left out of the text (they are not prose); metadata["verses"] keeps, per
    verse, [number, start_char, end_char] into the text, so a span can be named by its verses.
    """
    parts: list[str] = []
    spans: list[list[int]] = []
    length = 0
    for verse in verses:
        if verse.heading:
            sep = "\n" if parts else ""
            parts.append(sep + verse.heading + "\n")
            length += len(sep) + len(verse.heading) + 1
        elif parts and not parts[-1].endswith("\n"):
            parts.append(" ")
            length += 1
        spans.append([verse.number, length, length + len(verse.text)])
        parts.append(verse.text)
        length += len(verse.text)
    text = "".join(parts)
    return {
        "id": web_doc_id(book, chapter),
        "text": text,
        "source": "World English Bible",
        "metadata": {
            "book": book,
            "chapter": chapter,
            "section": SECTION[book],
            "translation": f"World English Bible ({WEB_MODULE})",
            "licence": "public domain",
            "verses": spans,
        },
    }


def passage_text(chapters: dict[tuple[str, int], list[Verse]], passage: Passage) -> str:
    verses = {v.number: v.text for v in chapters[(passage.book, passage.chapter)]}
    wanted = range(passage.first, passage.last + 1)
    missing = [n for n in wanted if n not in verses]
    if missing:
        raise SystemExit(f"{passage.ref}: verses {missing} not found")
    return " ".join(verses[n] for n in wanted)


# --------------------------------------------------------------------------------------------------
# Fortunes


def fortune_items(name: str) -> list[str]:
    """All items of a strfile source, in file order (item n = the n-th text between '%' lines)."""
    raw = (FORTUNE_DIR / name).read_bytes().decode("utf-8")
    items: list[str] = []
    current: list[str] = []
    for line in raw.split("\n"):
        if line == "%":
            items.append("\n".join(current))
            current = []
        else:
            current.append(line)
    if any(x.strip() for x in current):
        items.append("\n".join(current))
    return items


def clean_fortune(item: str) -> str | None:
    """Undo terminal overstriking (x^H_ underline/bold), trim; None if it still has control bytes."""
    text = item
    while OVERSTRIKE_RE.search(text):
        text = OVERSTRIKE_RE.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
    text = text.strip()
    if CONTROL_RE.search(text):
        return None
    return text


def fortune_files() -> list[str]:
    return sorted(
        p.name
        for p in FORTUNE_DIR.iterdir()
        if p.is_file() and not p.is_symlink() and not p.name.endswith((".dat", ".u8"))
    )


def eligible(text: str | None) -> bool:
    return text is not None and FORTUNE_MIN_CHARS <= len(text) <= FORTUNE_MAX_CHARS


def fortune_documents(versions: dict[str, str]) -> tuple[list[dict], dict]:
    docs: list[dict] = []
    stats: dict = {"files": {}, "skipped_files": {}, "duplicates": []}
    seen: dict[str, str] = {}  # text -> id of the first shipped item with it
    for name in fortune_files():
        if name in FORTUNE_SKIP:
            stats["skipped_files"][name] = FORTUNE_SKIP[name]
            continue
        items = fortune_items(name)
        package = "fortunes-min" if name == "fortunes" else "fortunes"
        kept = 0
        for n, item in enumerate(items):
            text = clean_fortune(item)
            if n % FORTUNE_STRIDE or text is None or not eligible(text):
                continue
            if text in seen:  # the same quip filed under two topics: ship it once
                stats["duplicates"].append(f"fortune:{name}:{n} = {seen[text]}")
                continue
            seen[text] = f"fortune:{name}:{n}"
            kept += 1
            docs.append(
                {
                    "id": f"fortune:{name}:{n}",
                    "text": text,
                    "source": f"fortunes/{name}",
                    "metadata": {
                        "file": name,
                        "item": n,
                        "package": f"{package} {versions[package]}",
                        "licence": "BSD (fortune-mod collection)",
                    },
                }
            )
        stats["files"][name] = {"items": len(items), "shipped": kept}
    return docs, stats


# --------------------------------------------------------------------------------------------------
# Targets and the demo subset


def build_targets(
    web: dict[tuple[str, int], list[Verse]],
    kjv: dict[tuple[str, int], list[Verse]],
    shipped_ids: set[str],
    demo_ids: list[str],
) -> list[dict]:
    demo = set(demo_ids)
    rows = []
    for spec in TARGETS:
        source_doc_id = None
        source_passage = None
        if spec.text_from == "fortune":
            if spec.fortune is None:
                raise SystemExit(f"{spec.target_id}: a fortune target needs `fortune`")
            name, n = spec.fortune
            text = clean_fortune(fortune_items(name)[n])
            if not eligible(text):
                raise SystemExit(f"{spec.target_id}: fortune {name}:{n} is not an eligible text")
            if f"fortune:{name}:{n}" in shipped_ids:
                raise SystemExit(f"{spec.target_id}: fortune {name}:{n} is in the shipped corpus")
            text_source = f"fortunes/{name} item {n} (not in the shipped corpus)"
        else:
            if spec.passage is None or spec.source_passage is None:
                raise SystemExit(f"{spec.target_id}: a Bible target needs `passage` and `source_passage`")
            table = kjv if spec.text_from == "kjv" else web
            text = passage_text(table, spec.passage)
            label = "King James Version" if spec.text_from == "kjv" else "World English Bible"
            module = KJV_MODULE if spec.text_from == "kjv" else WEB_MODULE
            text_source = f"{label} ({module}), {spec.passage.ref}"
            source_doc_id = web_doc_id(spec.source_passage.book, spec.source_passage.chapter)
            source_passage = f"World English Bible, {spec.source_passage.ref}"
            if source_doc_id not in demo:
                raise SystemExit(f"{spec.target_id}: {source_doc_id} is not in the demo subset")
            if spec.text_from == "web" and web_doc_id(spec.passage.book, spec.passage.chapter) in demo:
                raise SystemExit(f"{spec.target_id}: its own text {spec.passage.ref} is in the demo subset")
        rows.append(
            {
                "id": spec.target_id,
                "prompt": spec.prompt,
                "text": text,
                "source_doc_id": source_doc_id,
                "kind": spec.kind,
                "text_source": text_source,
                "source_passage": source_passage,
                "note": spec.note,
            }
        )
    return rows


def demo_subset(web_docs: list[dict], fortune_docs: list[dict]) -> list[str]:
    ids = [
        d["id"]
        for d in web_docs
        if d["metadata"]["book"] in DEMO_BOOKS
        or (d["metadata"]["book"] == "Psalms" and d["metadata"]["chapter"] in DEMO_PSALMS)
    ]
    ids += [d["id"] for i, d in enumerate(fortune_docs) if i % DEMO_FORTUNE_STRIDE == 0]
    return ids


# --------------------------------------------------------------------------------------------------
# Output


def package_versions() -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *PACKAGES],
        check=True, capture_output=True, text=True,
    ).stdout
    return dict(line.split("\t") for line in out.strip().split("\n"))


def module_version(module: str) -> str:
    for line in Path(f"/usr/share/sword/mods.d/{module}.conf").read_text().splitlines():
        if line.startswith("Version="):
            return line.split("=", 1)[1].strip()
    return "unknown"


def jsonl_bytes(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9)


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def source_md(facts: dict) -> str:
    f = facts
    skipped = "\n".join(f"  - `{k}`: {v}" for k, v in sorted(f["fortune_stats"]["skipped_files"].items()))
    targets = "\n".join(
        f"| `{t['id']}` | {t['kind']} | {t['text_source']} | {t['source_doc_id'] or '—'} |"
        for t in f["targets"]
    )
    leaked = ", ".join(f["bible_stats"]["web"].leaked_headings_dropped) or "none"
    empty = ", ".join(f"{b}: {n}" for b, n in f["bible_stats"]["web"].empty_by_book.items())
    return f"""# The demo corpus: where it comes from

Generated by `python3 scripts/build_demo_corpus.py` (do not edit by hand; rerun it). The script is
deterministic: the same Debian packages give the same bytes (`--check` verifies this; for the .xz file
it compares the uncompressed bytes, as another liblzma version may compress differently).

## Files

| file | content |
| --- | --- |
| `corpus.jsonl.xz` | {f['n_docs']} documents, one JSON object per line: `id`, `text`, `source`, `metadata` ({mb(f['raw_bytes'])} of JSONL, {mb(f['text_bytes'])} of text; {mb(f['xz_bytes'])} compressed) |
| `demo_subset.txt` | the doc ids of the demo training subset, one per line ({f['n_demo']} documents, {mb(f['demo_text_bytes'])} of text) |
| `targets.jsonl` | {len(f['targets'])} targets for the demo: `id`, `prompt`, `text`, `source_doc_id`, `kind`, plus `text_source`, `source_passage`, `note` |
| `SOURCE.md`, `LICENSE` | this file and the licence note |

SHA-256 of the uncompressed `corpus.jsonl` (stable across xz versions): `{f['jsonl_sha256']}`

## Packages (Debian)

| package | version |
| --- | --- |
{chr(10).join(f'| {k} | {v} |' for k, v in sorted(f['versions'].items()))}

SWORD modules: `{WEB_MODULE}` version {f['web_version']} (World English Bible with Deuterocanon),
`{KJV_MODULE}` version {f['kjv_version']} (King James Version, 1769 text, protocanon only).

## World English Bible (the training text)

Command: `diatheke -b {WEB_MODULE} -f OSIS -o fh -k "{BIBLE_KEY}"`

- OSIS output, not `-f plain`: in plain output the footnote markers glue words together ("Godcreated"),
  poetry spans several lines, and headings are repeated before every verse. In OSIS with footnotes and
  headings switched on (`-o fh`), each verse is one line, footnotes are `<note>` elements and a heading
  is printed once, before its verse key.
- Cleaning: footnotes removed ({f['bible_stats']['web'].notes_removed} notes; a removed note leaves a single
  space between words, none before punctuation), all other tags removed, whitespace collapsed. Words that
  the module's own markup glues together ("flesh,so", "world.He", "ofAchan") get their space back
  ({f['bible_stats']['web'].glue_repaired} places). The words themselves are unchanged.
- Verse numbers are not kept in the text; `metadata.verses` lists `[verse, start_char, end_char]` for
  every verse of the chapter.
- Headings (Psalm superscriptions, Psalm 119's Hebrew letters, the speaker labels of the Song of
  Solomon; {f['bible_stats']['web'].headings} in all) are kept, each on its own line, before their verse; the
  three speaker labels that the module puts inside a verse of the Song of Solomon also get their own line.
  A heading that SWORD carries over a book boundary was dropped: {leaked}.
- The module appends its glossary to Revelation 22:21; it was cut ({f['bible_stats']['web'].glossary_chars_removed}
  characters), as it is not part of the text.
- {f['bible_stats']['web'].empty_verses} verse keys that the module leaves empty were skipped ({empty}).
- One document per chapter: {f['n_web']} chapters of {f['n_books']} books (Old Testament, Deuterocanon, New
  Testament), id `web:<Book>.<chapter>` (book name as SWORD prints it, spaces as `_`, parentheses
  dropped: `web:I_Samuel.3`, `web:Esther_Greek.1`, `web:Revelation_of_John.22`), source `World English
  Bible`, metadata `book`, `chapter`, `section`, `translation`, `licence`, `verses`.

## King James Version (targets only)

Command: `diatheke -b {KJV_MODULE} -f OSIS -o fh -k "{BIBLE_KEY}"`, cleaned the same way (its
translators' marginal notes and the ¶ paragraph marks removed). It is not part of the corpus: it only
supplies the paraphrase targets, a real human re-rendering of passages the demo model trains on.

## Fortunes (BSD)

Files `/usr/share/games/fortunes/*` (packages `fortunes`; the file `fortunes` is from `fortunes-min`).
The offensive sets (`fortunes-off`, the `off/` folder) are not installed and not used. Each file is a
list of texts separated by `%` lines; item `n` is the n-th text of the file (0-based).

- Cleaning: terminal overstriking (`x BACKSPACE _`) undone, trailing spaces of lines removed; an item
  still holding control bytes is skipped.
- Kept: items of {FORTUNE_MIN_CHARS}-{FORTUNE_MAX_CHARS} characters at positions `n % {FORTUNE_STRIDE} == 0` (so the other
  positions stay out of the corpus and can serve as unseen texts), files in sorted order, an item whose
  text was already kept from another file skipped ({len(f['fortune_stats']['duplicates'])}:
  {', '.join(f['fortune_stats']['duplicates'])}): {f['n_fortunes']} documents, id `fortune:<file>:<n>`, source `fortunes/<file>`.
- Files left out:
{skipped}

## The demo training subset (`demo_subset.txt`)

The demo trains a small GPT-2 on a CPU in minutes, so it uses: the whole books {', '.join(DEMO_BOOKS)},
Psalms 1-72 (Books One and Two of the Psalter), and every {DEMO_FORTUNE_STRIDE}th shipped fortune (in file order):
{f['n_demo_web']} chapters + {f['n_demo_fortunes']} fortunes = {f['n_demo']} documents, {mb(f['demo_text_bytes'])} of text.
`provenance.data.demo.load_demo_corpus("demo")` loads it; `load_demo_corpus("full")` loads everything.

## Targets (`targets.jsonl`)

| id | kind | text from | training document it relates to |
| --- | --- | --- | --- |
{targets}

- `paraphrase`: the KJV wording of a passage whose WEB wording is in the demo subset.
- `topic`: the same event or theme told by another book (WEB wording); that book is not in the subset.
- `unrelated`: a fortune at a position not shipped at all (`n % {FORTUNE_STRIDE} != 0`), so it is in no training set.

## Licences

- World English Bible: public domain (dedicated by its translators; "World English Bible" is a
  trademark of eBible.org: a changed text must not be called the WEB; here the words are unchanged,
  only footnotes and verse numbers were removed and line layout of headings set).
- King James Version: public domain, except in the United Kingdom, where the right to print it is
  vested in the Crown (letters patent; Cambridge University Press, Oxford University Press and Collins
  hold the Queen's/King's Printer's patent). Only a few verses are shipped here, as targets.
- Fortunes: the fortune-mod collection is distributed under the BSD licence (see `LICENSE` and
  `/usr/share/doc/fortunes/copyright`). The texts are quotations by many authors; the collection's
  licence is what Debian (main) relies on.
"""


LICENSE_TEXT = """Licence note for data/demo/

corpus.jsonl.xz and targets.jsonl contain texts under the following terms (details in SOURCE.md):

1. World English Bible (documents with source "World English Bible", and the WEB text of the "topic"
   targets): public domain. "World English Bible" is a trademark of eBible.org; a changed text must not
   be called the World English Bible.

2. King James Version (the text of the "paraphrase" targets): public domain outside the United
   Kingdom. In the UK the right to print it is vested in the Crown by letters patent (the Queen's /
   King's Printer's patent held by Cambridge University Press, Oxford University Press and Collins).

3. Fortunes (documents with source "fortunes/<file>", and the "unrelated" targets): from the Debian
   packages fortunes and fortunes-min (fortune-mod 1.99.1), distributed under the BSD licence:

   Copyright (c) 1991 The Regents of the University of California.
   All rights reserved.

   Redistribution and use in source and binary forms, with or without modification, are permitted
   provided that the following conditions are met:
   1. Redistributions of source code must retain the above copyright notice, this list of conditions
      and the following disclaimer.
   2. Redistributions in binary form must reproduce the above copyright notice, this list of
      conditions and the following disclaimer in the documentation and/or other materials provided
      with the distribution.
   3. [Deleted; see ftp://ftp.cs.berkeley.edu/pub/4bsd/README.Impt.License.Change]
   4. Neither the name of the University nor the names of its contributors may be used to endorse or
      promote products derived from this software without specific prior written permission.

   THIS SOFTWARE IS PROVIDED BY THE REGENTS AND CONTRIBUTORS ``AS IS'' AND ANY EXPRESS OR IMPLIED
   WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS
   FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE REGENTS OR CONTRIBUTORS BE LIABLE
   FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT
   NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR
   BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT
   LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS
   SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


def build() -> tuple[dict[str, bytes], dict]:
    """Everything in memory: {file name: bytes}, plus the facts printed and written to SOURCE.md."""
    versions = package_versions()
    web_stats, kjv_stats = BibleStats(), BibleStats()
    print("[build] diatheke: World English Bible ...", file=sys.stderr)
    web = parse_osis(run_diatheke(WEB_MODULE), WEB_MODULE, web_stats)
    print("[build] diatheke: King James Version ...", file=sys.stderr)
    kjv = parse_osis(run_diatheke(KJV_MODULE), KJV_MODULE, kjv_stats)
    web_docs = [chapter_document(b, c, vs) for (b, c), vs in web.items()]
    fortune_docs, fortune_stats = fortune_documents(versions)
    docs = web_docs + fortune_docs
    ids = [d["id"] for d in docs]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate document ids")
    demo_ids = demo_subset(web_docs, fortune_docs)
    targets = build_targets(web, kjv, set(ids), demo_ids)

    corpus_raw = jsonl_bytes(docs)
    corpus_xz = xz(corpus_raw)
    by_id = {d["id"]: d for d in docs}
    facts = {
        "versions": versions,
        "web_version": module_version(WEB_MODULE),
        "kjv_version": module_version(KJV_MODULE),
        "bible_stats": {"web": web_stats, "kjv": kjv_stats},
        "fortune_stats": fortune_stats,
        "n_docs": len(docs),
        "n_web": len(web_docs),
        "n_books": len({d["metadata"]["book"] for d in web_docs}),
        "n_fortunes": len(fortune_docs),
        "raw_bytes": len(corpus_raw),
        "text_bytes": sum(len(d["text"].encode("utf-8")) for d in docs),
        "xz_bytes": len(corpus_xz),
        "jsonl_sha256": hashlib.sha256(corpus_raw).hexdigest(),
        "n_demo": len(demo_ids),
        "n_demo_web": sum(1 for i in demo_ids if i.startswith("web:")),
        "n_demo_fortunes": sum(1 for i in demo_ids if i.startswith("fortune:")),
        "demo_text_bytes": sum(len(by_id[i]["text"].encode("utf-8")) for i in demo_ids),
        "targets": targets,
    }
    files = {
        "corpus.jsonl.xz": corpus_xz,
        "demo_subset.txt": "".join(i + "\n" for i in demo_ids).encode("utf-8"),
        "targets.jsonl": jsonl_bytes(targets),
        "SOURCE.md": source_md(facts).encode("utf-8"),
        "LICENSE": LICENSE_TEXT.encode("utf-8"),
    }
    return files, facts


def same_content(path: Path, data: bytes) -> bool:
    """Byte equality; for .xz the decompressed bytes (another liblzma may compress differently)."""
    if not path.is_file():
        return False
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes()) == lzma.decompress(data)
    return path.read_bytes() == data


def write_atomic(path: Path, data: bytes) -> None:
    sys.path.insert(0, str(REPO))
    from provenance.store.atomic import write_bytes

    write_bytes(path, data)
    path.chmod(0o644)  # mkstemp makes 0600; these are shipped, world-readable data files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default data/demo)")
    parser.add_argument("--check", action="store_true", help="rebuild and compare with --out; write nothing")
    args = parser.parse_args(argv)
    files, facts = build()
    if args.check:
        differ = [n for n, b in files.items() if not same_content(args.out / n, b)]
        if differ:
            print(f"[check] differs from {args.out}: {differ}", file=sys.stderr)
            return 1
        print(f"[check] {args.out}: all {len(files)} files identical")
        return 0
    for name, data in files.items():
        write_atomic(args.out / name, data)
    f, s = facts, facts["bible_stats"]["web"]
    print(f"documents        {f['n_docs']} ({f['n_web']} WEB chapters, {f['n_fortunes']} fortunes)")
    print(f"text             {mb(f['text_bytes'])} (JSONL {mb(f['raw_bytes'])}, xz {mb(f['xz_bytes'])})")
    print(
        f"demo subset      {f['n_demo']} documents ({f['n_demo_web']} chapters + "
        f"{f['n_demo_fortunes']} fortunes), {mb(f['demo_text_bytes'])} of text"
    )
    print(f"WEB verses       {s.verses} (notes removed {s.notes_removed}, headings {s.headings})")
    print(f"targets          {len(f['targets'])}")
    print(f"written          {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
