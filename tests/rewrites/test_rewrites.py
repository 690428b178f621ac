"""Rewrites and mobile modules: each applied to tiny modules, exported, and the saved artifact run
in its own runtime against the untouched PyTorch reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from md_export.rewrites import registry as R
from md_export.export import lower_at
from md_export.lower.base import LowerOptions
from md_export.runtime.open import open_file
from md_export.capture.torch_export import capture
from md_export.components.plan import ComponentPlan
from md_export.core.spec import TensorSpec
from md_export.core.errors import InputError, UnknownNameError
from md_export.core.metrics import compare

# -- tiny modules ------------------------------------------------------------------------------


class SpatialTransformer(nn.Module):
    """A tiny SD-style Transformer2DModel with a GroupNorm'd resnet-ish conv in front."""

    def __init__(self, linear_projection: bool = False):
        super().__init__()
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        torch.manual_seed(0)
        self.norm = nn.GroupNorm(4, 16)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.transformer = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16, cross_attention_dim=12,
                                              norm_num_groups=4, use_linear_projection=linear_projection)
        for p in self.parameters():  # diffusers zero-inits nothing here, but make every weight count
            p.data.normal_(0, 0.3)

    def forward(self, sample, context):
        h = self.conv(torch.nn.functional.silu(self.norm(sample)))
        return self.transformer(h, encoder_hidden_states=context, return_dict=False)[0]


def spatial_plan(module: nn.Module) -> ComponentPlan:
    return ComponentPlan("unet", [TensorSpec("sample", (2, 16, 6, 6), "float32", "NCHW"), TensorSpec("context", (2, 5, 12), "float32", "BSD")],
                         [TensorSpec("out", (2, 16, 6, 6), "float32", "NCHW")], module.eval())


class VAEAttention(nn.Module):
    """The VAE mid-block attention: 4-D input, group norm, residual connection."""

    def __init__(self):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        torch.manual_seed(1)
        self.attn = Attention(16, heads=1, dim_head=16, norm_num_groups=4, residual_connection=True, bias=True, upcast_softmax=True,
                              _from_deprecated_attn_block=True)

    def forward(self, sample):
        return self.attn(sample)


def text_plan() -> ComponentPlan:
    from transformers import CLIPTextConfig, CLIPTextModel

    from md_export.components.plan import TextEncoderWrapper
    from md_export.families.tiny import tiny_text_config

    torch.manual_seed(2)
    te = CLIPTextModel(CLIPTextConfig(**tiny_text_config(vocab_size=1000, hidden_size=16, num_attention_heads=2, max_position_embeddings=12)))
    return ComponentPlan("text_encoder", [TensorSpec("input_ids", (1, 12), "int32", "BS")], [TensorSpec("last_hidden_state", (1, 12, 16), "float32", "BSD")],
                         TextEncoderWrapper(te).eval())


def feeds_for(plan: ComponentPlan, seed: int = 1) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in plan.inputs:
        if s.dtype == "int32":
            out[s.name] = torch.randint(0, 1000, s.shape, generator=g).to(torch.int32).numpy()
        else:
            out[s.name] = torch.randn(s.shape, generator=g).numpy()
    return out


def roundtrip(plan: ComponentPlan, target: str, names: list[str], tmp_path, precision: str = "fp32"):
    """Apply ``names`` to a copy of plan.module, export it for ``target``, run the saved file.
    Returns (reference output from the untouched module, artifact output, rewrite records)."""
    rewritten = copy.deepcopy(plan.module)
    records = R.apply_rewrites({plan.name: rewritten}, names, target) if names else []
    comp = ComponentPlan(plan.name, plan.inputs, plan.outputs, rewritten)
    out_dir = tmp_path / f"{target}-{'-'.join(n.replace('=', '_') for n in names) or 'none'}"
    out_dir.mkdir()
    with R.lowering_scope(names):
        lowered = lower_at(target, comp, capture(comp), out_dir, LowerOptions(precision=precision))
    runner = open_file(target, lowered.path, {"signature": lowered.signature})
    feeds = feeds_for(plan)
    with torch.no_grad():
        ref = plan.module(*(torch.from_numpy(feeds[s.name]) for s in plan.inputs)).numpy()
    out = runner(feeds)[plan.outputs[0].name]
    return ref, np.asarray(out, dtype=np.float32), records, lowered.path


def psnr(ref, out) -> float:
    return compare(ref, out)["psnr"]


# -- registry ------------------------------------------------------------------------------------


def test_every_rewrite_is_listed_with_targets_and_numerics():
    names = [r["name"] for r in R.listing()]
    for n in ("attention=split-einsum", "attention=split-einsum-v2", "attention=original", "linear-to-conv", "layernorm-channels",
              "text-causal-mask", "gpu-composites", "gelu-tanh", "softmax-fp32"):
        assert n in names
    for r in R.listing():
        assert r["targets"] and r["description"] and r["matches"]
        if r["default_for"]:
            assert r["keeps_numerics"], r["name"]


def test_defaults_keep_numerics_and_choose_replaces_a_family():
    for target, names in R.DEFAULTS.items():
        assert all(R.REGISTRY[n].keeps_numerics for n in names)
    chosen = R.choose("coreml", ["attention=original"])
    assert "attention=original" in chosen and "attention=split-einsum" not in chosen
    assert R.choose("coreml", ["linear-to-conv"], defaults=False) == ["linear-to-conv"]
    assert R.choose("tflite", [], defaults=False) == []
    with pytest.raises(InputError, match="not tflite"):
        R.choose("tflite", ["linear-to-conv"])
    with pytest.raises(InputError, match="alternatives"):
        R.choose("coreml", ["attention=original", "attention=split-einsum"])
    with pytest.raises(InputError, match="needs a value"):
        R.choose("coreml", ["attention"])
    with pytest.raises(UnknownNameError):
        R.choose("coreml", ["no-such-rewrite"])


def test_run_order_is_the_registry_order_not_the_request_order():
    assert R.resolve("coreml", ["layernorm-channels", "linear-to-conv", "attention=split-einsum"]) == [
        "attention=split-einsum", "linear-to-conv", "layernorm-channels"]


def test_requested_rewrite_matching_nothing_is_an_error_with_the_reason():
    with pytest.raises(InputError, match="linear-to-conv"):
        R.apply_rewrites({"unet": nn.Sequential(nn.Conv2d(4, 4, 1))}, ["layernorm-channels"], "coreml")
    with pytest.raises(InputError, match="matched nothing.*no exact GELU"):
        R.apply_rewrites({"unet": nn.Sequential(nn.Conv2d(4, 4, 1))}, ["gelu-tanh"], "tflite")
    # a target's default that does not apply to a model is recorded as changing nothing
    with pytest.raises(InputError, match="gpu-composites"):  # asked for by name
        R.apply_rewrites({"unet": nn.Sequential(nn.Conv2d(4, 4, 1))}, ["gpu-composites"], "tflite")
    assert R.apply_rewrites({"unet": nn.Sequential(nn.Conv2d(4, 4, 1))}, R.resolve("tflite", None), "tflite") == [
        {"name": "gpu-composites", "keeps_numerics": True, "changed": {}}]


def test_lowering_scope_sets_the_group_norm_flag_only_inside():
    import os

    before = os.environ.get("ENABLE_GROUP_NORM_COMPOSITE")
    with R.lowering_scope(["gpu-composites"]):
        assert os.environ["ENABLE_GROUP_NORM_COMPOSITE"] == "y"
    assert os.environ.get("ENABLE_GROUP_NORM_COMPOSITE") == before


def test_linear_to_conv_reshapes_weights_visibly_and_keeps_numerics():
    m = SpatialTransformer(linear_projection=True).eval()
    x = feeds_for(spatial_plan(m))
    args = [torch.from_numpy(v) for v in x.values()]
    r = copy.deepcopy(m)
    rec = R.apply_rewrites({"unet": r}, ["attention=split-einsum", "linear-to-conv", "layernorm-channels"], "coreml")
    changed = {d["name"]: d["changed"]["unet"] for d in rec}
    # proj_in, proj_out, ff proj + ff out, 4 x 2 attention projections; 3 LayerNorms; 2 attentions
    assert changed == {"attention=split-einsum": 2, "linear-to-conv": 12, "layernorm-channels": 3}
    convs = [mod for mod in r.modules() if isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1)]
    assert convs and all(c.weight.ndim == 4 for c in convs)
    assert not any(isinstance(mod, nn.Linear) for mod in r.transformer.modules())
    with torch.no_grad():
        assert torch.allclose(m(*args), r(*args), atol=1e-5)


# -- Core ML / Neural Engine set: saved artifacts --------------------------------------------------


@pytest.mark.parametrize("attention", ["split-einsum", "split-einsum-v2", "original"])
def test_neural_engine_set_coreml_parity(tmp_path, attention, monkeypatch):
    from md_export.milrun import op_histogram
    from md_export.rewrites import attention as A

    monkeypatch.setattr(A, "QUERY_CHUNK", 16)  # the tiny 6x6 = 36-token sequence is split into 3 chunks
    plan = spatial_plan(SpatialTransformer())
    names = [f"attention={attention}", "linear-to-conv", "layernorm-channels"]
    ref, out, rec, path = roundtrip(plan, "coreml", names, tmp_path)
    assert psnr(ref, out) > 70, psnr(ref, out)
    hist = op_histogram(path)
    if attention == "original":
        assert hist.get("matmul", 0) >= 2 and "einsum" not in hist
    else:
        # per head: 2 einsums (x chunks for v2), 2 heads x 2 attentions
        assert hist["einsum"] == (2 * 2 * 2 * (3 if attention == "split-einsum-v2" else 1))
    assert hist.get("linear", 0) == 0 and hist["conv"] >= 10


def test_gpu_composites_vae_attention_group_norm_is_a_composite(tmp_path):
    from md_export.verify.lint import lint_tflite

    plan = ComponentPlan("vae_decoder", [TensorSpec("sample", (1, 16, 4, 4), "float32", "NCHW")], [TensorSpec("out", (1, 16, 4, 4), "float32", "NCHW")],
                         VAEAttention().eval())
    ref, out, rec, path = roundtrip(plan, "tflite", ["gpu-composites"], tmp_path)
    assert psnr(ref, out) > 70
    report = lint_tflite(path)
    assert report["histogram"].get("composite:odml.group_norm") == 1 and not report["findings"], report


def test_neural_engine_set_fp16_coreml_and_vae_attention(tmp_path):
    plan = ComponentPlan("vae_decoder", [TensorSpec("sample", (1, 16, 4, 4), "float32", "NCHW")], [TensorSpec("out", (1, 16, 4, 4), "float32", "NCHW")],
                         VAEAttention().eval())
    ref, out, rec, _ = roundtrip(plan, "coreml", ["attention=split-einsum", "linear-to-conv"], tmp_path, precision="fp16")
    assert rec[1]["changed"] == {"vae_decoder": 4}
    assert psnr(ref, out) > 40


def test_text_causal_mask_coreml_parity(tmp_path):
    ref, out, rec, _ = roundtrip(text_plan(), "coreml", ["text-causal-mask"], tmp_path)
    assert rec[0]["changed"] == {"text_encoder": 2}
    assert psnr(ref, out) > 70, psnr(ref, out)


def test_text_causal_mask_does_not_overflow_in_fp16():
    from md_export.rewrites.text import CausalClipAttention

    plan = text_plan()
    r = copy.deepcopy(plan.module)
    R.apply_rewrites({"text_encoder": r}, ["text-causal-mask"], "coreml")
    attn = next(m for m in r.modules() if isinstance(m, CausalClipAttention))
    assert float(attn.causal_mask.min()) == -1e4 and torch.isfinite(attn.causal_mask.half()).all()
    x = torch.randn(1, 12, 16, dtype=torch.float16)
    with torch.no_grad():
        y, _ = attn.half()(x)
    assert torch.isfinite(y).all()


# -- TFLite / GPU delegate set ----------------------------------------------------------------------


def test_gpu_composites_tflite_parity_and_lint(tmp_path):
    from md_export.verify.lint import lint_tflite

    plan = spatial_plan(SpatialTransformer())
    ref0, out0, _, base_path = roundtrip(plan, "tflite", [], tmp_path)
    ref, out, rec, path = roundtrip(plan, "tflite", ["gpu-composites"], tmp_path)
    assert psnr(ref, out) > 70 and psnr(ref0, out0) > 70
    before, after = lint_tflite(base_path), lint_tflite(path)
    assert not any(k.startswith("composite:") for k in before["histogram"])
    assert after["histogram"].get("composite:odml.scaled_dot_product_attention") == 2
    assert after["histogram"].get("composite:odml.group_norm", 0) >= 1
    assert after["histogram"].get("TRANSPOSE", 0) < before["histogram"].get("TRANSPOSE", 0)
    assert not after["findings"], after["findings"]
    assert after["ops"] < before["ops"]


def test_gpu_composites_text_encoder_tflite(tmp_path):
    from md_export.verify.lint import lint_tflite

    plan = text_plan()
    ref, out, rec, path = roundtrip(plan, "tflite", ["gpu-composites"], tmp_path)
    assert psnr(ref, out) > 70
    report = lint_tflite(path)
    assert report["histogram"].get("composite:odml.scaled_dot_product_attention") == 2
    assert "SELECT_V2" not in report["histogram"] and not report["findings"]


# -- numerics-changing, opt-in -----------------------------------------------------------------------


def test_gelu_tanh_changes_numerics_a_little_and_exports(tmp_path):
    plan = spatial_plan(SpatialTransformer())
    ref, out, rec, _ = roundtrip(plan, "onnx", ["gelu-tanh"], tmp_path)
    assert rec[0]["keeps_numerics"] is False and rec[0]["changed"] == {"unet": 1}
    assert 30 < psnr(ref, out) < 120  # close, but not the reference's numerics


def test_softmax_fp32_is_recorded_and_exports(tmp_path):
    plan = spatial_plan(SpatialTransformer())
    ref, out, rec, _ = roundtrip(plan, "coreml", ["softmax-fp32"], tmp_path, precision="fp16")
    assert rec[0]["keeps_numerics"] is False and rec[0]["changed"] == {"unet": 2}
    assert psnr(ref, out) > 40
    assert R.lowering_extra(["softmax-fp32"]) == {"fp32_ops": ["softmax"]}  # the hint export.py hands the backend


# -- mobile modules through every backend ---------------------------------------------------------------


class MobileBlock(nn.Module):
    def __init__(self):
        super().__init__()
        from md_export.families.blocks import CrossAttentionBlock, DepthwiseSeparableConv2d, ReLUAttention

        torch.manual_seed(3)
        self.conv = DepthwiseSeparableConv2d(8, 16)
        self.self_attn = ReLUAttention(16, heads=2, shared_kv=False)
        self.cross = CrossAttentionBlock(16, context_dim=12, heads=2, relu=True, shared_kv=True)

    def forward(self, sample, context):
        h = self.conv(sample)
        b, c, hh, ww = h.shape
        x = h.flatten(2).transpose(1, 2)
        x = self.self_attn(x) + x
        x = self.cross(x, context)
        return x.transpose(1, 2).reshape(b, c, hh, ww)


@pytest.mark.parametrize("target", ["coreml", "tflite", "onnx"])
def test_mobile_modules_export_to_every_backend(tmp_path, target):
    plan = ComponentPlan("unet", [TensorSpec("sample", (1, 8, 4, 4), "float32", "NCHW"), TensorSpec("context", (1, 5, 12), "float32", "BSD")],
                         [TensorSpec("out", (1, 16, 4, 4), "float32", "NCHW")], MobileBlock().eval())
    ref, out, _, _ = roundtrip(plan, target, [], tmp_path)
    assert psnr(ref, out) > 70, psnr(ref, out)


def test_relu_attention_and_shared_kv_are_what_they_say():
    from md_export.families.blocks import ReLUAttention

    torch.manual_seed(0)
    a = ReLUAttention(8, heads=2, shared_kv=True).eval()
    assert not hasattr(a, "to_k") and a.to_kv.weight.shape == (8, 8)
    x = torch.randn(1, 5, 8)
    q = a.to_q(x).view(1, 5, 2, 4).transpose(1, 2)
    kv = a.to_kv(x).view(1, 5, 2, 4).transpose(1, 2)
    w = torch.relu(q @ kv.transpose(-1, -2) * 0.5) / 5
    expected = a.to_out((w @ kv).transpose(1, 2).reshape(1, 5, 8))
    assert torch.allclose(a(x), expected, atol=1e-6)


def test_cli_rewrite_options_reach_export_options():
    from md_export.config.options import rewrites_per_target as _rewrites_per_target

    got = _rewrites_per_target(("coreml", "tflite", "onnx"), ["attention=original"], False)
    assert got["coreml"][0] == "attention=original" and "linear-to-conv" in got["coreml"]
    assert got["tflite"] == ["gpu-composites"] and got["onnx"] == []
    assert _rewrites_per_target(("tflite",), [], True) == {"tflite": []}
    assert _rewrites_per_target(("coreml", "tflite"), [], False) == {}  # absent: defaults (or a recipe's lists)
    assert R.resolve("coreml", ["attention=original", "linear-to-conv", "attention=split-einsum-v2"]) == [
        "attention=split-einsum-v2", "linear-to-conv"]  # recipe list then command line: the later alternative wins
    assert _rewrites_per_target(("onnx",), ["gelu-tanh"], True) == {"onnx": ["gelu-tanh"]}
    with pytest.raises(InputError, match="not onnx"):
        _rewrites_per_target(("onnx",), ["gpu-composites"], False)
