"""Finding a checkpoint's components on disk, without loading weights (checkpoint.folder, .files, .family)."""

from __future__ import annotations

import json
import shutil

import pytest

from md_export.checkpoint.family import checkpoint_family, source_extras
from md_export.checkpoint.files import default_model_dir, weights_file
from md_export.checkpoint.folder import Checkpoint
from md_export.core.errors import InputError


def test_no_path_is_the_bundled_default():
    ck = Checkpoint.open(None)
    assert ck.kind == "default" and ck.source == default_model_dir()
    assert ck.unet_config["sample_size"] == 16 and ck.text_encoder_config["hidden_size"] > 0
    assert set(ck.weights_sha256()) == {"unet", "text_encoder", "vae"}
    assert all(len(v) == 64 for v in ck.weights_sha256().values())


def test_weights_are_hashed_once_until_a_file_changes(tmp_path, monkeypatch):
    import os

    from md_export.checkpoint import folder

    shutil.copytree(default_model_dir(), tmp_path / "m")
    ck = Checkpoint.open(tmp_path / "m")
    hashed = []
    real = folder.file_sha256
    monkeypatch.setattr(folder, "file_sha256", lambda p: hashed.append(p.parent.name) or real(p))
    first = ck.weights_sha256()
    assert ck.weights_sha256() == first and sorted(hashed) == ["text_encoder", "unet", "vae"]
    vae = weights_file(tmp_path / "m" / "vae", False)
    data = bytearray(vae.read_bytes())
    data[-1] ^= 1
    vae.write_bytes(bytes(data))
    os.utime(vae, ns=(1, 1))  # a new mtime even on a coarse clock
    assert ck.weights_sha256()["vae"] != first["vae"] and hashed.count("vae") == 2


def test_a_missing_component_folder_is_named(tmp_path):
    shutil.copytree(default_model_dir(), tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / "vae")
    with pytest.raises(InputError, match=r"m/vae: missing vae folder \(give it with --vae DIR\)"):
        Checkpoint.open(tmp_path / "m")


def test_not_a_pipeline_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="not a diffusers pipeline folder"):
        Checkpoint.open(tmp_path / "x")


def test_pickle_weights_need_allow_pickle(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(InputError, match="--allow-pickle"):
        weights_file(tmp_path, allow_pickle=False)
    assert weights_file(tmp_path, allow_pickle=True).name == "pytorch_model.bin"


def test_config_without_unet_fields_is_refused(tmp_path):
    shutil.copytree(default_model_dir(), tmp_path / "m")
    cfg = tmp_path / "m" / "unet" / "config.json"
    data = json.loads(cfg.read_text())
    del data["cross_attention_dim"]
    cfg.write_text(json.dumps(data))
    with pytest.raises(InputError, match="not a UNet2DConditionModel config \\(no 'cross_attention_dim'\\)"):
        Checkpoint.open(tmp_path / "m")


def test_family_recorded_by_init_wins_over_detection(tmp_path):
    shutil.copytree(default_model_dir(), tmp_path / "m")
    index = tmp_path / "m" / "model_index.json"
    assert checkpoint_family(Checkpoint.open(tmp_path / "m")) is None  # the default matches no family
    index.write_text(json.dumps({**json.loads(index.read_text()), "_md_export_family": "sd15"}))
    ck = Checkpoint.open(tmp_path / "m")
    assert checkpoint_family(ck) == "sd15" and source_extras(ck, tmp_path) == {"family": "sd15"}


def test_unknown_family_flag_lists_the_known(tmp_path):
    with pytest.raises(InputError, match="unknown family 'sd99'; known: .*sd15"):
        checkpoint_family(Checkpoint.open(None, family="sd99"))
