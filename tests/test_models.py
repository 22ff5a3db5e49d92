"""Model sources: local diffusers folders, single-file checkpoints, pickle refusal, offline hub ids."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import pixels
from ldm_checkpoint import save_ldm_checkpoint

from backend.engine import GenerationRequest, create_engine
from backend.engine.models import resolve
from backend.errors import ModelUnavailable

REQ = GenerationRequest("a brick wall", width=64, height=64, steps=3, seed=11)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_engine):
    """The tiny model written as a diffusers folder and as a single LDM-layout .safetensors file."""
    root = tmp_path_factory.mktemp("models")
    tiny_engine._base.save_pretrained(root / "folder")
    save_ldm_checkpoint(tiny_engine._base, root / "tiny.safetensors")
    return root


def test_local_folder_gives_the_same_pixels(saved_model, tiny_engine):
    engine = create_engine(str(saved_model / "folder"))
    assert engine.info()["family"] == "sd"
    assert np.array_equal(pixels(engine.generate(REQ)[0].image), pixels(tiny_engine.generate(REQ)[0].image))


def test_single_file_checkpoint_gives_the_same_pixels(saved_model, tiny_engine):
    engine = create_engine(str(saved_model / "tiny.safetensors"), single_file_config=str(saved_model / "folder"))
    assert np.array_equal(pixels(engine.generate(REQ)[0].image), pixels(tiny_engine.generate(REQ)[0].image))


def test_single_file_without_reachable_config_says_what_to_do(saved_model):
    with pytest.raises(ModelUnavailable, match=r"hf download stable-diffusion-v1-5/stable-diffusion-v1-5"):
        create_engine(str(saved_model / "tiny.safetensors"))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth"])
def test_pickle_files_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not even a pickle")
    with pytest.raises(ModelUnavailable, match="pickle.*--allow-pickle"):
        create_engine(str(path))
    assert resolve(str(path), allow_pickle=True).kind == "single_file"


def test_folder_with_only_pickle_weights_refused(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match="pickle"):
        resolve(str(tmp_path))


def test_hub_id_offline_says_what_to_do():
    with pytest.raises(ModelUnavailable) as info:
        create_engine("someone/not-cached-model")
    message = str(info.value)
    assert "HF_HUB_OFFLINE=1" in message and "scene-diffusion download someone/not-cached-model" in message
    assert "testing/tiny-sd" in message


@pytest.mark.parametrize(
    "ref, words",
    [
        ("./missing.safetensors", "does not exist"),
        ("testing/unknown", "unknown test model"),
        ("", "no model given"),
        ("just-a-name", "owner/name"),
    ],
)
def test_bad_references(ref, words):
    with pytest.raises(ModelUnavailable, match=words):
        resolve(ref)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelUnavailable, match="model_index.json"):
        resolve(str(tmp_path))


def test_other_file_type(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("x")
    with pytest.raises(ModelUnavailable, match=".safetensors"):
        resolve(str(path))
