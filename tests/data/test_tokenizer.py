"""Tokenizer: deterministic training, the special token, save/load, bad files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from provenance.data import EOT_ID, EOT_TOKEN, eot_id, load_tokenizer, save_tokenizer, train_tokenizer
from provenance.errors import TokenizerError
from .helpers import make_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("tok"))


def test_special_token_and_vocab(corpus) -> None:
    tok = train_tokenizer(corpus, vocab_size=400)
    assert tok.token_to_id(EOT_TOKEN) == 0 == EOT_ID == eot_id(tok)
    assert tok.get_vocab_size() <= 400
    assert tok.get_vocab_size() > 257  # merges were learned
    # The special token is one id, never split, and plain text never produces it.
    assert tok.encode(EOT_TOKEN, add_special_tokens=False).ids == [0]
    assert 0 not in tok.encode(corpus.documents[0].text, add_special_tokens=False).ids


def test_roundtrip_any_text(corpus) -> None:
    tok = train_tokenizer(corpus, vocab_size=400)
    texts = ["Caf\u00e9 \u2014 \u65e5\u672c\u8a9e and emoji \U0001f600", "  leading spaces\n\ttabs\r\n"]
    for text in [*texts, corpus.documents[3].text]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text


def test_training_is_deterministic(corpus) -> None:
    assert train_tokenizer(corpus, 400).to_str() == train_tokenizer(corpus, 400).to_str()


def test_training_is_deterministic_across_processes(corpus, tmp_path: Path) -> None:
    """Another interpreter (other hash seed, one thread) trains the very same tokenizer."""
    code = (
        "import hashlib, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from tests.data.helpers import make_corpus; from provenance.data import train_tokenizer;"
        "t = train_tokenizer(make_corpus(Path(sys.argv[2])), 400);"
        "print(hashlib.sha256(t.to_str().encode()).hexdigest())"
    )
    env = {"PYTHONHASHSEED": "12345", "RAYON_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-c", code, str(REPO), str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    here = hashlib.sha256(train_tokenizer(corpus, 400).to_str().encode()).hexdigest()
    assert out.stdout.strip() == here


def test_save_and_load(corpus, tmp_path: Path) -> None:
    tok = train_tokenizer(corpus, vocab_size=400)
    file = save_tokenizer(tok, tmp_path / "tokenizer.json")
    assert file == tmp_path / "tokenizer.json"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left behind
    text = corpus.documents[5].text
    for where in (file, tmp_path):  # the file, or the folder holding it
        loaded = load_tokenizer(where)
        assert loaded.encode(text).ids == tok.encode(text).ids
    folder = tmp_path / "run_tok"
    folder.mkdir()
    assert save_tokenizer(tok, folder) == folder / "tokenizer.json"


def test_vocab_too_small(corpus) -> None:
    with pytest.raises(TokenizerError, match="at least 257"):
        train_tokenizer(corpus, vocab_size=100)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not a tokenizer")
    with pytest.raises(TokenizerError, match="not a valid"):
        load_tokenizer(bad)
    plain = Tokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    no_eot = tmp_path / "no_eot.json"
    no_eot.write_text(plain.to_str())
    with pytest.raises(TokenizerError, match="add_special_tokens"):
        load_tokenizer(no_eot)


def test_user_tokenizer_keeps_its_own_eot_id(corpus, tmp_path: Path) -> None:
    tok = train_tokenizer(corpus, vocab_size=300)
    data = json.loads(tok.to_str())
    # Move <|endoftext|> to the end of the vocabulary, as in GPT-2's own tokenizer (id 50256).
    last = max(data["model"]["vocab"].values()) + 1
    data["model"]["vocab"][EOT_TOKEN] = last
    data["added_tokens"][0]["id"] = last
    path = tmp_path / "user.json"
    path.write_text(json.dumps(data))
    assert eot_id(load_tokenizer(path)) == last
