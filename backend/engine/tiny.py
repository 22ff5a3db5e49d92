"""Built-in test models: tiny, architecture-faithful Stable Diffusion components with random weights.

They produce noise. They exist so that every code path of the engine (and everything built on it)
runs for real, on CPU, in seconds, on machines that cannot reach a model hub. The architecture is
the SD 1.x one (an 8x VAE, a cross-attention UNet, a CLIP text encoder, a depth ControlNet), only
narrower and shallower; the tokenizer is a real CLIP BPE tokenizer over a small vocabulary kept in
this package. Weights come from a fixed seed, so the same id gives the same model everywhere.
"""

from __future__ import annotations

from pathlib import Path

TINY_SD = "testing/tiny-sd"
TESTING_PREFIX = "testing/"
TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_tokenizer"

# Kept in one place so the single-file converter, the tests and the docs agree on the shapes.
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # attention at the coarse level: fast at 512²
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)
TEXT_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    projection_dim=32,
)
CONTROLNET_CONDITIONING_CHANNELS = (8, 8, 8, 8)
SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def is_testing_model(model_id: str) -> bool:
    return model_id.startswith(TESTING_PREFIX)


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77)


def text_config(tokenizer):
    """The tiny CLIP text encoder's config, with the vocabulary and special tokens of `tokenizer`."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build_components(seed: int = 0) -> dict:
    """The components of a StableDiffusionPipeline, randomly initialised from `seed` (fp32, CPU)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = load_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**VAE_CONFIG)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(text_config(tokenizer))
    for module in (unet, vae, text_encoder):
        module.eval()
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
    )


def build_depth_controlnet(unet, seed: int = 0):
    """A depth ControlNet shaped after `unet`, as the real SD 1.5 depth ControlNet is after SD 1.5."""
    import torch
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=CONTROLNET_CONDITIONING_CHANNELS
        )
        # A fresh ControlNet is zero-initialised where the condition enters and where its residuals leave,
        # so it has no effect at all; give those convolutions random weights so depth visibly steers.
        # The condition path gets variance-preserving weights, so the depth arrives at full strength.
        for conv in controlnet.controlnet_cond_embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        # ...and a louder output, so that it is not drowned by the random UNet (measured: another depth map
        # then moves pixels by ~3/255 on average instead of ~0.4).
        controlnet.controlnet_cond_embedding.conv_out.weight.data.mul_(10.0)
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.reset_parameters()
    return controlnet.eval()


TINY_SDXL = "testing/tiny-sdxl"
TINY_SD2_DEPTH = "testing/tiny-sd2-depth"

SDXL_UNET_CONFIG = dict(
    UNET_CONFIG,
    cross_attention_dim=64,  # the two text encoders' hidden states side by side, as in SDXL
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop numbers + the pooled text embedding
)


def build_sdxl_components(seed: int = 0) -> dict:
    """The components of a StableDiffusionXLPipeline (two text encoders, size conditioning), tiny and random."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = load_tokenizer()
    config = text_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**VAE_CONFIG)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(config)
        torch.manual_seed(seed + 4)
        text_encoder_2 = CLIPTextModelWithProjection(config)
    return dict(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer, tokenizer_2=load_tokenizer(),
        scheduler=EulerDiscreteScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                                            if k not in ("clip_sample", "set_alpha_to_one")}),
        image_encoder=None, feature_extractor=None,
    )


def build_sd2_depth_components(seed: int = 0) -> dict:
    """The components of a StableDiffusionDepth2ImgPipeline: a UNet that takes depth as a fifth channel."""
    import torch

    components = build_components(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 5)
        from diffusers import UNet2DConditionModel

        components["unet"] = UNet2DConditionModel(**dict(UNET_CONFIG, in_channels=5)).eval()
    for name in ("safety_checker", "image_encoder"):
        components.pop(name)
    components.update(depth_estimator=None, feature_extractor=None)
    return components


def build_pipeline(model_id: str):
    """The diffusers pipeline of a built-in test model."""
    import diffusers

    if model_id == TINY_SD:
        return diffusers.StableDiffusionPipeline(**build_components(), requires_safety_checker=False)
    if model_id == TINY_SDXL:
        return diffusers.StableDiffusionXLPipeline(**build_sdxl_components())
    if model_id == TINY_SD2_DEPTH:
        return diffusers.StableDiffusionDepth2ImgPipeline(**build_sd2_depth_components())
    raise KeyError(model_id)
