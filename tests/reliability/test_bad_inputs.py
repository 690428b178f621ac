"""Bad input, as a demanding user gives it: one case per row, each run through the command line
in-process. Every case must exit 2 with one line naming the file, field, tensor or option, and
must leave the files around it as they were (a snapshot of the whole temporary tree before and
after: no output folder, no staging folder, no edited input).

Broken checkpoints are copies of the bundled default model (6.7 MB) with one config field, one
tokenizer file or one tensor changed; a bundle for `check` and `generate` is a valid manifest over
empty model files, enough for refusals that must come before any model is opened."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from md_export.checkpoint.files import default_model_dir
from md_export.checkpoint.folder import Checkpoint
from md_export.cli.app import main

# -- helpers ----------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root -> 'dir' or the sha1 of the file's bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("md-export: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def clean_ckpt(root) -> Path:
    """A private copy of the default model: the cases that do not break the checkpoint use it, so
    the snapshot covers their input too."""
    dest = root / "clean"
    shutil.copytree(default_model_dir(), dest)
    return dest


@pytest.fixture(scope="module")
def state_dicts():
    """The default model's tensors, read once for every weights case."""
    d = default_model_dir()
    return {c: load_file(str(next((d / c).glob("*.safetensors")))) for c in ("unet", "text_encoder", "vae")}


def make_bundle(folder: Path, ckpt_dir: Path) -> Path:
    """A bundle with a valid manifest (from the checkpoint's plan, as export writes it) over empty
    model files: opening any of them would fail, so a case that reaches one is a failure."""
    from md_export.bundle.write import copy_tokenizer, write_scheduler
    from md_export.components.plan import make_plan
    from md_export.core.io import path_sha256
    from md_export.core.manifest import SCHEMA_VERSION, Manifest, ModelEntry, Pipeline, TensorEntry, build, write_manifest

    ckpt = Checkpoint.open(ckpt_dir)
    plan = make_plan(ckpt)
    folder.mkdir(parents=True)
    models = {}
    for name, comp in plan.components.items():
        f = folder / f"{name}.onnx"
        f.write_bytes(b"")
        models[name] = ModelEntry(format="onnx", inputs=[build(TensorEntry, s.to_json()) for s in comp.inputs],
                                  outputs=[build(TensorEntry, s.to_json()) for s in comp.outputs], precision="fp32",
                                  compression="none", parameters=0, bytes=0, ideal_bytes=0, file=f.name, sha256=path_sha256(f))
    copy_tokenizer(ckpt.tokenizer_dir, folder)
    write_scheduler(folder, ckpt.scheduler_config)
    source = {"path": str(ckpt_dir), "kind": ckpt.kind, "components": {k: str(v) for k, v in ckpt.component_dirs().items()},
              "weights_sha256": ckpt.weights_sha256()}
    write_manifest(folder, Manifest(schema_version=SCHEMA_VERSION, target="onnx", models=models,
                                    pipeline=build(Pipeline, plan.pipeline_json(ckpt, 4, "euler")), source=source))
    return folder


@pytest.fixture(scope="module")
def bundle(root, clean_ckpt) -> Path:
    (root / "manifest-file").write_text("a file where a folder is expected")
    return make_bundle(root / "bundle" / "onnx", clean_ckpt)


@pytest.fixture(scope="module", autouse=True)
def warm():
    """Import what the commands import lazily, once: the refusal times below are md-export's own
    work, not Python's first import of the export spine (the process start, `import torch` included,
    is outside what a test can time in-process)."""
    import contextlib
    import io

    import md_export.config.validate  # noqa: F401
    import md_export.export  # noqa: F401
    import md_export.verify.check  # noqa: F401

    with contextlib.redirect_stderr(io.StringIO()):  # typer builds its commands on the first call
        main(["onnx", "--steps", "0", "--no-check"])


@pytest.fixture
def loads(monkeypatch):
    """Names of the components whose weights were loaded during a case (none, for a refusal made
    before heavy work)."""
    seen: list[str] = []
    real = Checkpoint._load

    def spy(self, what, loader, folder):
        seen.append(what)
        return real(self, what, loader, folder)

    monkeypatch.setattr(Checkpoint, "_load", spy)
    return seen


def refuse(capsys, monkeypatch, root: Path, argv: list[str], *fragments: str, inputs=()) -> tuple[str, float]:
    """Run argv in `root`; assert exit 2, one line holding every fragment, an unchanged tree under
    root and under each of `inputs`. Returns the line and the seconds the refusal took."""
    monkeypatch.chdir(root)
    trees = [root, *inputs]
    before = [snapshot(t) for t in trees]
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    line = one_line_error(err) if code == 2 else err
    assert code == 2, f"exit {code}: {err[-600:]}"
    for f in fragments:
        assert f in line, (f, line)
    for tree, was in zip(trees, before):
        changed = sorted(set(was.items()) ^ set(snapshot(tree).items()))
        assert not changed, f"files changed under {tree}: {changed[:5]}"
    return line, seconds


# -- broken checkpoints -----------------------------------------------------------------------------


def _config(comp: str, **changes):
    def edit(d: Path, sd):
        path = d / comp / ("scheduler_config.json" if comp == "scheduler" else "config.json")
        cfg = json.loads(path.read_text())
        cfg.update(changes)
        path.write_text(json.dumps(cfg))

    return edit


def _weights(comp: str, change):
    def edit(d: Path, sd):
        tensors = {k: v.clone() for k, v in sd[comp].items()}
        change(tensors)
        save_file(tensors, str(next((d / comp).glob("*.safetensors"))))

    return edit


def _tokenizer_file(name: str, data: bytes | None = None, change=None):
    def edit(d: Path, sd):
        path = d / "tokenizer" / name
        if change is not None:
            path.write_text(json.dumps(change(json.loads(path.read_text()))))
        else:
            path.write_bytes(data)

    return edit


def _file(rel: str, data: bytes | None = None, truncate: int | None = None):
    def edit(d: Path, sd):
        path = d / rel
        path.write_bytes(path.read_bytes()[:truncate] if truncate is not None else data)

    return edit


def _set(name: str, fn):
    def change(t):
        fn(t, name)

    return change


def _nan(t, name):
    t[name].view(-1)[0] = float("nan")


def _inf(t, name):
    t[name].view(-1)[-1] = float("inf")


UNET_W = "unet/diffusion_pytorch_model.safetensors"
VAE_W = "vae/diffusion_pytorch_model.safetensors"
TE_W = "text_encoder/model.safetensors"

# (id, edit, fragments of the one-line message, weights loaded before the refusal may be any)
CHECKPOINT_CASES = [
    # weights: names, shapes, values, dtypes, the file itself
    ("unet-missing-conv_in", _weights("unet", lambda t: t.pop("conv_in.weight")), [UNET_W, "conv_in.weight", "the file lacks"], True),
    ("unet-unexpected-tensor", _weights("unet", lambda t: t.__setitem__("extra.weight", torch.zeros(3))),
     [UNET_W, "extra.weight", "the UNet its config.json builds does not have"], True),
    ("unet-shape-mismatch", _weights("unet", lambda t: t.__setitem__("conv_in.weight", torch.zeros(32, 4, 1, 1))),
     [UNET_W, "conv_in.weight", "(32, 4, 1, 1)", "(32, 4, 3, 3)"], True),
    ("unet-nan", _weights("unet", _set("conv_in.weight", _nan)), [UNET_W, "conv_in.weight", "NaN or Inf"], True),
    ("unet-int-weights", _weights("unet", lambda t: t.__setitem__("conv_in.weight", t["conv_in.weight"].to(torch.int32))),
     [UNET_W, "conv_in.weight", "I32"], True),
    ("vae-inf", _weights("vae", _set("decoder.conv_out.bias", _inf)), [VAE_W, "decoder.conv_out.bias", "NaN or Inf"], True),
    ("vae-missing-decoder-block", _weights("vae", lambda t: [t.pop(k) for k in list(t) if k.startswith("decoder.up_blocks.0.")]),
     [VAE_W, "decoder.up_blocks.0.", "and 15 more"], True),
    ("text-encoder-missing", _weights("text_encoder", lambda t: t.pop("final_layer_norm.weight")),
     [TE_W, "final_layer_norm.weight", "the file lacks"], True),
    ("text-encoder-shape", _weights("text_encoder", lambda t: t.__setitem__("final_layer_norm.weight", torch.ones(16))),
     [TE_W, "final_layer_norm.weight", "(16,)", "(32,)"], True),
    ("weights-truncated", _file(UNET_W, truncate=1000), [UNET_W, "not a readable safetensors file"], False),
    ("weights-not-safetensors", _file(UNET_W, b"hello world" * 10), [UNET_W, "not a readable safetensors file"], False),
    # configs: the field named, before anything is loaded
    ("unet-sample_size-string", _config("unet", sample_size="16"), ["unet/config.json", "'sample_size'", "str '16'"], False),
    ("unet-sample_size-negative", _config("unet", sample_size=-16), ["unet/config.json", "'sample_size'"], False),
    ("unet-block_out_channels-int", _config("unet", block_out_channels=32), ["unet/config.json", "'block_out_channels'", "int 32"], False),
    ("unet-in_channels-float", _config("unet", in_channels=4.5), ["unet/config.json", "'in_channels'"], False),
    ("unet-down_block_types-string", _config("unet", down_block_types="CrossAttnDownBlock2D"), ["unet/config.json", "'down_block_types'"], False),
    ("unet-blocks-disagree", _config("unet", up_block_types=["UpBlock2D"]), ["unet/config.json", "up_block_types has 1"], False),
    ("unet-groups-do-not-divide", _config("unet", norm_num_groups=5), ["unet/config.json", "'norm_num_groups' 5"], False),
    ("unet-config-not-object", _file("unet/config.json", b"[1, 2]"), ["unet/config.json", "expected a JSON object"], False),
    ("vae-block_out_channels-int", _config("vae", block_out_channels=32), ["vae/config.json", "'block_out_channels'"], False),
    ("vae-latent_channels-null", _config("vae", latent_channels=None), ["vae/config.json", "'latent_channels'"], False),
    ("vae-scaling_factor-string", _config("vae", scaling_factor="0.18"), ["vae/config.json", "'scaling_factor'"], False),
    ("text-encoder-hidden_size-string", _config("text_encoder", hidden_size="32"), ["text_encoder/config.json", "'hidden_size'"], False),
    ("text-encoder-heads-do-not-divide", _config("text_encoder", num_attention_heads=5), ["text_encoder/config.json", "num_attention_heads 5"], False),
    ("text-encoder-short-positions", _config("text_encoder", max_position_embeddings=16), ["text_encoder/config.json", "'max_position_embeddings'"], False),
    ("scheduler-steps-string", _config("scheduler", num_train_timesteps="x"), ["scheduler_config.json", "'num_train_timesteps'"], False),
    ("scheduler-steps-zero", _config("scheduler", num_train_timesteps=0), ["scheduler_config.json", "'num_train_timesteps'"], False),
    ("scheduler-prediction-type", _config("scheduler", prediction_type="noise"), ["scheduler_config.json", "'prediction_type'", "noise"], False),
    # tokenizer: parsed and round-tripped at open time, the file named
    ("merges-undecodable", _tokenizer_file("merges.txt", b"#version: 0.2\n\xff\xfe\x00garbage\n"), ["tokenizer/merges.txt:2", "not UTF-8"], False),
    ("merges-empty", _tokenizer_file("merges.txt", b""), ["tokenizer/merges.txt", "no merges"], False),
    ("merges-three-symbols", _tokenizer_file("merges.txt", b"#version: 0.2\na b c\n"), ["tokenizer/merges.txt:2", "two symbols"], False),
    ("merges-not-in-vocab", _tokenizer_file("merges.txt", b"#version: 0.2\nq zz\n"), ["tokenizer/merges.txt:2", "'qzz'", "not in vocab.json"], False),
    ("vocab-string-ids", _tokenizer_file("vocab.json", change=lambda v: {k: str(i) for k, i in v.items()}),
     ["tokenizer/vocab.json", "id '0'", "integers"], False),
    ("vocab-list", _tokenizer_file("vocab.json", b"[1, 2, 3]"), ["tokenizer/vocab.json", "JSON object"], False),
    ("vocab-empty", _tokenizer_file("vocab.json", b"{}"), ["tokenizer/vocab.json", "empty vocabulary"], False),
    ("vocab-no-eos", _tokenizer_file("vocab.json", change=lambda v: {k: i for k, i in v.items() if k != "<|endoftext|>"}),
     ["tokenizer/vocab.json", "<|endoftext|>"], False),
    ("vocab-id-past-embeddings", _tokenizer_file("vocab.json", change=lambda v: {**v, "zzzz</w>": 10**6}),
     ["tokenizer/vocab.json", "1000000", "vocab_size"], False),
    ("special-tokens-not-json", _tokenizer_file("special_tokens_map.json", b"{not json"), ["special_tokens_map.json", "not valid JSON"], False),
]


@pytest.mark.parametrize("case_id, edit, fragments, may_load", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_broken_checkpoint(case_id, edit, fragments, may_load, tmp_path, state_dicts, capsys, monkeypatch, loads):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(default_model_dir(), ckpt)
    edit(ckpt, state_dicts)
    refuse(capsys, monkeypatch, tmp_path, ["onnx", str(ckpt), "-o", str(tmp_path / "out"), "--no-check", "-q"], *fragments)
    if not may_load:
        assert loads == [], f"weights were loaded before the refusal: {loads}"


# -- options ----------------------------------------------------------------------------------------

# (id, argv after the command; {ckpt} {out} {bundle} {ro} filled in, fragments)
EXPORT_OPTION_CASES = [
    ("height-0", ["--height", "0"], ["--height 0"]),
    ("height-negative", ["--height", "-16"], ["--height -16"]),
    ("height-huge", ["--height", "100000"], ["--height 100000", "4096"]),
    ("width-not-a-multiple", ["--width", "100"], ["--width 100", "multiples of 16"]),
    ("steps-0", ["--steps", "0"], ["--steps 0"]),
    ("steps-negative", ["--steps", "-5"], ["--steps -5"]),
    ("steps-over-schedule", ["--steps", "100000"], ["--steps 100000"]),
    ("unet-batch-3", ["--unet-batch", "3"], ["--unet-batch 3"]),
    ("precision-fp8", ["--precision", "fp8"], ["--precision fp8"]),
    ("deployment-target-iOS99", ["--minimum-deployment-target", "iOS99"], ["--minimum-deployment-target iOS99", "iOS17"]),
    ("compute-units-GPU", ["--compute-units", "GPU"], ["--compute-units GPU", "CPU_AND_GPU"]),
    ("chunk-limit-0", ["--chunk-unet", "--chunk-limit-mb", "0"], ["--chunk-limit-mb 0"]),
    ("quantize-unknown-level", ["--quantize", "int3"], ["int3"]),
    ("lora-scale-nan", ["--lora", "{ckpt}/none.safetensors", "--lora-scale", "nan"], ["--lora-scale nan"]),
    ("out-is-a-file", ["-o", "{file}"], ["is a file"]),
    ("out-under-a-file", ["-o", "{file}/out"], ["afile is a file, not a folder"]),
    ("out-target-is-a-file", ["-o", "{outfile}"], ["coreml exists and is not a folder"]),
    ("out-would-replace-the-input", ["-o", "{parent}", "--force"], ["would replace", "an input of this export"]),
    ("recipe-nan-floor", ["--recipe", "{recipe}"], ["nan.toml: key 'coreml.parity.unet'", "finite number"]),
]


NEEDS_CHECKPOINT = {"width-not-a-multiple"}


@pytest.fixture
def option_env(tmp_path, clean_ckpt):
    """Paths an option case may name: a file where a folder belongs, an output whose bundle
    folder is a file, and an output whose bundle would be the checkpoint itself."""
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "outfile").mkdir()
    (tmp_path / "outfile" / "coreml").write_text("not a folder")
    inside = tmp_path / "nest" / "coreml"
    shutil.copytree(clean_ckpt, inside)
    recipe = tmp_path / "nan.toml"
    recipe.write_text('schema_version = 1\nfamily = "sd15"\ntargets = ["coreml"]\n[coreml.parity]\nunet = nan\n')
    return {"file": str(tmp_path / "afile"), "outfile": str(tmp_path / "outfile"), "parent": str(tmp_path / "nest"), "inside": inside,
            "recipe": str(recipe)}


@pytest.mark.parametrize("case_id, args, fragments", EXPORT_OPTION_CASES, ids=[c[0] for c in EXPORT_OPTION_CASES])
def test_bad_export_option(case_id, args, fragments, tmp_path, clean_ckpt, option_env, capsys, monkeypatch, loads):
    ckpt = option_env["inside"] if case_id == "out-would-replace-the-input" else clean_ckpt
    fill = {"ckpt": str(ckpt), **{k: v for k, v in option_env.items() if isinstance(v, str)}}
    argv = [a.format(**fill) for a in args]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out")]
    _, seconds = refuse(capsys, monkeypatch, tmp_path, ["coreml", str(ckpt), *argv, "--no-check", "-q"], *fragments, inputs=[clean_ckpt])
    assert loads == [], f"weights were loaded before the refusal: {loads}"
    # refusals that need the checkpoint's configs come after it is opened (configs and tokenizer
    # parsed, about 0.3 s on an idle core); every other one before
    limit = 3.0 if case_id in NEEDS_CHECKPOINT else 1.0
    assert seconds < limit, f"refusal took {seconds:.2f} s"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_folder_not_writable(tmp_path, clean_ckpt, capsys, monkeypatch, loads):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        refuse(capsys, monkeypatch, tmp_path, ["onnx", str(clean_ckpt), "-o", str(ro / "out"), "--no-check", "-q"], f"-o {ro / 'out'}",
               "cannot create files", inputs=[clean_ckpt])
    finally:
        ro.chmod(0o755)
    assert loads == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_folder_on_a_read_only_file_system(tmp_path, clean_ckpt, capsys, monkeypatch, loads):
    """/proc refuses new folders even to root."""
    refuse(capsys, monkeypatch, tmp_path, ["onnx", str(clean_ckpt), "-o", "/proc/md-export-out", "--no-check", "-q"],
           "-o /proc/md-export-out", "cannot create files in /proc", inputs=[clean_ckpt])
    assert loads == []


# `check` and `generate` against the bundle (argv after the command and the bundle path)
BUNDLE_CASES = [
    ("check", "threshold-nan", ["--threshold", "unet=nan"], ["--threshold 'unet=nan'", "finite"]),
    ("check", "threshold-typo", ["--threshold", "unett=999"], ["unknown model 'unett'", "text_encoder, unet, vae_decoder, vae_encoder, end_to_end, all"]),
    ("check", "threshold-not-a-number", ["--threshold", "unet=high"], ["'high' is not a number"]),
    ("check", "threshold-no-value", ["--threshold", "unet"], ["use MODEL=DB"]),
    ("check", "samples-0", ["--samples", "0"], ["--samples 0"]),
    ("check", "e2e-steps-0", ["--e2e-steps", "0"], ["--e2e-steps 0"]),
    ("check", "e2e-steps-negative", ["--e2e-steps", "-3"], ["--e2e-steps -3"]),
    ("check", "json-report-under-a-file", ["--json", "{tmp}/manifest-file/r.json"], ["--json", "manifest-file/r.json", "manifest-file is a file"]),
    ("check", "json-report-is-a-folder", ["--json", "{tmp}"], ["--json", "is a folder"]),
    ("generate", "guidance-nan", ["-p", "a cat", "--guidance-scale", "nan"], ["--guidance-scale nan"]),
    ("generate", "guidance-inf", ["-p", "a cat", "--guidance-scale", "inf"], ["--guidance-scale inf"]),
    ("generate", "steps-0", ["-p", "a cat", "--steps", "0"], ["--steps 0"]),
    ("generate", "steps-negative", ["-p", "a cat", "--steps", "-5"], ["--steps -5"]),
    ("generate", "steps-huge", ["-p", "a cat", "--steps", "5000"], ["--steps 5000"]),
    ("generate", "seed-too-large", ["-p", "a cat", "--seed", str(2**64)], [f"--seed {2**64}"]),
    ("generate", "scheduler-unknown", ["-p", "a cat", "--scheduler", "foo"], ["--scheduler foo", "ddim"]),
    ("generate", "out-is-a-folder", ["-p", "a cat", "-o", "{tmp}"], ["is a folder"]),
    ("generate", "out-not-png", ["-p", "a cat", "-o", "{tmp}/image.jpg"], [".png"]),
]


@pytest.mark.parametrize("command, case_id, args, fragments", BUNDLE_CASES, ids=[f"{c[0]}-{c[1]}" for c in BUNDLE_CASES])
def test_bad_check_or_generate_option(command, case_id, args, fragments, bundle, root, capsys, monkeypatch):
    argv = [a.format(tmp=str(root)) for a in args]
    if command == "generate" and "-o" not in argv:
        argv += ["-o", str(root / "image.png")]
    _, seconds = refuse(capsys, monkeypatch, root, [command, str(bundle), *argv], *fragments)
    assert seconds < 1.0, f"refusal took {seconds:.2f} s"


def _bundle_copy(bundle: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(bundle, dest)
    return dest


@pytest.mark.parametrize("name, data, fragment", [
    ("merges.txt", b"", "no merges"),
    ("merges.txt", b"#version: 0.2\n\xff\xfe\x00\n", "not UTF-8"),
    ("vocab.json", b"{}", "empty vocabulary"),
])
def test_check_refuses_a_broken_bundle_tokenizer(name, data, fragment, bundle, tmp_path, capsys, monkeypatch):
    b = _bundle_copy(bundle, tmp_path)
    (b / "tokenizer" / name).write_bytes(data)
    refuse(capsys, monkeypatch, tmp_path, ["check", str(b), "--no-e2e"], f"tokenizer/{name}", fragment)


def test_generate_refuses_a_huge_latent(bundle, tmp_path, capsys, monkeypatch):
    b = _bundle_copy(bundle, tmp_path)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["pipeline"]["latent_height"] = 100_000
    (b / "manifest.json").write_text(json.dumps(manifest))
    refuse(capsys, monkeypatch, tmp_path, ["generate", str(b), "-p", "a cat", "-o", str(tmp_path / "x.png")], "latent", "UNet takes")


def test_the_bundle_fixture_is_checkable(bundle):
    """The fake bundle passes every refusal a good bundle passes: its manifest reads and its
    tokenizer validates (so the cases above fail for their own reason)."""
    from md_export.core.manifest import read_manifest
    from md_export.pipeline.tokenizer import validate_tokenizer_files

    assert read_manifest(bundle)["target"] == "onnx"
    assert validate_tokenizer_files(bundle / "tokenizer").encode("a cat")[0] == 49406


def test_a_clean_checkpoint_opens_and_loads(clean_ckpt):
    """The checks refuse none of the default model: configs, tokenizer and every weight pass."""
    ckpt = Checkpoint.open(clean_ckpt)
    for load in (ckpt.load_text_encoder, ckpt.load_unet, ckpt.load_vae):
        model = load()
        assert all(torch.isfinite(p).all() for p in model.parameters())
