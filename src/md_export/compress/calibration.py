"""Calibration inputs from real activations: run the reference pipeline (md-export's own loop over
the fp32 torch modules) on the bundled prompts and record what each component is fed, across
timesteps. W8A8 levels compute activation ranges from these; sensitivity analysis scores layers
on them."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from md_export.components.plan import ComponentPlan
from md_export.pipeline.loop import generate
from md_export.pipeline.prompts import bundled_prompts
from md_export.pipeline.tokenizer import ClipTokenizer

DEFAULT_PROMPTS = 4
DEFAULT_STEPS = 4
_RECORDED: dict[int, tuple] = {}


def _torch_model(comp: ComponentPlan, sink: list[dict[str, np.ndarray]]) -> Callable:
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sink.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        with torch.no_grad():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[s.name], dtype=np.int32 if s.dtype == "int32" else np.float32))
                    for s in comp.inputs]
            out = comp.module(*args)
        return {comp.outputs[0].name: out.numpy()}

    return run


def record(plan, ckpt, prompts: list[str] | None = None, steps: int = DEFAULT_STEPS, seed: int = 0,
           max_prompts: int = DEFAULT_PROMPTS) -> dict[str, list[dict[str, np.ndarray]]]:
    """{component: [feeds, ...]} recorded while generating one image per prompt."""
    prompts = (prompts or bundled_prompts())[:max_prompts]
    pipe = plan.pipeline_json(ckpt)
    tokenizer = ClipTokenizer.from_folder(ckpt.tokenizer_dir, pad_token_id=pipe["tokenizer"].get("pad_token_id"))
    sinks: dict[str, list] = {n: [] for n in plan.components}
    models = {n: _torch_model(c, sinks[n]) for n, c in plan.components.items() if c.module is not None and n != "vae_encoder"}
    for i, prompt in enumerate(prompts):
        generate(models, pipe, tokenizer, ckpt.scheduler_config, prompt, steps=steps, seed=seed + i)
    if "vae_encoder" in plan.components and plan.components["vae_encoder"].module is not None:
        # the encoder sees images: feed it the decoded ones
        for feeds in sinks["vae_decoder"]:
            with torch.no_grad():
                img = plan.components["vae_decoder"].module(torch.from_numpy(feeds["latent"])).clamp(-1, 1).numpy()
            sinks["vae_encoder"].append({"image": img})
    return sinks


def prerecord(plan, ckpt) -> None:
    """Record the calibration inputs of `plan` now, while all its reference modules are loaded; an
    export that then loads one component at a time finds them in calibration_feeds."""
    _RECORDED.clear()
    _RECORDED[id(plan)] = (plan, record(plan, ckpt))


def calibration_feeds(component: ComponentPlan, context: dict, limit: int = 16) -> list[dict[str, np.ndarray]]:
    """Recorded inputs of one component, shared by every component of an export (cached in the
    context); falls back to seeded example inputs when no checkpoint is at hand."""
    cache = context.setdefault("calibration", {})
    plan = context.get("plan")
    if not cache and plan is not None and context.get("checkpoint") is not None:
        held = _RECORDED.get(id(plan))
        if held is None or held[0] is not plan:  # one pipeline run per export, shared by its components
            missing = [n for n, c in plan.components.items() if c.module is None and n != "vae_encoder"]
            if missing:  # a streaming export must prerecord() while every module is loaded
                raise RuntimeError(f"calibration: the reference {', '.join(missing)} is not loaded and nothing was recorded")
            held = (plan, record(plan, context["checkpoint"]))
            _RECORDED.clear()
            _RECORDED[id(plan)] = held
        cache.update(held[1])
    feeds = cache.get(component.name) or []
    adapt = getattr(component, "from_contract", None)  # a component in another layout's IO (components.apple)
    if feeds and adapt is not None:
        feeds = [adapt(f) for f in feeds]
    if not feeds:
        feeds = [{s.name: t.numpy() for s, t in zip(component.inputs, component.example_inputs(seed=i))} for i in range(4)]
    if len(feeds) > limit:  # spread over the whole run (all timesteps), not its first steps only
        idx = np.linspace(0, len(feeds) - 1, limit).round().astype(int)
        feeds = [feeds[i] for i in idx]
    return [{s.name: np.ascontiguousarray(f[s.name], dtype=np.int32 if s.dtype == "int32" else np.float32) for s in component.inputs}
            for f in feeds]


def activation_ranges(module: torch.nn.Module, feeds: list[dict[str, np.ndarray]], input_names: list[str],
                      kinds: tuple[type, ...] = (torch.nn.Conv2d, torch.nn.Linear)) -> dict[str, tuple[float, float]]:
    """(min, max) of the input of every conv/linear module over the feeds, by module path."""
    ranges: dict[str, list[float]] = {}
    hooks = []
    for name, m in module.named_modules():
        if isinstance(m, kinds):
            def hook(mod, args, _name=name):
                x = args[0].detach()
                lo, hi = float(x.min()), float(x.max())
                r = ranges.setdefault(_name, [lo, hi])
                r[0], r[1] = min(r[0], lo), max(r[1], hi)

            hooks.append(m.register_forward_pre_hook(hook))
    _run_hooked(module, hooks, feeds, input_names)
    return {k: (v[0], v[1]) for k, v in ranges.items()}


def output_peaks(module: torch.nn.Module, feeds: list[dict[str, np.ndarray]], input_names: list[str]) -> dict[str, float]:
    """max |output| of every leaf module over the feeds (the fp16 overflow hazard map)."""
    peaks: dict[str, float] = {}
    hooks = []
    for name, m in module.named_modules():
        if next(m.children(), None) is None:
            def hook(mod, args, out, _name=name):
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    peaks[_name] = max(peaks.get(_name, 0.0), float(out.detach().abs().max()))

            hooks.append(m.register_forward_hook(hook))
    _run_hooked(module, hooks, feeds, input_names)
    return peaks


def _run_hooked(module: torch.nn.Module, hooks: list, feeds: list[dict[str, np.ndarray]], input_names: list[str]) -> None:
    """Run the feeds through the module, then remove the hooks that recorded what they saw."""
    try:
        with torch.no_grad():
            for f in feeds:
                module(*(torch.from_numpy(f[n]) for n in input_names))
    finally:
        for h in hooks:
            h.remove()
