"""Build md-export's bundled default model: a tiny SD-1.5-shaped pipeline with seeded random weights.

The result is a diffusers pipeline folder (src/md_export/default_model/) that is committed, so
`md-export export` with no checkpoint has something real to export on a fresh machine.

The CLIP tokenizer files are derived from OpenAI CLIP's published BPE merge list (MIT licence), the
`bpe_simple_vocab_16e6.txt.gz` that ships inside the `open_clip_torch` wheel on PyPI:

    pip download --no-deps open_clip_torch -d /tmp/oc && unzip -o /tmp/oc/*.whl 'open_clip/*.gz' -d /tmp/oc
    python scripts/make_default_model.py --clip-bpe /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz

The vocabulary is the standard construction: 256 byte symbols, the same with "</w>", one token per
merge, then <|startoftext|> and <|endoftext|> (49408 in all), as transformers' CLIPTokenizer expects.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import torch

from md_export.families.tiny import tiny_sd_components

OUT = Path(__file__).resolve().parents[1] / "src" / "md_export" / "default_model"
N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48894 merges of the list


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_tokenizer(bpe_gz: Path, out: Path) -> None:
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    assert len(vocab) == 49408, len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip-bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz; omit to keep the committed tokenizer")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    unet, text_encoder, vae, scheduler = tiny_sd_components(seed=0, vocab_size=49408)
    out: Path = args.out
    for sub in ("unet", "text_encoder", "vae", "scheduler"):
        shutil.rmtree(out / sub, ignore_errors=True)
    # fp16 on disk keeps the package small; md-export loads everything as fp32.
    unet.to(torch.float16).save_pretrained(out / "unet")
    text_encoder.to(torch.float16).save_pretrained(out / "text_encoder")
    vae.to(torch.float16).save_pretrained(out / "vae")
    scheduler.save_pretrained(out / "scheduler")
    if args.clip_bpe:
        write_tokenizer(args.clip_bpe, out / "tokenizer")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "_md_export_note": "tiny random-weight default model built by scripts/make_default_model.py (seed 0)",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
