"""The export plan: static shapes, example inputs, pipeline facts, wrappers (components.plan, .wrappers)."""

from __future__ import annotations

import pytest
import torch

from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import attach_modules, make_plan
from md_export.core.errors import InputError


@pytest.fixture(scope="module")
def ckpt():
    return Checkpoint.open(None)


def test_shapes_follow_the_configs(ckpt):
    plan = make_plan(ckpt)
    unet = {s.name: s.shape for s in plan.components["unet"].inputs}
    assert unet == {"sample": (2, 4, 16, 16), "timestep": (2,), "encoder_hidden_states": (2, 77, 32)}
    assert plan.components["vae_decoder"].outputs[0].shape == (1, 3, 128, 128)
    assert "vae_encoder" not in plan.components
    assert make_plan(ckpt, unet_batch=1, with_encoder=True).components["vae_encoder"].inputs[0].shape == (1, 3, 128, 128)
    assert make_plan(ckpt, height=192, width=64).components["unet"].inputs[0].shape == (2, 4, 24, 8)


@pytest.mark.parametrize("kwargs, words", [
    ({"height": 100}, r"--height 100: this UNet takes sizes that are multiples of 16 .*try 96 or 112"),
    ({"width": 0}, r"--width 0: .*multiples of 16"),
    ({"unet_batch": 3}, r"--unet-batch 3: use 2"),
])
def test_bad_shapes_are_refused_with_what_fits(ckpt, kwargs, words):
    with pytest.raises(InputError, match=words):
        make_plan(ckpt, **kwargs)


def test_example_inputs_are_seeded_and_in_range(ckpt):
    plan = make_plan(ckpt)
    te, unet = plan.components["text_encoder"], plan.components["unet"]
    (ids,) = te.example_inputs(seed=3)
    assert ids.dtype == torch.int32 and ids[0, 0] == 49406 and int(ids[0, 1:].max()) < 49406
    a, b = unet.example_inputs(seed=1), unet.example_inputs(seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(unet.example_inputs(seed=2)[0], a[0])
    assert 1 <= float(a[1].min()) and float(a[1].max()) < 1000


def test_pipeline_facts(ckpt):
    pipe = make_plan(ckpt).pipeline_json(ckpt, steps=8)
    assert pipe["guidance"] == "cfg-batch2" and pipe["default_steps"] == 8 and pipe["unet_batch"] == 2
    assert pipe["decoder_applies_scaling"] is True and pipe["tokenizer"]["eos_token_id"] == 49407
    assert make_plan(ckpt, unet_batch=1).pipeline_json(ckpt)["guidance"] == "none"


def test_decoder_wrapper_applies_the_scaling(ckpt):
    plan = make_plan(ckpt)
    attach_modules(plan, ckpt, only=("vae_decoder",))
    wrapper = plan.components["vae_decoder"].module
    vae = ckpt.load_vae()
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = vae.decode(latent / vae.config.scaling_factor).sample
        assert torch.allclose(wrapper(latent), expected, atol=1e-5)
