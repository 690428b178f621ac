"""The typed manifest: one writer, one reader, validated with errors naming the field, and the
documented format (docs/bundle-format.md) in step with the schema."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from md_export.cli.app import main
from md_export.core.errors import InputError
from md_export.core.manifest import ChunkEntry, Manifest, ModelEntry, Pipeline, TensorEntry, TokenizerEntry, load_manifest

DOC = Path(__file__).resolve().parents[2] / "docs" / "bundle-format.md"


def _doc_example() -> dict:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```json\n(.*?)\n```", text, re.S)
    assert block, "docs/bundle-format.md has no ```json manifest example"
    return json.loads(block.group(1))


def test_documented_example_is_a_valid_manifest():
    example = _doc_example()
    manifest = Manifest.from_json(example, DOC)
    assert manifest.to_json() == {k: v for k, v in example.items()}
    assert set(manifest.models) == {"unet", "text_encoder", "vae_decoder"}


@pytest.mark.parametrize("schema", [Manifest, ModelEntry, Pipeline, TensorEntry, ChunkEntry, TokenizerEntry])
def test_every_schema_field_is_documented(schema):
    text = DOC.read_text(encoding="utf-8")
    missing = [f.name for f in dataclasses.fields(schema)
               if f'"{f.name}"' not in text and not re.search(rf"`[^`]*\b{f.name}\b[^`]*`", text)]
    assert not missing, f"docs/bundle-format.md does not mention {schema.__name__} fields {missing}"


def test_exported_manifests_round_trip(default_export):
    for target in ("coreml", "tflite", "onnx"):
        bundle = default_export[target].bundle
        raw = json.loads((bundle / "manifest.json").read_text())
        assert load_manifest(bundle).to_json() == raw


@pytest.mark.parametrize("path, value, field", [
    (("models", "unet", "bytes"), "12", "models.unet.bytes"),
    (("pipeline", "latent_height"), "16", "pipeline.latent_height"),
    (("pipeline", "decoder_applies_scaling"), 1, "pipeline.decoder_applies_scaling"),
    (("models", "unet", "inputs"), {"name": "sample"}, "models.unet.inputs"),
    (("models", "text_encoder", "inputs", 0, "shape"), [1, "77"], "models.text_encoder.inputs[0].shape[1]"),
    (("pipeline", "vae_scaling_factor"), "0.18", "pipeline.vae_scaling_factor"),
])
def test_a_wrong_type_names_the_field(bundle_copy, path, value, field, capsys):
    bundle = bundle_copy("onnx")
    data = json.loads((bundle / "manifest.json").read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=re.escape(f"field '{field}'")):
        load_manifest(bundle)
    code = main(["inspect", str(bundle)])
    err = capsys.readouterr().err
    assert code == 2 and f"field '{field}'" in err and len(err.strip().splitlines()) == 1


def test_a_missing_field_is_named(bundle_copy):
    bundle = bundle_copy("tflite")
    data = json.loads((bundle / "manifest.json").read_text())
    del data["pipeline"]["tokenizer"]["pad_token_id"]
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"field 'pipeline.tokenizer.pad_token_id': missing"):
        load_manifest(bundle)


def test_check_rewrites_the_manifest_through_the_schema(bundle_copy):
    bundle = bundle_copy("onnx")
    before = json.loads((bundle / "manifest.json").read_text())
    code = main(["check", str(bundle), "--samples", "1", "--no-e2e", "-q"])
    after = json.loads((bundle / "manifest.json").read_text())
    assert code == 0 and after["parity"]["status"] == "pass"
    assert {k: v for k, v in after.items() if k != "parity"} == {k: v for k, v in before.items() if k != "parity"}
    assert not list(bundle.glob(".*.tmp"))
