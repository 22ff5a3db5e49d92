"""Write a diffusers Stable Diffusion 1.x pipeline back out as an original (CompVis/LDM) single-file checkpoint.

Why this exists: the engine loads user checkpoints (``*.safetensors`` in the layout of the original
``v1-5-pruned-emaonly.safetensors``) through diffusers' single-file path. Tests cannot download a real
checkpoint, so they build the tiny random pipeline of ``backend.engine.tiny``, save it here in the LDM
layout, and load it back through the real single-file code, offline.

The key mapping is the inverse of diffusers' LDM -> diffusers conversion
(``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` /
``convert_ldm_clip_checkpoint``). It is derived from the models' configs (number of blocks, layers per block,
which blocks have attention, down- and upsamplers), so it works for the tiny models and for full-size SD 1.x
alike; every parameter must be mapped exactly once or the writer raises.

Loading the file back fully offline needs the diffusers-format configs of the same pipeline (a directory written
by ``pipe.save_pretrained``; only the component configs and the tokenizer/scheduler files are read from it,
the weights come from the single file)::

    pipe = StableDiffusionPipeline.from_single_file(
        str(checkpoint), config=str(config_dir), local_files_only=True, safety_checker=None
    )

Without ``config`` diffusers infers the model type from the keys and fetches the configs of the hub repo
``stable-diffusion-v1-5/stable-diffusion-v1-5``, which neither works offline nor matches the tiny shapes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# Inner renames inside one residual block (diffusers name -> LDM name).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# The VAE mid-block attention: linear layers in diffusers, 1x1 convolutions in LDM.
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

# A prefix rule: (diffusers module prefix, LDM module prefix, inner renames or None to keep the rest as is).
_Rule = tuple[str, str, dict[str, str] | None]


def _per_block(value: int | Iterable[int], num_blocks: int) -> list[int]:
    if isinstance(value, int):
        return [value] * num_blocks
    values = list(value)
    if len(values) != num_blocks:
        raise ValueError(f"expected {num_blocks} per-block values, got {values}")
    return values


def _unet_rules(config: Any) -> list[_Rule]:
    """Module-prefix rules for a ``UNet2DConditionModel`` with the SD 1.x block structure."""
    down_types = list(config.down_block_types)
    up_types = list(config.up_block_types)
    num_blocks = len(down_types)
    if len(up_types) != num_blocks or len(config.block_out_channels) != num_blocks:
        raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
    if config.mid_block_type not in ("UNetMidBlock2DCrossAttn", None):
        raise ValueError(f"unsupported mid_block_type {config.mid_block_type!r}")
    layers = _per_block(config.layers_per_block, num_blocks)

    rules: list[_Rule] = [
        ("conv_in", "input_blocks.0.0", None),
        ("time_embedding.linear_1", "time_embed.0", None),
        ("time_embedding.linear_2", "time_embed.2", None),
        ("conv_norm_out", "out.0", None),
        ("conv_out", "out.2", None),
    ]

    # input_blocks: 0 is conv_in; then per level `layers` entries of [resnet, (attention)], then one entry holding
    # only the downsampler (`op`), except after the last level.
    index = 1
    for block, block_type in enumerate(down_types):
        has_attention = "CrossAttn" in block_type
        for layer in range(layers[block]):
            rules.append((f"down_blocks.{block}.resnets.{layer}", f"input_blocks.{index}.0", _UNET_RESNET))
            if has_attention:
                rules.append((f"down_blocks.{block}.attentions.{layer}", f"input_blocks.{index}.1", None))
            index += 1
        if block < num_blocks - 1:
            rules.append((f"down_blocks.{block}.downsamplers.0.conv", f"input_blocks.{index}.0.op", None))
            index += 1

    # middle_block: resnet, spatial transformer, resnet.
    if config.mid_block_type is not None:
        rules += [
            ("mid_block.resnets.0", "middle_block.0", _UNET_RESNET),
            ("mid_block.attentions.0", "middle_block.1", None),
            ("mid_block.resnets.1", "middle_block.2", _UNET_RESNET),
        ]

    # output_blocks: per level `layers + 1` entries of [resnet, (attention), (upsampler on the level's last entry)].
    reversed_layers = list(reversed(layers))
    index = 0
    for block, block_type in enumerate(up_types):
        has_attention = "CrossAttn" in block_type
        count = reversed_layers[block] + 1
        for layer in range(count):
            rules.append((f"up_blocks.{block}.resnets.{layer}", f"output_blocks.{index}.0", _UNET_RESNET))
            if has_attention:
                rules.append((f"up_blocks.{block}.attentions.{layer}", f"output_blocks.{index}.1", None))
            if layer == count - 1 and block < num_blocks - 1:
                slot = 2 if has_attention else 1
                rules.append((f"up_blocks.{block}.upsamplers.0.conv", f"output_blocks.{index}.{slot}.conv", None))
            index += 1
    return rules


def _vae_rules(config: Any) -> list[_Rule]:
    """Module-prefix rules for an ``AutoencoderKL`` with the SD 1.x encoder/decoder structure."""
    num_blocks = len(config.down_block_types)
    if len(config.up_block_types) != num_blocks:
        raise ValueError("down_block_types and up_block_types must have the same length")
    layers = config.layers_per_block

    rules: list[_Rule] = [
        ("quant_conv", "quant_conv", None),
        ("post_quant_conv", "post_quant_conv", None),
    ]
    for part in ("encoder", "decoder"):
        rules += [
            (f"{part}.conv_in", f"{part}.conv_in", None),
            (f"{part}.conv_norm_out", f"{part}.norm_out", None),
            (f"{part}.conv_out", f"{part}.conv_out", None),
            (f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", _VAE_RESNET),
            (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", _VAE_RESNET),
        ]
        if getattr(config, "mid_block_add_attention", True):
            rules.append((f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", _VAE_ATTENTION))

    for block in range(num_blocks):
        src, dst = f"encoder.down_blocks.{block}", f"encoder.down.{block}"
        rules += [(f"{src}.resnets.{layer}", f"{dst}.block.{layer}", _VAE_RESNET) for layer in range(layers)]
        if block < num_blocks - 1:
            rules.append((f"{src}.downsamplers.0.conv", f"{dst}.downsample.conv", None))

    # The decoder's up blocks are numbered the other way round in LDM: diffusers up_blocks.0 (lowest resolution)
    # is LDM up.{n-1}. Each has one more resnet than the encoder's blocks.
    for block in range(num_blocks):
        src, dst = f"decoder.up_blocks.{block}", f"decoder.up.{num_blocks - 1 - block}"
        rules += [(f"{src}.resnets.{layer}", f"{dst}.block.{layer}", _VAE_RESNET) for layer in range(layers + 1)]
        if block < num_blocks - 1:
            rules.append((f"{src}.upsamplers.0.conv", f"{dst}.upsample.conv", None))
    return rules


def _rename(state_dict: dict[str, torch.Tensor], rules: list[_Rule], ldm_prefix: str) -> dict[str, torch.Tensor]:
    """Map every diffusers key through the longest matching prefix rule; raise on unmapped or colliding keys."""
    ordered = sorted(rules, key=lambda rule: len(rule[0]), reverse=True)
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        for diffusers_prefix, ldm_module, inner in ordered:
            if not key.startswith(diffusers_prefix + "."):
                continue
            rest = key[len(diffusers_prefix) + 1 :]
            if inner is not None:
                name, _, param = rest.rpartition(".")
                if name not in inner:
                    raise KeyError(f"no LDM name for {key!r}")
                rest = f"{inner[name]}.{param}"
                if inner is _VAE_ATTENTION and param == "weight" and name != "group_norm":
                    tensor = tensor[:, :, None, None]  # linear -> 1x1 conv
            new_key = f"{ldm_prefix}{ldm_module}.{rest}"
            if new_key in out:
                raise KeyError(f"two parameters map to {new_key!r}")
            out[new_key] = tensor
            break
        else:
            unmapped.append(key)
    if unmapped:
        raise KeyError(f"parameters with no LDM key: {unmapped[:10]} ({len(unmapped)} in all)")
    return out


def _clip_state_dict(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``cond_stage_model.transformer.text_model.*``: the HF CLIPTextModel keys under the LDM prefix."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); older versions keep it.
        inner = key if key.startswith("text_model.") else f"text_model.{key}"
        if inner.endswith("embeddings.position_ids"):
            continue  # a buffer, recomputed on load; not needed in the checkpoint
        out[CLIP_PREFIX + inner] = tensor
    return out


def ldm_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder as one state dict in the original SD 1.x (LDM) key layout."""
    unet, vae = pipe.unet, pipe.vae
    state: dict[str, torch.Tensor] = {}
    parts = (
        _rename(unet.state_dict(), _unet_rules(unet.config), UNET_PREFIX),
        _rename(vae.state_dict(), _vae_rules(vae.config), VAE_PREFIX),
        _clip_state_dict(pipe.text_encoder),
    )
    for part in parts:
        state.update(part)
    return state


def save_ldm_checkpoint(pipe: Any, path: str | os.PathLike[str]) -> None:
    """Write ``pipe``'s UNet, VAE and text encoder to ``path`` as one LDM-layout ``.safetensors`` file, atomically."""
    from safetensors.torch import save_file

    state = {key: tensor.detach().to("cpu").contiguous() for key, tensor in ldm_state_dict(pipe).items()}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(state, tmp_name, metadata={"format": "pt"})
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
