"""Where a model comes from: a Hugging Face repo id, a local diffusers folder, a single checkpoint file,
or a built-in test model; and how it is loaded offline-safely.

Pickle checkpoints (.ckpt, .bin, .pt, .pth) can run arbitrary code when loaded, so they are refused
unless the caller explicitly allows them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ModelUnavailable
from . import tiny

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Depth ControlNets used for depth-conditioned generation, by model family, unless one is given.
DEFAULT_DEPTH_CONTROLNETS = {
    "sd": "lllyasviel/control_v11f1p_sd15_depth",
    "sdxl": "diffusers/controlnet-depth-sdxl-1.0",
}
# Where a single-file checkpoint of each family finds its component configs and tokenizer.
SINGLE_FILE_CONFIGS = {
    "sd": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd-inpaint": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "sd2-depth": "stabilityai/stable-diffusion-2-depth",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
TESTING_MODELS = (tiny.TINY_SD, tiny.TINY_SDXL, tiny.TINY_SD2_DEPTH, "testing/pattern")

Kind = Literal["testing", "hub", "folder", "single_file", "given"]


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference. `ref` is what the user wrote; `path` is set for local models."""

    ref: str
    kind: Kind
    path: Path | None = None


def resolve(ref: str, allow_pickle: bool = False) -> ModelSource:
    """Decide what `ref` names without loading anything; raise ModelUnavailable with advice if it can't be used."""
    ref = str(ref).strip()
    if not ref:
        raise ModelUnavailable("no model given: pass a Hugging Face repo id, a local folder or a .safetensors file")
    if tiny.is_testing_model(ref):
        if ref not in TESTING_MODELS:
            raise ModelUnavailable(f"unknown test model '{ref}': the built-in ones are {', '.join(TESTING_MODELS)}")
        return ModelSource(ref, "testing")
    path = Path(os.path.expanduser(ref))
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelUnavailable(
                f"'{ref}' is a folder but not a diffusers model (no model_index.json): point at the folder "
                "that pipeline.save_pretrained() wrote, or at a single .safetensors checkpoint"
            )
        if not allow_pickle and not any(path.rglob("*.safetensors")) and _has_pickle_weights(path):
            raise ModelUnavailable(_pickle_refusal(ref))
        return ModelSource(ref, "folder", path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise ModelUnavailable(_pickle_refusal(ref))
            return ModelSource(ref, "single_file", path)
        if suffix in SAFE_SUFFIXES:
            return ModelSource(ref, "single_file", path)
        raise ModelUnavailable(f"'{ref}' is not a model checkpoint: expected a .safetensors file")
    if _looks_like_path(ref):
        raise ModelUnavailable(f"model file or folder '{ref}' does not exist")
    if ref.count("/") != 1:
        raise ModelUnavailable(
            f"'{ref}' is neither an existing file or folder nor a Hugging Face repo id of the form owner/name"
        )
    return ModelSource(ref, "hub")


def _looks_like_path(ref: str) -> bool:
    return (
        ref.startswith((".", "/", "~"))
        or "\\" in ref
        or ref.count("/") > 1
        or ref.lower().endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES)
    )


def _has_pickle_weights(folder: Path) -> bool:
    return any(p.suffix.lower() in PICKLE_SUFFIXES for p in folder.rglob("*") if p.is_file())


def _pickle_refusal(ref: str) -> str:
    return (
        f"'{ref}' holds pickle weights, which can run arbitrary code when loaded: convert it to .safetensors, "
        "or pass --allow-pickle if you trust its source"
    )


def offline_advice(ref: str) -> str:
    """What to do when `ref` cannot be fetched: the message a user sees offline."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = "the hub is switched off (HF_HUB_OFFLINE=1)" if offline else "the hub could not be reached"
    return (
        f"model '{ref}' is not in the local Hugging Face cache and {why}. With internet, run "
        f"`scene-diffusion download {ref}` once (or copy the Hugging Face cache folder here), point --model at "
        f"a local diffusers folder or .safetensors file, or use --model {tiny.TINY_SD} for a dry run with the "
        "test model (it paints noise)"
    )


def hub_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this model can't be had here" rather than a bug."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub import errors as hf_errors

        for name in ("LocalEntryNotFoundError", "RepositoryNotFoundError", "HfHubHTTPError", "HFValidationError",
                     "EntryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            if hasattr(hf_errors, name):
                errors.append(getattr(hf_errors, name))
    except ImportError:
        pass
    return tuple(errors)


def single_file_family(path: Path) -> str:
    """Which architecture a checkpoint holds, read from its tensor names and shapes (no weights loaded)."""
    if path.suffix.lower() != ".safetensors":
        return "sd"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        if any(k.startswith("conditioner.embedders.1.") for k in keys):
            return "sdxl"
        first_conv = "model.diffusion_model.input_blocks.0.0.weight"
        if first_conv in keys:
            in_channels = handle.get_slice(first_conv).get_shape()[1]
            if in_channels == 9:
                return "sd-inpaint"
            if in_channels == 5:
                return "sd2-depth"
    return "sd"


def download(ref: str, depth: bool = False) -> list[str]:
    """Fetch a hub model (only the files a pipeline loads, safetensors only) and, with `depth`, the depth
    ControlNet of its family into the Hugging Face cache. Returns the local folders."""
    import diffusers
    from huggingface_hub import snapshot_download

    source = resolve(ref)
    if source.kind != "hub":
        raise ModelUnavailable(f"'{ref}' is not a hub model id: there is nothing to download")
    try:
        folders = [str(diffusers.DiffusionPipeline.download(ref, use_safetensors=True))]
        if depth:
            family = "sdxl" if "xl" in ref.lower() else "sd"
            controlnet = DEFAULT_DEPTH_CONTROLNETS[family]
            folders.append(snapshot_download(controlnet, allow_patterns=["config.json",
                                                                         "diffusion_pytorch_model.safetensors"]))
    except hub_errors() as exc:
        raise ModelUnavailable(f"could not download '{ref}': {str(exc).strip().splitlines()[0]}") from exc
    return folders
