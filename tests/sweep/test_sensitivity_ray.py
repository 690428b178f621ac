"""`md-export sensitivity --ray`: the layers scored as Ray tasks give the serial run's numbers."""

from __future__ import annotations

import json

import pytest
import torch

from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import attach_modules, make_plan
from md_export.compress import sensitivity as S
from md_export.compress.calibration import calibration_feeds
from md_export.sweep import sensitivity as ray_sensitivity


@pytest.fixture(scope="module")
def decoder_and_feeds():
    ckpt = Checkpoint.open(None)
    plan = make_plan(ckpt)
    attach_modules(plan, ckpt)
    comp = plan.components["vae_decoder"]
    return comp, calibration_feeds(comp, {"plan": plan, "checkpoint": ckpt}, limit=2)


def test_pieces_score_each_layer_once_and_as_the_whole_run_does(decoder_and_feeds):
    comp, feeds = decoder_and_feeds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = S.analyze(comp, feeds, "tflite")
        names = [s.name for s in whole]
        pieces = [S.analyze(comp, feeds, "tflite", only=names[i::3]) for i in range(3)]
    finally:
        torch.set_num_threads(threads)
    scored = {s.name: s for p in pieces for s in p}
    assert len(scored) == len(names) == sum(len(p) for p in pieces) >= 10
    assert all(scored[s.name].psnr == s.psnr for s in whole)


@pytest.mark.slow
def test_ray_gives_the_serial_ranking_and_numbers(decoder_and_feeds):
    pytest.importorskip("ray")
    comp, feeds = decoder_and_feeds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = S.analyze(comp, feeds, "tflite")
    finally:
        torch.set_num_threads(threads)
    seen = []
    analyze = ray_sensitivity.ray_analyzer(None, None, num_cpus=2, pieces=4, threads=1, on_piece=lambda k, n: seen.append((k, n)))
    on_ray = analyze(comp, feeds, "tflite")
    assert [s.name for s in on_ray] == [s.name for s in serial]
    assert [s.psnr for s in on_ray] == [s.psnr for s in serial]
    rank = lambda scores: sorted((s.name for s in scores), key=lambda n: next(x.psnr[8] for x in scores if x.name == n))  # noqa: E731
    assert rank(on_ray) == rank(serial)
    assert seen[-1] == (4, 4)
    a = S.recipe_json("vae_decoder", "tflite", serial, 6.0)
    b = S.recipe_json("vae_decoder", "tflite", on_ray, 6.0)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
