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
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}")
        value = data.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"{path}: missing CLIP tokenizer file (a tokenizer folder holds vocab.json and merges.txt)")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "copy the file from the checkpoint's tokenizer again") from None


def read_vocab(path: Path) -> dict[str, int]:
    """vocab.json: a non-empty JSON object of token -> distinct non-negative integer ids."""
    try:
        vocab = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(vocab, dict):
        raise InputError(f"{path}: expected a JSON object of token -> id, found {type(vocab).__name__} {str(vocab)[:20]}")
    if not vocab:
        raise InputError(f"{path}: empty vocabulary; copy vocab.json from the checkpoint's tokenizer")
    for token, i in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise InputError(f"{path}: token {token!r} has id {i!r}; ids must be non-negative integers")
    if len(set(vocab.values())) != len(vocab):
        seen: dict[int, str] = {}
        for token, i in vocab.items():
            if i in seen:
                raise InputError(f"{path}: tokens {seen[i]!r} and {token!r} share id {i}; ids must be distinct")
            seen[i] = token
    return vocab


def read_merges(path: Path, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """merges.txt: an optional '#version' line, then one 'left right' pair per line, each symbol
    and their join in the vocabulary. An empty file is an error: without merges every word is
    tokenised letter by letter, which no CLIP text encoder was trained on."""
    lines = _read_text(path).splitlines()
    start = 1 if lines and lines[0].startswith("#version") else 0
    rows = [(n, line.split()) for n, line in enumerate(lines[start:], start + 1) if line.strip()]
    for n, parts in rows:  # one pass that only looks closer at a bad line (49k lines in about 60 ms)
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab or parts[0] + parts[1] not in vocab:
            line = lines[n - 1]
            if len(parts) != 2:
                raise InputError(f"{path}:{n}: expected two symbols, got {line[:60]!r}")
            symbol = next(x for x in (parts[0], parts[1], parts[0] + parts[1]) if x not in vocab)
            raise InputError(f"{path}:{n}: merge {line.strip()[:60]!r} uses {symbol[:40]!r}, which is not in vocab.json; "
                             "vocab.json and merges.txt must come from the same tokenizer")
    merges = [(parts[0], parts[1]) for _, parts in rows]
    if not merges:
        raise InputError(f"{path}: no merges; copy merges.txt from the checkpoint's tokenizer (an empty file tokenises letter by letter)")
    return merges


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
        self.decoder = {i: t for t, i in self.vocab.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.max_length = max_length

        def token_id(token: str, override: int | None, what: str) -> int:
            if override is not None:
                if int(override) not in self.decoder:
                    raise InputError(f"tokenizer: {what} token id {override!r} is not an id of the vocabulary")
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
        """Read and check vocab.json (token -> non-negative integer id) and merges.txt (one merge
        per line, both symbols and their join in the vocabulary, as the reference tokenizer
        requires); every error is one line naming the file."""
        vocab_path, merges_path = Path(vocab_json), Path(merges_txt)
        vocab = read_vocab(vocab_path)
        merges = read_merges(merges_path, vocab)
        try:
            return cls(vocab, merges, **kwargs)
        except InputError as e:
            raise InputError(f"{vocab_path}: {str(e).removeprefix('tokenizer: ')}") from None

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

    def decode(self, ids) -> str:
        """The text of `ids` (special tokens dropped), words separated by single spaces."""
        special = {self.bos_token_id, self.eos_token_id, self.pad_token_id}
        chars = "".join(self.decoder.get(int(i), "") for i in ids if int(i) not in special)
        from_char = {c: b for b, c in self._bytes.items()}
        words = chars.split(END_OF_WORD)
        return " ".join(bytes(from_char.get(c, 0x3F) for c in w).decode("utf-8", errors="replace") for w in words if w).strip()


# Prompts a working CLIP tokenizer must encode and decode back (letters, digits, punctuation).
CHECK_PROMPTS = ("a photo of a cat", "An astronaut riding a horse, highly detailed, 4k", "a red fox in snow!")


def validate_tokenizer_files(folder: str | os.PathLike, prompts=CHECK_PROMPTS, **kwargs) -> ClipTokenizer:
    """Parse a tokenizer folder (vocab.json, merges.txt, the special-token files) and round-trip a
    few prompts through it; a broken file is a one-line InputError naming it. Returns the tokenizer.
    Cheap (about 0.2 s for CLIP's 49k merges): run before any heavy work."""
    folder = Path(folder)
    tok = ClipTokenizer.from_folder(folder, **kwargs)
    n_ids = n_words = 0
    for prompt in prompts:
        ids = tok.tokenize_ids(prompt)
        back = tok.decode(ids)
        if "".join(back.split()) != "".join(normalize(prompt).split()):
            raise InputError(f"{folder / 'merges.txt'}: the tokenizer does not round-trip {prompt!r} (decodes to {back[:60]!r}); "
                             "vocab.json and merges.txt must come from the same CLIP tokenizer")
        n_ids, n_words = n_ids + len(ids), n_words + len(_CLIP_PATTERN.findall(normalize(prompt)))
    if 2 * n_ids > 3 * n_words:  # CLIP's merges make common words one token; without most of them, words fall apart
        raise InputError(f"{folder / 'merges.txt'}: {len(tok.ranks)} merges split {n_words} common words into {n_ids} tokens; "
                         "the file looks truncated (copy it from the checkpoint's tokenizer)")
    return tok
