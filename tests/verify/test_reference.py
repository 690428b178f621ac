"""The check's reference: one component loaded at a time, each result computed once per run and
shared by the bundles of one checkpoint, and nothing in a bundle can pick a result for itself."""

from __future__ import annotations

import json
import shutil

import numpy as np

import md_export.verify.reference as reference_mod
from md_export.verify.check import check_bundle
from md_export.verify.reference import ReferenceCache


def _watch_loads(monkeypatch):
    """Record, at every reference load, the components already held and the ones asked for."""
    loads = []
    real = reference_mod.attach_modules

    def attach(plan, ckpt, only=None):
        held = sorted(n for n, c in plan.components.items() if c.module is not None)
        loads.append((held, sorted(only or plan.components)))
        real(plan, ckpt, only=only)

    monkeypatch.setattr(reference_mod, "attach_modules", attach)
    return loads


def test_one_component_at_a_time_and_two_bundles_share_every_result(bundle_copy, default_export, tmp_path, monkeypatch):
    from md_export.checkpoint.folder import Checkpoint

    monkeypatch.setattr(Checkpoint, "is_large", lambda self: True)  # as a full-size pipeline is checked
    loads = _watch_loads(monkeypatch)
    cache = ReferenceCache()
    first = check_bundle(bundle_copy("coreml"), samples=2, e2e_steps=2, references=cache)
    first_loads, hits_after_first = len(loads), cache.hits
    assert first_loads >= 3  # text encoder, UNet, VAE decoder, then the pipeline's two
    for held, asked in loads:
        # a load never happens next to another component, except the pipeline's text encoder + UNet
        assert set(held) | set(asked) <= {"text_encoder", "unet"} or set(held) | set(asked) <= {"vae_decoder", "vae_encoder"}, (held, asked)

    second = check_bundle(bundle_copy("tflite"), samples=2, e2e_steps=2, references=cache)
    assert len(loads) == first_loads, "the second bundle of the same checkpoint loaded the reference again"
    shared = cache.hits - hits_after_first
    assert shared >= 3 * 2 + 1  # every model sample and the end-to-end image
    assert first.status == "pass" and second.status == "pass", (first.status, second.status)

    # the shared results are the ones a check on its own computes
    shutil.copytree(default_export["tflite"].bundle, tmp_path / "alone")
    alone = check_bundle(tmp_path / "alone", samples=2, e2e_steps=2)
    by_model = {(c.model): c.metrics.get("psnr") for c in alone.checks}
    for c in second.checks:
        assert c.metrics.get("psnr") == by_model[c.model], c.model


def test_a_bundle_with_other_scheduler_files_gets_its_own_reference_image(bundle_copy, monkeypatch):
    cache = ReferenceCache()
    check_bundle(bundle_copy("onnx"), samples=1, e2e_steps=1, references=cache)
    other = bundle_copy("tflite")
    sched = other / "scheduler.json"
    cfg = json.loads(sched.read_text())
    cfg["steps_offset"] = 1 - int(cfg.get("steps_offset", 0))
    sched.write_text(json.dumps(cfg))
    loads = _watch_loads(monkeypatch)
    check_bundle(other, samples=1, e2e_steps=1, references=cache)
    # the model results are shared; the image is not, because the scheduler it is made with differs
    assert [asked for _, asked in loads] == [["text_encoder", "unet"]]


def test_results_are_keyed_by_the_input_bytes(default_export):
    from md_export.checkpoint.folder import Checkpoint
    from md_export.components.plan import make_plan
    from md_export.verify.reference import Reference

    ckpt = Checkpoint.open(None)
    ref = Reference(make_plan(ckpt), ckpt, {}, ReferenceCache())
    ids = np.zeros((1, 77), np.int32)
    a = ref.output("text_encoder", {"input_ids": ids})
    ids2 = ids.copy()
    ids2[0, 1] = 5
    b = ref.output("text_encoder", {"input_ids": ids2})
    assert ref.cache.hits == 0 and not np.array_equal(a, b)
    assert ref.output("text_encoder", {"input_ids": ids.copy()}) is a and ref.cache.hits == 1


def test_the_end_to_end_loop_holds_one_bundle_model_at_a_time(default_export, monkeypatch):
    """open_bundle(one_at_a_time=True): each model opened on first call, the one before it closed,
    and the same image as with every model open."""
    import weakref

    import md_export.runtime.bundle as bundle_mod
    from md_export.core.manifest import read_manifest
    from md_export.pipeline.loop import generate
    from md_export.pipeline.tokenizer import ClipTokenizer
    from md_export.runtime.bundle import open_bundle
    from md_export.verify.check import tokenizer_folder

    bundle = default_export["tflite"].bundle
    manifest = read_manifest(bundle)
    alive, opened = [], []
    real = bundle_mod.open_model

    class Held:  # a runner whose lifetime the test can see
        def __init__(self, run):
            self.run = run

        def __call__(self, feeds):
            assert sum(r() is not None for r in alive) == 1, "another model is still open"
            return self.run(feeds)

    def open_model(target, b, entry, engine=None):
        runner = Held(real(target, b, entry, engine))
        alive.append(weakref.ref(runner))
        opened.append(entry["file"])
        return runner

    monkeypatch.setattr(bundle_mod, "open_model", open_model)
    tok = ClipTokenizer.from_folder(tokenizer_folder(bundle, manifest))
    sched = json.loads((bundle / "scheduler.json").read_text())
    models, pipe = open_bundle(bundle, manifest, one_at_a_time=True)
    assert not opened  # nothing opened before the loop asks
    one = generate(models, pipe, tok, sched, "a red circle", steps=1, guidance_scale=7.5, seed=3)
    assert opened == ["text_encoder.tflite", "unet.tflite", "vae_decoder.tflite"]
    alive.clear()
    monkeypatch.setattr(bundle_mod, "open_model", real)
    every, pipe = open_bundle(bundle, manifest)
    assert np.array_equal(one, generate(every, pipe, tok, sched, "a red circle", steps=1, guidance_scale=7.5, seed=3))


def test_a_small_pipeline_keeps_its_reference_loaded_through_a_check(bundle_copy, monkeypatch):
    loads = _watch_loads(monkeypatch)
    check_bundle(bundle_copy("onnx"), samples=1, e2e_steps=1)
    # text encoder, UNet, VAE decoder once each: nothing dropped and loaded again
    assert sorted(n for _, asked in loads for n in asked) == ["text_encoder", "unet", "vae_decoder"], loads
