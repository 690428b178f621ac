"""CLIP byte-level BPE tokenizer in pure Python (numpy for the output only).

Produces the ids transformers' ``CLIPTokenizer`` produces (transformers 5 has only the
``tokenizers``-backed one; without ftfy it is also what the old slow tokenizer used as its
reference), for the use the diffusion pipelines make of it: ``padding="max_length",
truncation=True, max_length=77``.

The steps, in the order the reference applies them:

1. The special tokens (``<|startoftext|>``, ``<|endoftext|>``) are found in the raw text, before
   any normalisation, and become their ids directly.
2. Every other span is normalised: Unicode NFC, each run of whitespace -> one space, lowercase
   (character by character, so no final-sigma rule).
3. Pre-tokenisation: CLIP's pattern keeps letter runs, single digits, runs of other non-space
   characters and the contractions ``'s 't 're 've 'm 'll 'd``; everything else (spaces) is
   dropped. Each piece is then split again with GPT-2's byte-level pattern (this only matters for
   pieces such as a lowercased ``<|StartOfText|>`` written by the user).
4. Each piece is mapped to bytes, each byte to its printable stand-in character, ``</w>`` is
   appended to the last character, and BPE merges are applied lowest rank first.
5. ``bos + ids[: max_length - 2] + eos``, padded with the pad id to ``max_length``.
"""

from __future__ import annotations

import json
import os
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import regex

from md_export.core.errors import InputError

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# The reference runs its patterns with Oniguruma, whose Unicode tables are older than those of the
# `regex` module, and lowercases with Rust's (newer) case tables. Code points added to Unicode after
# Oniguruma's tables are letters/numbers for `regex` but "other" for the reference; these ranges list
# them (measured against tokenizers 0.23 by scanning every code point). Likewise the lowercase
# mappings Rust knows and Python 3.11's `str.lower` does not.
_NOT_WORD_RANGES = (
    (0x0558, 0x0558), (0x058B, 0x058C), (0x088F, 0x088F), (0x0C5C, 0x0C5C), (0x0CDC, 0x0CDC),
    (0x208F, 0x208F), (0x209D, 0x209F), (0xA7CE, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4),
    (0xA7DD, 0xA7DD), (0xA7E2, 0xA7E2), (0xA7F1, 0xA7F1), (0xAB6C, 0xAB6D), (0x107BB, 0x107BF),
    (0x10940, 0x10959), (0x10EC5, 0x10EC7), (0x10ED9, 0x10EEE), (0x11B0A, 0x11B0A), (0x11DB0, 0x11DDB),
    (0x11DE0, 0x11DE9), (0x11DF1, 0x11DF1), (0x1246F, 0x1246F), (0x12475, 0x1247F), (0x12550, 0x12686),
    (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF6), (0x187F8, 0x187FF), (0x18CD6, 0x18CDA),
    (0x18D09, 0x18D20), (0x18D80, 0x18DF2), (0x18E00, 0x19191), (0x191A0, 0x191D2), (0x1B123, 0x1B128),
    (0x1B168, 0x1B168), (0x1D6A6, 0x1D6A6), (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96),
    (0x1DFCD, 0x1DFFF), (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6E2), (0x1E6E4, 0x1E6E5), (0x1E6E7, 0x1E6ED),
    (0x1E6F0, 0x1E6F4), (0x1E6FE, 0x1E6FF), (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E), (0x2CEA2, 0x2CEAD),
    (0x323B0, 0x33479), (0x3D000, 0x3FC3F),
)

_LOWER_OVERRIDES = {
    0x1C89: 0x1C8A, 0xA7CB: 0x0264, 0xA7CC: 0xA7CD, 0xA7CE: 0xA7CF, 0xA7D2: 0xA7D3, 0xA7D4: 0xA7D5,
    0xA7DA: 0xA7DB, 0xA7DC: 0x019B, 0x10D50: 0x10D70, 0x10D51: 0x10D71, 0x10D52: 0x10D72, 0x10D53: 0x10D73,
    0x10D54: 0x10D74, 0x10D55: 0x10D75, 0x10D56: 0x10D76, 0x10D57: 0x10D77, 0x10D58: 0x10D78,
    0x10D59: 0x10D79, 0x10D5A: 0x10D7A, 0x10D5B: 0x10D7B, 0x10D5C: 0x10D7C, 0x10D5D: 0x10D7D,
    0x10D5E: 0x10D7E, 0x10D5F: 0x10D7F, 0x10D60: 0x10D80, 0x10D61: 0x10D81, 0x10D62: 0x10D82,
    0x10D63: 0x10D83, 0x10D64: 0x10D84, 0x10D65: 0x10D85, 0x16EA0: 0x16EBB, 0x16EA1: 0x16EBC,
    0x16EA2: 0x16EBD, 0x16EA3: 0x16EBE, 0x16EA4: 0x16EBF, 0x16EA5: 0x16EC0, 0x16EA6: 0x16EC1,
    0x16EA7: 0x16EC2, 0x16EA8: 0x16EC3, 0x16EA9: 0x16EC4, 0x16EAA: 0x16EC5, 0x16EAB: 0x16EC6,
    0x16EAC: 0x16EC7, 0x16EAD: 0x16EC8, 0x16EAE: 0x16EC9, 0x16EAF: 0x16ECA, 0x16EB0: 0x16ECB,
    0x16EB1: 0x16ECC, 0x16EB2: 0x16ECD, 0x16EB3: 0x16ECE, 0x16EB4: 0x16ECF, 0x16EB5: 0x16ED0,
    0x16EB6: 0x16ED1, 0x16EB7: 0x16ED2, 0x16EB8: 0x16ED3,
}

_LOWER = {chr(k): chr(v) for k, v in _LOWER_OVERRIDES.items()}
_X = "".join(f"\\U{a:08X}-\\U{b:08X}" for a, b in _NOT_WORD_RANGES)
_L = rf"[\p{{L}}--[{_X}]]"
_N = rf"[\p{{N}}--[{_X}]]"
_O = rf"[^\s[\p{{L}}\p{{N}}--[{_X}]]]"  # neither space nor (reference) letter/number
_CLIP_PATTERN = regex.compile(
    rf"(?V1)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|{_L}+|{_N}|{_O}+"
)
_GPT2_PATTERN = regex.compile(rf"(?V1)'s|'t|'re|'ve|'m|'ll|'d| ?{_L}+| ?{_N}+| ?{_O}+|\s+(?!\S)|\s+")
_WHITESPACE = regex.compile(r"\s+")


@lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes stand for themselves, the other 68 bytes are
    given the code points 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(extra)
            extra += 1
    return table


def normalize(text: str) -> str:
    """NFC, whitespace runs to one space, per-character lowercase."""
    text = unicodedata.normalize("NFC", text)
    text = _WHITESPACE.sub(" ", text)
    return "".join(_LOWER.get(ch) or ch.lower() for ch in text)


def _read_special(folder: Path, key: str) -> str | None:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        value = data.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


class ClipTokenizer:
    """CLIP BPE tokenizer. Build with :meth:`from_files` or :meth:`from_folder`."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        *,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        pad_token: str = EOS_TOKEN,
        unk_token: str = EOS_TOKEN,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        max_length: int = 77,
    ):
        self.vocab = dict(vocab)
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.max_length = max_length

        def token_id(token: str, override: int | None, what: str) -> int:
            if override is not None:
                return int(override)
            if token not in self.vocab:
                raise InputError(f"tokenizer: {what} token {token!r} is not in the vocabulary")
            return self.vocab[token]

        self.bos_token_id = token_id(bos_token, bos_token_id, "bos")
        self.eos_token_id = token_id(eos_token, eos_token_id, "eos")
        self.pad_token_id = token_id(pad_token, pad_token_id, "pad")
        self.unk_token_id = token_id(unk_token, None, "unk") if unk_token in self.vocab else self.eos_token_id
        # special tokens recognised verbatim in the raw text (before normalisation)
        self.special = {bos_token: self.bos_token_id, eos_token: self.eos_token_id}
        self._special_split = regex.compile("(" + "|".join(regex.escape(t) for t in sorted(self.special, key=len, reverse=True)) + ")")
        self._bytes = byte_to_char()
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike, **kwargs) -> "ClipTokenizer":
        vocab_path, merges_path = Path(vocab_json), Path(merges_txt)
        try:
            vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
            lines = merges_path.read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read tokenizer files: {exc}") from exc
        if not isinstance(vocab, dict):
            raise InputError(f"{vocab_path}: expected a JSON object token -> id")
        merges: list[tuple[str, str]] = []
        for n, line in enumerate(lines):
            if n == 0 and line.startswith("#version"):
                continue
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise InputError(f"{merges_path}:{n + 1}: expected two symbols, got {line!r}")
            merges.append((parts[0], parts[1]))
        return cls(vocab, merges, **kwargs)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **kwargs) -> "ClipTokenizer":
        """`folder` holds vocab.json and merges.txt, and optionally special_tokens_map.json /
        tokenizer_config.json naming the bos/eos/pad/unk tokens (explicit kwargs win)."""
        folder = Path(folder)
        for key, default in (("bos_token", BOS_TOKEN), ("eos_token", EOS_TOKEN), ("pad_token", None), ("unk_token", None)):
            if key not in kwargs:
                found = _read_special(folder, key)
                if found is not None:
                    kwargs[key] = found
                elif default is not None:
                    kwargs[key] = default
        kwargs.setdefault("pad_token", kwargs.get("eos_token", EOS_TOKEN))
        kwargs.setdefault("unk_token", kwargs.get("eos_token", EOS_TOKEN))
        return cls.from_files(folder / "vocab.json", folder / "merges.txt", **kwargs)

    # ------------------------------------------------------------------ BPE
    def _bpe(self, piece: str) -> list[int]:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        symbols = [self._bytes[b] for b in piece.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        ranks = self.ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for i in range(len(symbols) - 1):
                r = ranks.get((symbols[i], symbols[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = (symbols[i], symbols[i + 1]), r
            if best is None:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.vocab.get(s, self.unk_token_id) for s in symbols]
        if len(self._cache) < 50_000:
            self._cache[piece] = ids
        return ids

    # ------------------------------------------------------------------ public
    def tokenize_ids(self, text: str) -> list[int]:
        """Ids of `text` without bos/eos, padding or truncation."""
        ids: list[int] = []
        for span in self._special_split.split(text):
            if not span:
                continue
            if span in self.special:
                ids.append(self.special[span])
                continue
            for piece in _CLIP_PATTERN.findall(normalize(span)):
                for sub in _GPT2_PATTERN.findall(piece):
                    ids.extend(self._bpe(sub))
        return ids

    def encode(self, text: str, max_length: int | None = None) -> np.ndarray:
        """int32 [max_length]: bos, the text's ids (truncated so that eos stays last), eos, pad."""
        max_length = self.max_length if max_length is None else int(max_length)
        if max_length < 2:
            raise InputError(f"tokenizer: max_length must be at least 2, got {max_length}")
        body = self.tokenize_ids(text)[: max_length - 2]
        ids = [self.bos_token_id, *body, self.eos_token_id]
        ids += [self.pad_token_id] * (max_length - len(ids))
        return np.asarray(ids, dtype=np.int32)

    __call__ = encode
