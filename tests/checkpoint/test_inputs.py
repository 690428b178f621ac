"""Inputs beyond diffusers folders: single-file checkpoints in the original LDM key layout
(safetensors; pickles only with --allow-pickle) and LoRA weights fused before export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from md_export.checkpoint.folder import Checkpoint
from md_export.core.errors import InputError
from md_export.checkpoint.init import build_components
from md_export.checkpoint.lora import fuse_loras, parse_lora
from md_export.checkpoint.single_file import convert_to_folder, to_ldm_state_dict


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MD_EXPORT_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def tiny_sd15():
    return build_components("sd15", "tiny", seed=7)


@pytest.fixture(scope="module")
def single_file(tiny_sd15, tmp_path_factory) -> Path:
    unet, text, vae = tiny_sd15
    path = tmp_path_factory.mktemp("sf") / "tiny-sd15.safetensors"
    save_file(to_ldm_state_dict(unet, vae, text), str(path))
    return path


def _same(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not bad, bad[:3]


# -- single files ---------------------------------------------------------------------------------


def test_ldm_layout_keys(single_file):
    from safetensors import safe_open

    with safe_open(str(single_file), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert not any(k.startswith("model.diffusion_model.down_blocks") for k in keys)


def test_single_file_converts_to_the_same_weights(single_file, tiny_sd15):
    ck = Checkpoint.open(single_file)
    assert ck.kind == "single-file" and ck.source == single_file and ck.family == "sd15"
    for ref, loaded in zip(tiny_sd15, (ck.load_unet(), ck.load_text_encoder(), ck.load_vae())):
        _same(ref, loaded)
    again = Checkpoint.open(single_file)  # converted once, then reused from the cache
    assert again.unet_dir == ck.unet_dir and (ck.unet_dir.parent / ".complete").is_file()


@pytest.mark.parametrize("family", ["bk-sdm-small", "sd21"])
def test_single_file_other_families(tmp_path, family):
    """No mid block (BK-SDM-Small) and linear projections (SD 2.x UNet) survive the LDM layout."""
    unet, text, vae = build_components(family, "tiny", seed=2)
    path = tmp_path / "m.safetensors"
    save_file(to_ldm_state_dict(unet, vae, text), str(path))
    folder, fam, size = convert_to_folder(path, family, allow_pickle=False)
    assert (fam, size) == (family, "tiny")
    _same(unet, Checkpoint.open(folder).load_unet())


def test_pickles_need_allow_pickle(tmp_path, single_file):
    from safetensors.torch import load_file

    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(single_file)), "global_step": 1}, str(path))
    with pytest.raises(InputError, match="--allow-pickle"):
        Checkpoint.open(path)
    ck = Checkpoint.open(path, allow_pickle=True)
    _same(Checkpoint.open(single_file).load_vae(), ck.load_vae())


def test_single_file_errors(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"x")
    with pytest.raises(InputError, match="unknown checkpoint file type"):
        Checkpoint.open(p)
    q = tmp_path / "not-ldm.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(q))
    with pytest.raises(InputError, match="not an LDM single-file checkpoint"):
        Checkpoint.open(q)
    r = tmp_path / "broken.safetensors"
    r.write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="not a readable safetensors"):
        Checkpoint.open(r)


def test_single_file_family_must_have_ldm_layout(single_file):
    with pytest.raises(InputError, match="no LDM single-file layout"):
        Checkpoint.open(single_file, family="mobilediffusion")
    with pytest.raises(InputError, match="cannot map"):
        Checkpoint.open(single_file, family="snapfusion")


# -- LoRA -----------------------------------------------------------------------------------------------


def _lora_tensors(model: torch.nn.Module, names: list[str], rank: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in names:
        layer = model.get_submodule(n)
        w = layer.weight
        if w.ndim == 4:
            down = torch.randn(rank, w.shape[1], *w.shape[2:], generator=g) * 0.1
            up = torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.1
        else:
            down = torch.randn(rank, w.shape[1], generator=g) * 0.1
            up = torch.randn(w.shape[0], rank, generator=g) * 0.1
        out[n] = (down, up)
    return out


UNET_LAYERS = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
               "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
               "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
               "down_blocks.0.attentions.0.proj_in",
               "mid_block.resnets.0.conv1"]
TEXT_LAYERS = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.mlp.fc1"]


@pytest.fixture(scope="module")
def lora_files(tiny_sd15, tmp_path_factory):
    """The same LoRA in kohya and in diffusers/peft layout, plus the expected fused weights at scale 0.8."""
    unet, text, _ = tiny_sd15
    root = tmp_path_factory.mktemp("lora")
    rank, alpha, scale = 4, 2.0, 0.8
    wrapped = any(k.startswith("text_model.") for k in text.state_dict())  # transformers < 5 wraps CLIP in text_model
    text_layers = TEXT_LAYERS if wrapped else [n[len("text_model."):] for n in TEXT_LAYERS]
    u, t = _lora_tensors(unet, UNET_LAYERS, rank, 1), _lora_tensors(text, text_layers, rank, 2)
    kohya, peft = {}, {}
    for prefix, kp, table in (("lora_unet_", "unet.", u), ("lora_te_", "text_encoder.", t)):
        for n, (down, up) in table.items():
            full = n if (prefix == "lora_unet_" or n.startswith("text_model.")) else "text_model." + n  # names as files write them
            k = prefix + full.replace(".", "_")
            kohya[k + ".lora_down.weight"], kohya[k + ".lora_up.weight"] = down, up
            kohya[k + ".alpha"] = torch.tensor(alpha)
            peft[kp + full + ".lora_A.weight"], peft[kp + full + ".lora_B.weight"] = down, up * (alpha / rank)  # alpha folded in
    save_file(kohya, str(root / "kohya.safetensors"))
    save_file(peft, str(root / "peft.safetensors"))

    def expected(model, table):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        for n, (down, up) in table.items():
            delta = (up.flatten(1) @ down.flatten(1)).reshape(sd[n + ".weight"].shape)
            sd[n + ".weight"] += scale * (alpha / rank) * delta
        return sd

    return {"kohya": root / "kohya.safetensors", "peft": root / "peft.safetensors", "scale": scale,
            "unet": expected(unet, u), "text_encoder": expected(text, t)}


@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_lora_fusion_arithmetic(tiny_sd15, lora_files, layout):
    import copy

    unet, text, _ = (copy.deepcopy(m) for m in tiny_sd15)
    parsed = parse_lora(lora_files[layout])
    assert len(parsed["unet"]) == len(UNET_LAYERS) and len(parsed["text_encoder"]) == len(TEXT_LAYERS)
    for comp, model in (("unet", unet), ("text_encoder", text)):
        fuse_loras(model, comp, [(lora_files[layout], lora_files["scale"])])
        for k, v in model.state_dict().items():
            assert torch.allclose(v, lora_files[comp][k], atol=1e-6), k
    assert not torch.equal(unet.state_dict()[UNET_LAYERS[0] + ".weight"], tiny_sd15[0].state_dict()[UNET_LAYERS[0] + ".weight"])


def test_lora_errors(tiny_sd15, tmp_path):
    import copy

    unet = copy.deepcopy(tiny_sd15[0])
    p = tmp_path / "other.safetensors"
    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_no_such_layer.lora_up.weight": torch.zeros(4, 2)}, str(p))
    with pytest.raises(InputError, match="no layer 'no_such_layer'"):
        fuse_loras(unet, "unet", [(p, 1.0)])
    q = tmp_path / "empty.safetensors"
    save_file({"something.weight": torch.zeros(2)}, str(q))
    with pytest.raises(InputError, match="no LoRA weights found"):
        parse_lora(q)
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(InputError, match="safetensors only"):
        parse_lora(tmp_path / "x.pt")


def test_single_file_with_lora_exports_and_passes_parity(single_file, lora_files, tmp_path):
    """One export covering both inputs: `check` rebuilds the reference from the single file and
    re-fuses the LoRA (from the manifest), and the artifacts match it."""
    from md_export.cli.app import main
    from md_export.verify.check import check_bundle

    code = main(["onnx", str(single_file), "--lora", str(lora_files["kohya"]), "--lora-scale", "0.8",
                 "-o", str(tmp_path / "out"), "--no-check", "-q"])
    assert code == 0
    bundle = tmp_path / "out" / "onnx"
    m = json.loads((bundle / "manifest.json").read_text())
    src = m["source"]
    assert src["kind"] == "single-file" and (bundle / src["path"]).resolve() == single_file.resolve() and src["family"] == "sd15"
    assert src["lora"][0]["scale"] == 0.8 and src["lora"][0]["modules"] == {"unet": len(UNET_LAYERS), "text_encoder": len(TEXT_LAYERS)}
    report = check_bundle(bundle, end_to_end=False, samples=1)
    assert report.summary()["status"] == "pass", report.summary()
    # without the LoRA the reference differs: the artifact really carries the fused weights
    import onnxruntime as ort
    import numpy as np

    ck = Checkpoint.open(single_file)
    sess = ort.InferenceSession(str(bundle / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    ids = np.arange(77, dtype=np.int32).reshape(1, 77)
    fused = sess.run(None, {"input_ids": ids})[0]
    with torch.no_grad():
        plain = ck.load_text_encoder()(torch.from_numpy(ids).long()).last_hidden_state.numpy()
    assert np.abs(fused - plain).max() > 1e-3


# -- SD 2.x single files: OpenCLIP text tower (cond_stage_model.model.*), linear projections ------


@pytest.fixture(scope="module")
def tiny_sd21():
    return build_components("sd21", "tiny", seed=11)


@pytest.fixture(scope="module")
def sd2_single_file(tiny_sd21, tmp_path_factory) -> Path:
    from openclip_layout import sd2_single_file_state_dict

    unet, text, vae = tiny_sd21
    path = tmp_path_factory.mktemp("sf2") / "tiny-sd21.safetensors"
    save_file(sd2_single_file_state_dict(unet, vae, text, seed=12), str(path))
    return path


def _resblocks(keys) -> int:
    head = "cond_stage_model.model.transformer.resblocks."
    return 1 + max(int(k[len(head):].split(".")[0]) for k in keys if k.startswith(head))


def test_sd2_single_file_layout(sd2_single_file, tiny_sd21):
    from safetensors.torch import load_file

    _, text, _ = tiny_sd21
    sd = load_file(str(sd2_single_file))
    width = text.config.hidden_size
    assert not any(k.startswith("cond_stage_model.transformer.") for k in sd)
    assert sd["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * width, width)
    assert sd["cond_stage_model.model.positional_embedding"].shape == (77, width)
    assert "cond_stage_model.model.ln_final.weight" in sd and "cond_stage_model.model.text_projection" in sd
    assert _resblocks(sd) == text.config.num_hidden_layers + 1  # the whole tower: the last layer is SD 2.x's unused one
    assert sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2  # linear projection


def test_sd2_single_file_converts_to_the_same_weights(sd2_single_file, tiny_sd21):
    from safetensors.torch import load_file

    ck = Checkpoint.open(sd2_single_file)
    assert ck.kind == "single-file" and ck.family == "sd21"  # guessed from the OpenCLIP keys
    unet, text, vae = ck.load_unet(), ck.load_text_encoder(), ck.load_vae()
    for ref, loaded in zip(tiny_sd21, (unet, text, vae)):
        _same(ref, loaded)
    assert text.config.num_hidden_layers == _resblocks(load_file(str(sd2_single_file))) - 1
    assert text.config.hidden_act == "gelu"  # OpenCLIP's exact GELU, not CLIP's quick_gelu
    assert unet.config.use_linear_projection
    heads = unet.config.attention_head_dim
    assert [c // h for c, h in zip(unet.config.block_out_channels, heads)] == [8] * len(heads)  # tiny's 64-wide heads


def test_sd2_text_encoder_computes_openclips_penultimate_layer(sd2_single_file):
    """The converted text encoder against open_clip's computation run straight from the file's
    tensors: equal to the penultimate layer (then ln_final), not to the whole tower."""
    from openclip_layout import openclip_text_forward
    from safetensors.torch import load_file

    state = load_file(str(sd2_single_file))
    text = Checkpoint.open(sd2_single_file).load_text_encoder()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 49406, (2, 77), generator=g)
    ids[:, 0], ids[0, 12:], ids[1, 40:] = 49406, 49407, 49407
    heads = text.config.num_attention_heads
    with torch.no_grad():
        got = text(ids).last_hidden_state
        penultimate = openclip_text_forward(state, ids, heads=heads)
        whole = openclip_text_forward(state, ids, heads=heads, layers=_resblocks(state))
    assert (got - penultimate).abs().max().item() < 1e-5
    assert (got - whole).abs().max().item() > 1e-3


def test_sd2_text_tower_depth(tmp_path, tiny_sd21):
    """Full size: 23 of the file's 24 layers. A file already cut to that depth loads as is; any
    other depth is refused (dropping or lacking layers would give wrong outputs silently)."""
    from md_export.families.registry import get_family
    from md_export.checkpoint.single_file import _check_text_tower
    from openclip_layout import sd2_single_file_state_dict

    sd21 = get_family("sd21")
    assert sd21.text_config("full")["num_hidden_layers"] == 23
    fake = lambda n: {f"cond_stage_model.model.transformer.resblocks.{i}.ln_1.weight": None for i in range(n)}  # noqa: E731
    _check_text_tower(fake(24), sd21, "full", Path("x.safetensors"))
    _check_text_tower(fake(23), sd21, "full", Path("x.safetensors"))
    with pytest.raises(InputError, match="has 25 layers; family 'sd21' \\(full\\) uses 23"):
        _check_text_tower(fake(25), sd21, "full", Path("x.safetensors"))

    unet, text, vae = tiny_sd21
    n = text.config.num_hidden_layers
    full = sd2_single_file_state_dict(unet, vae, text, seed=12)
    cut = tmp_path / "cut.safetensors"
    save_file({k: v for k, v in full.items() if f".resblocks.{n}." not in k}, str(cut))
    folder, _, _ = convert_to_folder(cut, "sd21", allow_pickle=False)
    _same(text, Checkpoint.open(folder).load_text_encoder())
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in full.items() if f".resblocks.{n - 1}." not in k and f".resblocks.{n}." not in k}, str(short))
    with pytest.raises(InputError, match=f"has {n - 1} layers"):
        convert_to_folder(short, "sd21", allow_pickle=False)


def test_sd2_single_file_wrong_family_or_tower(sd2_single_file, tiny_sd21, tmp_path):
    from openclip_layout import openclip_text_state_dict
    from transformers import CLIPTextConfig, CLIPTextModel

    with pytest.raises(InputError, match="text encoder is OpenCLIP.*family 'sd15'.*--family.*sd21"):
        Checkpoint.open(sd2_single_file, family="sd15")
    unet, text, vae = tiny_sd21
    wide = CLIPTextModel(CLIPTextConfig(**dict(text.config.to_dict(), hidden_size=48, intermediate_size=96)))
    sd = {k: v for k, v in to_ldm_state_dict(unet, vae, text).items() if not k.startswith("cond_stage_model.")}
    sd.update(openclip_text_state_dict(wide))
    path = tmp_path / "wide.safetensors"
    save_file(sd, str(path))
    with pytest.raises(InputError, match="cannot convert the text encoder.*size mismatch"):
        convert_to_folder(path, "sd21", allow_pickle=False)


@pytest.mark.slow
def test_sd2_single_file_exports_and_passes_check(sd2_single_file, tmp_path):
    from md_export.cli.app import main
    from md_export.verify.check import check_bundle

    code = main(["export", str(sd2_single_file), "--family", "sd21", "--targets", "onnx", "-o", str(tmp_path / "out"),
                 "--no-check", "-q"])
    assert code == 0
    bundle = tmp_path / "out" / "onnx"
    src = json.loads((bundle / "manifest.json").read_text())["source"]
    assert src["kind"] == "single-file" and (bundle / src["path"]).resolve() == sd2_single_file.resolve() and src["family"] == "sd21"
    report = check_bundle(bundle, end_to_end=False, samples=1)
    assert report.summary()["status"] == "pass", report.summary()
