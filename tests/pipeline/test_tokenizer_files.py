"""Tokenizer files checked before use (pipeline.tokenizer.validate_tokenizer_files): what the
reference tokenizer refuses we refuse, with the file and line named; decode undoes encode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from md_export.core.errors import InputError
from md_export.pipeline.tokenizer import CHECK_PROMPTS, ClipTokenizer, normalize, validate_tokenizer_files

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "src" / "md_export" / "default_model" / "tokenizer"


@pytest.fixture
def tok_copy(tmp_path) -> Path:
    dest = tmp_path / "tokenizer"
    shutil.copytree(TOKENIZER_DIR, dest)
    return dest


def test_the_default_tokenizer_validates():
    tok = validate_tokenizer_files(TOKENIZER_DIR)
    assert len(tok.ranks) > 40_000


@pytest.mark.parametrize("text", [*CHECK_PROMPTS, "DON'T stop: 3.14, café & 漢字 🐱", "word " * 30])
def test_decode_undoes_encode(text):
    tok = ClipTokenizer.from_folder(TOKENIZER_DIR)
    ids = tok.tokenize_ids(text)
    assert "".join(tok.decode(ids).split()) == "".join(normalize(text).split())
    assert tok.decode(tok.encode(text)) == tok.decode(ids[:75])  # bos/eos/pad dropped, truncation kept


def test_a_merge_outside_the_vocabulary_is_refused_like_the_reference(tok_copy):
    transformers = pytest.importorskip("transformers")
    with (tok_copy / "merges.txt").open("a", encoding="utf-8") as f:
        f.write("q zz\n")
    with pytest.raises(Exception, match="out of vocabulary"):
        transformers.CLIPTokenizer.from_pretrained(str(tok_copy))
    lines = (tok_copy / "merges.txt").read_text(encoding="utf-8").splitlines()
    with pytest.raises(InputError, match=rf"merges.txt:{len(lines)}: merge 'q zz' uses 'qzz'"):
        validate_tokenizer_files(tok_copy)


def test_a_truncated_merges_file_is_refused(tok_copy):
    lines = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    (tok_copy / "merges.txt").write_text("\n".join(lines[:300]) + "\n", encoding="utf-8")
    ClipTokenizer.from_folder(tok_copy)  # parses: every merge is well formed
    with pytest.raises(InputError, match="merges.txt: 299 merges split 22 common words into 41 tokens; the file looks truncated"):
        validate_tokenizer_files(tok_copy)


def test_a_pad_id_outside_the_vocabulary_is_refused(tok_copy):
    vocab = json.loads((tok_copy / "vocab.json").read_text(encoding="utf-8"))
    with pytest.raises(InputError, match=r"vocab.json: pad token id 99999999 is not an id"):
        validate_tokenizer_files(tok_copy, pad_token_id=99_999_999)
    assert validate_tokenizer_files(tok_copy, pad_token_id=vocab["!"]).pad_token_id == 0


def test_duplicate_ids_are_refused(tok_copy):
    vocab = json.loads((tok_copy / "vocab.json").read_text(encoding="utf-8"))
    vocab["a</w>"] = vocab["b</w>"]
    (tok_copy / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(InputError, match=r"vocab.json: tokens .* share id"):
        validate_tokenizer_files(tok_copy)
