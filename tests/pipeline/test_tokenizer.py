"""The pure-Python CLIP tokenizer against transformers' CLIPTokenizer on the committed CLIP vocab.

transformers 5 ships only the `tokenizers`-backed CLIPTokenizer (there is no slow Python one any
more), so that is the reference.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from md_export.core.errors import InputError
from md_export.pipeline.tokenizer import ClipTokenizer

transformers = pytest.importorskip("transformers")

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "src" / "md_export" / "default_model" / "tokenizer"

PROMPTS = [
    "a photo of a cat",
    "",
    "   ",
    "A  photo\tof\n\na   CAT!!!",
    "  leading and trailing spaces  ",
    "don't you're I'M we'll they'd it's she's I've",
    "DON'T YOU'RE -- rock'n'roll, ''''s and 'quoted'",
    "3.14159 1234567890 $100,000 2nd 1/2 -7e10 #42 @home",
    "a---b___c...d!?;:()[]{}<>|\\/~`^&*+=%",
    "café naïve résumé Ærøskøbing Straße Œuvre",
    "e\u0301 combining acute, a\u0308, ﬁ ligature, ① ② Ⅻ, ２０２４ full-width",
    "漢字 テスト 한국어 ภาษาไทย العربية עברית हिन्दी",
    "emoji 🐱🚀 👩‍👩‍👧 ❤️ 👍🏽 🇯🇵 and ☕",
    "ΟΔΟΣ Σίσυφος ΣΣ İstanbul ǅ",
    "<|startoftext|>hi",
    "<|StartOfText|>hi",
    "a<|endoftext|>b<|endoftext|>",
    "control\x00chars\x1c\x7f and \ufffd replacement, zero\u200bwidth, nbsp\u00a0here, ideographic\u3000space",
    "a portrait of an old man, highly detailed, 8k, trending on artstation, by greg rutkowski and alphonse mucha",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "word " * 100,  # far over 77 tokens: truncated, eos kept last
    "x" * 500,
    "🐱" * 60,
]


@pytest.fixture(scope="module")
def reference():
    return transformers.CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def ours():
    return ClipTokenizer.from_folder(TOKENIZER_DIR)


def ref_ids(tok, text, max_length=77):
    return tok(text, padding="max_length", max_length=max_length, truncation=True)["input_ids"]


@pytest.mark.parametrize("text", PROMPTS, ids=[repr(p[:24]) for p in PROMPTS])
def test_prompt_matches_transformers(reference, ours, text):
    got = ours.encode(text)
    assert got.dtype == np.int32 and got.shape == (77,)
    assert got.tolist() == ref_ids(reference, text)


def test_special_ids_and_truncation(reference, ours):
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (49406, 49407, 49407)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        reference.bos_token_id, reference.eos_token_id, reference.pad_token_id)
    long = ours.encode("word " * 100)
    assert long[0] == 49406 and long[-1] == 49407 and len(set(long[1:-1].tolist())) == 1
    empty = ours.encode("")
    assert empty[:2].tolist() == [49406, 49407] and (empty[2:] == 49407).all()


@pytest.mark.parametrize("max_length", [2, 8, 16, 77])
def test_other_max_lengths(reference, ours, max_length):
    for text in ("a photo of a cat", "word " * 30, ""):
        assert ours.encode(text, max_length=max_length).tolist() == ref_ids(reference, text, max_length)


def test_random_strings_match(reference, ours):
    rng = random.Random(1234)
    pool = (
        [chr(c) for c in range(0x20, 0x250)]
        + list(" \t\n\r\u00a0\u2009\u3000\u200b\u0085")
        + [chr(c) for c in range(0x370, 0x400)]
        + [chr(c) for c in range(0x300, 0x370)]
        + [chr(c) for c in range(0x4E00, 0x4E40)]
        + [chr(c) for c in range(0xAC00, 0xAC20)]
        + [chr(c) for c in range(0x1F300, 0x1F340)]
        + list("''''sStTdDmMlLvVrReE0123456789")
    )
    bad = []
    for _ in range(1500):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 60)))
        if rng.random() < 0.05:
            text += rng.choice(["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>"])
        if ours.encode(text).tolist() != ref_ids(reference, text):
            bad.append(text)
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]!r}"


def test_code_points_sampled_across_unicode(reference, ours):
    """Every 61st code point (letters, digits, marks, symbols, unassigned, newer scripts) in two
    positions: glued to a letter, and alone."""
    bad = []
    for cp in range(0, 0x40000, 61):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        text = f"a{chr(cp)}b {chr(cp)}"
        if ours.encode(text).tolist() != ref_ids(reference, text):
            bad.append(hex(cp))
    assert not bad, f"{len(bad)} code points differ, e.g. {bad[:10]}"


def test_pad_token_from_folder_and_overrides(tmp_path, reference):
    """SD 2.x tokenizers pad with "!" (id 0): taken from special_tokens_map.json, or overridden."""
    folder = tmp_path / "tok"
    shutil.copytree(TOKENIZER_DIR, folder)
    special = json.loads((folder / "special_tokens_map.json").read_text())
    special["pad_token"] = {"content": "!", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["pad_token"] = "!"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))

    ref = transformers.CLIPTokenizer.from_pretrained(str(folder))
    ours = ClipTokenizer.from_folder(folder)
    assert ours.pad_token_id == ref.pad_token_id == 0
    for text in ("a photo of a cat", "", "word " * 90):
        assert ours.encode(text).tolist() == ref_ids(ref, text)

    by_files = ClipTokenizer.from_files(TOKENIZER_DIR / "vocab.json", TOKENIZER_DIR / "merges.txt", pad_token_id=0)
    assert by_files.encode("a cat").tolist()[-1] == 0
    assert by_files.encode("a cat").tolist() == ref_ids(ref, "a cat")


def test_bad_files(tmp_path):
    with pytest.raises(InputError):
        ClipTokenizer.from_files(tmp_path / "missing.json", tmp_path / "missing.txt")
    (tmp_path / "vocab.json").write_text(json.dumps({"a</w>": 0}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(InputError):
        ClipTokenizer.from_folder(tmp_path)
