"""Sweep file validation: one-line errors naming the file and the key; the bundled sweep loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from md_export.core.errors import InputError
from md_export.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[2]

GOOD = """schema_version = 1
[targets.onnx]
levels = ["fp16", "int8"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sweep.toml"
    p.write_text(text)
    return p


def error(tmp_path: Path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_spec(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: "), msg
    assert e.value.exit_code == 2
    return msg


@pytest.mark.parametrize("text, key, words", [
    ("[targets.onnx]\nlevels = ['fp16']\n", "schema_version", "missing"),
    ("schema_version = 2\n[targets.onnx]\nlevels = ['fp16']\n", "schema_version", "not supported"),
    ("colour = 'red'\n" + GOOD, "colour", "unknown key"),
    (GOOD + "colour = 'red'\n", "targets.onnx.colour", "unknown key; known: levels, keep, args"),
    ("schema_version = 1\n", "targets", "missing"),
    ("schema_version = 1\n[targets.webgpu]\nlevels = ['fp16']\n", "targets.webgpu", "unknown key; known: coreml, tflite, onnx"),
    ("schema_version = 1\n[targets.onnx]\nlevels = []\n", "targets.onnx.levels", "empty"),
    ("schema_version = 1\n[targets.onnx]\nkeep = []\n", "targets.onnx.levels", "missing"),
    ("schema_version = 1\n[targets.coreml]\nlevels = ['fp16', 'int3']\n", "targets.coreml.levels[1]", "'int3' is not a coreml"),
    ("schema_version = 1\n[targets.onnx]\nlevels = ['palettize-4']\n", "targets.onnx.levels[0]", "not a onnx compression level"),
    ("schema_version = 1\n[targets.onnx]\nlevels = 'fp16'\n", "targets.onnx.levels", "must be a list"),
    ("schema_version = 1\n[targets.onnx]\nlevels = ['fp16', 'fp16']\n", "targets", "appears twice"),
    (GOOD + "keep = ['unet:fp16']\n", "targets.onnx.keep[0]", "COMPONENT=LEVEL"),
    (GOOD + "keep = ['decoder=fp16']\n", "targets.onnx.keep[0]", "unknown component 'decoder'"),
    (GOOD + "args = ['--quantize', 'int8']\n", "targets.onnx.args[0]", "set by the sweep"),
    (GOOD + "[export]\nargs = ['-o', 'x']\n", "export.args[0]", "set by the sweep"),
    (GOOD + "[check]\nsamples = '2'\n", "check.samples", "must be an integer"),
    (GOOD + "[check]\nsamples = 0\n", "check.samples", ">= 1"),
    (GOOD + "[check]\neval = 'yes'\n", "check.eval", "true or false"),
    (GOOD + "[check]\nthresholds = ['unet:45']\n", "check.thresholds[0]", "MODEL=DB"),
    (GOOD + "[check]\nspeed = 1\n", "check.speed", "unknown key"),
    (GOOD + "[resources]\nmemory_factor = -1\n", "resources.memory_factor", ">= 0"),
    (GOOD + "[resources]\ncpus_per_cell = 0\n", "resources.cpus_per_cell", "> 0"),
    (GOOD + "[[models]]\ncheckpoint = 'nowhere/'\n", "models[0].checkpoint", "does not exist"),
    (GOOD + "[[models]]\ncheckpoint = '.'\nfamily = 'sd15'\n", "models[0]", "not both"),
    (GOOD + "[[models]]\nsize = 'tiny'\n", "models[0].size", "only with family"),
    (GOOD + "[[models]]\nfamily = 'sd15'\nsize = 'huge'\n", "models[0].size", "use tiny or full"),
    (GOOD + "[[models]]\nfamily = 'sd15'\n[[models]]\nfamily = 'sd15'\n", "models[1].name", "distinct name"),
    (GOOD + "[[models]]\nname = 'a b'\n", "models[0].name", "names a folder"),
    (GOOD + "[[models]]\nfile = 'x'\n", "models[0].file", "unknown key"),
])
def test_errors_name_the_key(tmp_path, text, key, words):
    msg = error(tmp_path, text)
    assert f": {key}: " in msg, msg
    assert words in msg, msg


def test_not_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in error(tmp_path, "schema_version = = 1\n")
    with pytest.raises(InputError, match="sweep file not found"):
        load_spec(tmp_path / "absent.toml")


def test_cells_are_models_x_targets_x_levels(tmp_path):
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    p = write(tmp_path, GOOD + "keep = ['vae_decoder=fp16']\n[targets.tflite]\nlevels = ['INT4-block32', 'mixed:fc=int8']\n"
                              "[export]\nkeep = ['text_encoder=fp16']\nargs = ['--height', '128']\n"
                              "[[models]]\ncheckpoint = 'ck'\n[[models]]\nfamily = 'mobilediffusion'\nseed = 3\n")
    spec = load_spec(p)
    assert [m.name for m in spec.models] == ["ck", "mobilediffusion-tiny-s3"]
    assert spec.models[0].checkpoint == ckpt.resolve()  # relative to the sweep file
    cells = spec.cells()
    assert len(cells) == 2 * (2 + 2)
    onnx = next(c for c in cells if c.target == "onnx")
    assert onnx.keep == ("text_encoder=fp16", "vae_decoder=fp16") and onnx.args == ("--height", "128")
    tfl = [c for c in cells if c.target == "tflite"]
    assert [c.level for c in tfl[:2]] == ["int4-block32", "mixed:fc=int8"] and tfl[0].keep == ("text_encoder=fp16",)


def test_bundled_default_sweep_has_twelve_cells():
    spec = load_spec(REPO / "sweeps" / "default.toml")
    cells = spec.cells()
    assert len(cells) == 12
    assert {c.target for c in cells} == {"coreml", "tflite", "onnx"}
    assert all(c.model.kind == "default" for c in cells)
    assert sum(c.target == t for c in cells for t in ("coreml",)) == 4
    assert spec.check.eval  # the bundled model is shapes-v1, so each cell is judged
    assert spec.check.key()["eval_prompts"] == 12 and spec.check.key()["eval_seeds"] == 1  # in the hash: other sizes, other cells
