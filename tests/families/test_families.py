"""Model families: registry, tiny/full topology, recognition, `md-export init`, the MobileDiffusion
model, and exports of each family's tiny checkpoint through its recipe's targets with parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from md_export.checkpoint.folder import Checkpoint
from md_export.core.errors import InputError, UnknownNameError
from md_export.families.base import Family, register_family
from md_export.families.registry import all_families, detect_family, get_family, unet_class
from md_export.families.base import FAMILIES, _topology
from md_export.checkpoint.init import build_components, init_checkpoint
from md_export.families.mobilediffusion import MobileDiffusionConfig, MobileDiffusionUNet

EXPECTED = {"sd15", "sd21", "sd-turbo", "lcm", "bk-sdm-base", "bk-sdm-small", "bk-sdm-tiny", "small-sd", "tiny-sd",
            "snapfusion", "mobilediffusion"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_ckpts(family_checkpoint):
    """Every family's tiny checkpoint, written once per session by `init` (tests/conftest.py)."""
    return {name: family_checkpoint(name) for name in sorted(EXPECTED)}


# -- registry ---------------------------------------------------------------------------------------


def test_registry_has_the_families():
    assert set(all_families()) == EXPECTED


def test_unknown_family_lists_known():
    with pytest.raises(UnknownNameError) as e:
        get_family("sd3")
    msg = str(e.value)
    assert "unknown family 'sd3'" in msg and "mobilediffusion" in msg and "bk-sdm-tiny" in msg


def test_family_without_tiny_config_is_refused():
    class NoTiny(Family):
        name = "no-tiny"

        @classmethod
        def unet_config(cls, size):
            if size == "tiny":
                raise NotImplementedError
            return get_family("sd15").unet_config("full")

    with pytest.raises(TypeError, match="no tiny config"):
        register_family(NoTiny)
    assert "no-tiny" not in FAMILIES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_registered_family_builds_tiny(name):
    """Every registered family (also ones added later) has a tiny config that builds and runs."""
    unet, text, vae = build_components(name, "tiny", seed=0)
    cfg = get_family(name).configs("tiny")
    s, D = cfg["unet"]["sample_size"], cfg["text_encoder"]["hidden_size"]
    args = [torch.randn(1, 4, s, s), torch.tensor([10.0]), torch.randn(1, 77, D)]
    kw = {}
    if cfg["unet"].get("time_cond_proj_dim"):
        kw["timestep_cond"] = torch.randn(1, cfg["unet"]["time_cond_proj_dim"])
    with torch.no_grad():
        out = unet(*args, return_dict=False, **kw)[0]
    assert out.shape == (1, 4, s, s) and torch.isfinite(out).all()
    assert sum(p.numel() for p in unet.parameters()) < 5e6, "tiny means tiny"


def test_all_registered_families_have_tiny_configs():
    for name, fam in all_families().items():
        assert fam.unet_config("tiny")["sample_size"] <= 16, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tiny_keeps_the_topology(name):
    fam = get_family(name)
    assert _topology(fam.unet_config("tiny")) == _topology(fam.unet_config("full"))
    assert fam.text_config("tiny")["hidden_act"] == fam.text_config("full")["hidden_act"]


def test_head_dim_rules():
    """SD 1.x: 8 heads everywhere; SD 2.x: 64-wide heads (tiny: 8-wide) -> heads = channels / width."""
    for size, width in (("full", 64), ("tiny", 8)):
        cfg = get_family("sd21").unet_config(size)
        assert list(cfg["attention_head_dim"]) == [c // width for c in cfg["block_out_channels"]]
        assert cfg["use_linear_projection"] is True
        assert get_family("sd15").unet_config(size)["attention_head_dim"] == 8
    assert get_family("sd21").text_config("full")["hidden_size"] == 1024
    assert get_family("sd15").text_config("full")["hidden_size"] == 768


def test_pipeline_facts():
    assert get_family("sd-turbo").unet_batch() == 1 and get_family("sd-turbo").scheduler_config()["timestep_spacing"] == "trailing"
    assert get_family("sd21").scheduler_config()["prediction_type"] == "epsilon"
    assert get_family("lcm").unet_config("full")["time_cond_proj_dim"] == 256 and get_family("lcm").unet_batch() == 1
    for name in ("bk-sdm-small", "bk-sdm-tiny", "small-sd", "tiny-sd"):
        assert get_family(name).unet_config("full")["mid_block_type"] is None
    assert get_family("bk-sdm-base").unet_config("full")["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    assert len(get_family("bk-sdm-tiny").unet_config("full")["down_block_types"]) == 3
    snap = get_family("snapfusion").unet_config("full")
    assert snap["down_block_types"][0] == "DownBlock2D" and snap["up_block_types"][-1] == "UpBlock2D"  # no attention at 64x64
    assert get_family("snapfusion").vae_config("full")["block_out_channels"] == (64, 128, 256, 256)


def test_bk_sdm_has_no_mid_block():
    unet, _, _ = build_components("bk-sdm-small", "tiny")
    assert unet.mid_block is None
    assert all(len(b.resnets) == 1 for b in unet.down_blocks) and all(len(b.resnets) == 2 for b in unet.up_blocks)


# -- init + recognition -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_init_writes_a_loadable_checkpoint_of_the_family(tiny_ckpts, name):
    folder = tiny_ckpts[name]
    for f in ("model_index.json", "unet/config.json", "text_encoder/config.json", "vae/config.json",
              "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json"):
        assert (folder / f).is_file(), f
    ck = Checkpoint.open(folder)
    assert ck.family == name
    unet = ck.load_unet()
    assert type(unet) is unet_class(ck.unet_config)


def test_detection_from_configs_alone(tiny_ckpts):
    """Without the family recorded by init; segmind checkpoints share BK-SDM's topology."""
    for name, folder in tiny_ckpts.items():
        ck = Checkpoint.open(folder)
        found = detect_family(ck.unet_config, ck.text_encoder_config, ck.scheduler_config)
        assert found == {"small-sd": "bk-sdm-small", "tiny-sd": "bk-sdm-tiny"}.get(name, name)
    segmind = dict(Checkpoint.open(tiny_ckpts["tiny-sd"]).unet_config, _name_or_path="segmind/tiny-sd")
    assert detect_family(segmind, {}, {}) == "tiny-sd"
    assert detect_family({"_class_name": "Other", "down_block_types": []}, {}, {}) is None


def test_init_is_seeded(tmp_path):
    a = init_checkpoint("bk-sdm-tiny", tmp_path / "a", seed=3)
    b = init_checkpoint("bk-sdm-tiny", tmp_path / "b", seed=3)
    c = init_checkpoint("bk-sdm-tiny", tmp_path / "c", seed=4)
    wa, wb, wc = ((p / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() for p in (a, b, c))
    assert wa == wb and wa != wc
    with pytest.raises(InputError, match="already exists"):
        init_checkpoint("bk-sdm-tiny", tmp_path / "a")


def test_sd2_tokenizer_pads_with_exclamation(tiny_ckpts):
    tok = json.loads((tiny_ckpts["sd21"] / "tokenizer" / "special_tokens_map.json").read_text())
    assert tok["pad_token"] == "!"


def test_init_cli(tmp_path):
    from md_export.cli.app import main

    assert main(["init", "mobilediffusion", "--size", "tiny", "-o", str(tmp_path / "md"), "--json"]) == 0
    assert Checkpoint.open(tmp_path / "md").family == "mobilediffusion"
    assert main(["init", "nope", "-o", str(tmp_path / "x")]) == 2
    assert main(["families", "--json"]) == 0


# -- MobileDiffusion --------------------------------------------------------------------------------


def _md(**kw):
    cfg = MobileDiffusionConfig(**{**dict(block_out_channels=(32, 64, 64), attention_head_dim=8, norm_num_groups=8,
                                          sample_size=16, cross_attention_dim=32), **kw})
    torch.manual_seed(0)
    return MobileDiffusionUNet(cfg).eval()


def test_mobilediffusion_design():
    m = _md()
    cfg = m.cfg
    # no transformer at the highest resolution; cross-attention only in the middle; full blocks at the bottom
    assert all(layer.attn is None for layer in m.down[0]) and all(layer.attn is None for layer in m.up[-1])
    mid_level = [layer.attn for layer in m.down[1]]
    assert all(a is not None and not any(b.self_attention for b in a.blocks) for a in mid_level)
    assert all(all(b.self_attention for b in layer.attn.blocks) for layer in m.down[2])
    assert len(m.mid.attn.blocks) == cfg.mid_transformer_layers
    # one ResNet per level; shared K/V; separable convs except at the edges
    assert all(len(level) == 1 for level in m.down)
    attn = m.mid.attn.blocks[0].attn2
    assert hasattr(attn, "to_kv") and not hasattr(attn, "to_k")
    assert isinstance(m.conv_in, torch.nn.Conv2d) and isinstance(m.conv_out, torch.nn.Conv2d)
    assert isinstance(m.down[0][0].res.conv1, torch.nn.Conv2d)
    dw = m.down[1][0].res.conv1[0]
    assert dw.groups == dw.in_channels == 32 and dw.kernel_size == (3, 3)  # depthwise, then 1x1 pointwise
    assert m.down[1][0].res.conv1[1].kernel_size == (1, 1)
    assert not any(isinstance(x, torch.nn.GELU) for x in m.modules())


def test_mobilediffusion_forward_contract_and_relu_attention():
    x, t, e = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 999.0]), torch.randn(2, 77, 32)
    for act in ("softmax", "relu"):
        m = _md(attention_activation=act, shared_kv=act == "softmax")
        with torch.no_grad():
            out = m(x, t, e, return_dict=False)
            assert isinstance(out, tuple) and out[0].shape == x.shape and torch.isfinite(out[0]).all()
            assert torch.equal(m(x, t, e).sample, out[0])
            # a 0-d timestep broadcasts over the batch like diffusers' UNet
            assert torch.allclose(m(x, torch.tensor(10.0), e, return_dict=False)[0][0], out[0][0], atol=1e-5)
    with pytest.raises(InputError, match="attention_activation"):
        _md(attention_activation="gelu")
    with pytest.raises(InputError, match="level_types"):
        _md(level_types=("res", "cross"))


def test_mobilediffusion_save_load_roundtrip(tmp_path):
    m = _md(time_cond_proj_dim=16)
    m.save_pretrained(tmp_path / "unet")
    cfg = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert cfg["_class_name"] == "MobileDiffusionUNet" and cfg["down_block_types"][0] == "MDResBlockDown"
    m2 = MobileDiffusionUNet.from_pretrained(tmp_path / "unet")
    x, t, e, c = torch.randn(1, 4, 16, 16), torch.tensor([5.0]), torch.randn(1, 77, 32), torch.randn(1, 16)
    with torch.no_grad():
        assert torch.equal(m(x, t, e, timestep_cond=c).sample, m2(x, t, e, timestep_cond=c).sample)
    cfg["block_out_channels"] = [32, 64, 128]
    (tmp_path / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="do not fit"):
        MobileDiffusionUNet.from_pretrained(tmp_path / "unet")


# -- exports: each recipe through each of its targets is tests/test_recipes.py::test_recipe_exports_and_checks --


@pytest.mark.parametrize("name,batch,guidance,steps", [("sd-turbo", 1, "none", 1), ("lcm", 1, "embedded", 4),
                                                      ("sd15", 2, "cfg-batch2", 20), ("mobilediffusion", 2, "cfg-batch2", 8)])
def test_family_defaults_reach_the_plan(tiny_ckpts, name, batch, guidance, steps):
    from md_export.components.plan import make_plan
    from md_export.config.options import ExportOptions
    from md_export.config.resolve import with_family_defaults

    ck = Checkpoint.open(tiny_ckpts[name])
    o = with_family_defaults(ck, ExportOptions())
    plan = make_plan(ck, unet_batch=o.unet_batch)
    pipe = plan.pipeline_json(ck, o.steps, o.scheduler)
    assert (plan.unet_batch, pipe["guidance"], pipe["default_steps"]) == (batch, guidance, steps)
    assert pipe["scheduler"] == get_family(name).scheduler
    assert with_family_defaults(ck, ExportOptions(unet_batch=2, steps=9)).steps == 9


@pytest.mark.parametrize("name", ["mobilediffusion", "lcm", "sd-turbo"])
def test_inspect_shows_the_family_defaults(tiny_ckpts, capsys, name):
    """`md-export inspect` shows the steps, scheduler and UNet batch export would record, not the
    plan's generic ones (20 steps for MobileDiffusion, whose family default is 8)."""
    from md_export.cli.app import main

    fam = get_family(name)
    assert main(["inspect", str(tiny_ckpts[name]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    pipe = data["pipeline"]
    assert data["family"] == name and data["recipe"] is None
    assert (pipe["default_steps"], pipe["scheduler"], pipe["unet_batch"]) == (fam.default_steps, fam.scheduler, fam.unet_batch())
    assert [s["shape"][0] for s in data["exports"]["unet"]["inputs"]][0] == fam.unet_batch()
    assert main(["inspect", str(tiny_ckpts[name]), "--json", "--steps", "3", "--unet-batch", "1"]) == 0
    given = json.loads(capsys.readouterr().out)["pipeline"]
    assert (given["default_steps"], given["unet_batch"]) == (3, 1)  # the command line wins, as in export


def test_inspect_with_a_recipe(tiny_ckpts, tmp_path, capsys):
    from md_export.cli.app import main

    recipe = tmp_path / "r.toml"
    recipe.write_text((REPO / "recipes" / "mobilediffusion-ios.toml").read_text().replace("steps = 8", "steps = 6")
                      .replace('scheduler = "ddim"', 'scheduler = "euler"'))
    assert main(["inspect", str(tiny_ckpts["mobilediffusion"]), "--recipe", str(recipe), "--height", "64", "--width", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipe"] == str(recipe) and data["targets"] == ["coreml"]
    assert (data["pipeline"]["default_steps"], data["pipeline"]["scheduler"], data["pipeline"]["image_height"]) == (6, "euler", 64)
    assert main(["inspect", str(tiny_ckpts["lcm"]), "--recipe", "mobilediffusion-ios"]) == 2  # another family's recipe
    assert "recipe is for family 'mobilediffusion'" in capsys.readouterr().err


@pytest.mark.slow
def test_full_size_parameter_counts():
    """Published sizes: BK-SDM-Base/Small/Tiny UNets 0.58/0.49/0.33B, SD 1.5 UNet 0.86B."""
    from md_export.components.plan import count_parameters

    expect = {"sd15": 859.5e6, "bk-sdm-base": 579.4e6, "bk-sdm-small": 482.3e6, "bk-sdm-tiny": 323.4e6}
    for name, n in expect.items():
        cls = unet_class(get_family(name).unet_config("full"))
        cfg = {k: v for k, v in get_family(name).unet_config("full").items() if k != "_class_name"}
        assert abs(count_parameters(cls(**cfg)) - n) / n < 0.01, name


def test_families_name_their_shipped_recipes():
    """`md-export families` names what `--recipe` takes for each family; every shipped recipe is listed once."""
    from md_export.config.recipe import recipes_of, shipped_recipes
    from md_export.families.registry import all_families

    listed = {f.name: recipes_of(f.name) for f in all_families().values()}
    assert "mobilediffusion-ios" in listed["mobilediffusion"] and listed["sd15"] == ["sd15"]
    assert sorted(r for names in listed.values() for r in names) == sorted(shipped_recipes())
