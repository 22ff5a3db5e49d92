"""The diffusers implementation of the engine.

One model is loaded once. Every mode is served by a pipeline derived from the loaded one with
`from_pipe`, which shares the UNet, VAE and text encoder instead of loading them again; the depth
ControlNet is loaded on the first depth job and kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..errors import Cancelled, InvalidRequest, ModelUnavailable, UnsupportedMode
from . import models, samplers, tiny
from .preview import latents_to_rgb
from .request import GeneratedImage, GenerationRequest, Progress
from .seamless import seamless

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress], None]
MAX_STEPS = 500

# Pipeline classes per model family and mode. "depth" with init images uses the img2img variant, with
# masks the inpaint variant; SD2-depth models do depth natively and need no ControlNet.
_PIPELINES = {
    "sd": {
        "txt2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
        "depth": "StableDiffusionControlNetPipeline",
        "depth+init": "StableDiffusionControlNetImg2ImgPipeline",
        "depth+mask": "StableDiffusionControlNetInpaintPipeline",
    },
    "sdxl": {
        "txt2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
        "depth": "StableDiffusionXLControlNetPipeline",
        "depth+init": "StableDiffusionXLControlNetImg2ImgPipeline",
        "depth+mask": "StableDiffusionXLControlNetInpaintPipeline",
    },
    "sd2-depth": {
        "depth": "StableDiffusionDepth2ImgPipeline",
        "depth+init": "StableDiffusionDepth2ImgPipeline",
    },
}
_PIPELINES["sd-inpaint"] = {  # 9-channel inpainting UNets only work through the inpainting pipelines
    "inpaint": "StableDiffusionInpaintPipeline",
    "depth+mask": "StableDiffusionControlNetInpaintPipeline",
}
# The class that loads a single-file checkpoint of each family.
_SINGLE_FILE_CLASS = {
    "sd": "StableDiffusionPipeline",
    "sd-inpaint": "StableDiffusionInpaintPipeline",
    "sd2-depth": "StableDiffusionDepth2ImgPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}


def choose_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def choose_dtype(device: str, dtype: str = "auto"):
    """fp16 on GPUs (bf16 where asked), fp32 on CPU: half precision on CPU is slower and less exact."""
    import torch

    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype != "auto":
        if dtype not in names:
            raise InvalidRequest(f"unknown dtype '{dtype}': choose auto, fp32, fp16 or bf16")
        return names[dtype]
    return torch.float16 if device.split(":")[0] in ("cuda", "mps") else torch.float32


class DiffusersEngine:
    """Generates images with a diffusers Stable Diffusion model (SD 1.x/2.x, SDXL, SD2-depth)."""

    def __init__(
        self,
        model: str = models.DEFAULT_MODEL,
        *,
        controlnet: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        allow_pickle: bool = False,
        attention_slicing: bool = False,
        vae_tiling: bool = False,
        cpu_offload: bool = False,
        single_file_config: str | None = None,
        pipeline: Any = None,
    ) -> None:
        """`pipeline`: serve this already-built diffusers pipeline (a model built from a config, say) under
        the name `model` instead of loading one."""
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        given = pipeline is not None
        self.source = models.ModelSource(model, "given") if given else models.resolve(model, allow_pickle=allow_pickle)
        self.model_id = self.source.ref
        self.device = choose_device(device)
        self.dtype = choose_dtype(self.device, dtype)
        if cpu_offload and self.device == "cpu":
            raise InvalidRequest("--cpu-offload moves model parts between the CPU and a GPU: there is no GPU here")
        self.allow_pickle = allow_pickle
        self.cpu_offload = cpu_offload
        self._controlnet_ref = controlnet
        self._controlnet = None
        self._lock = threading.Lock()
        self._pipelines: dict[str, Any] = {}
        self._schedulers: dict[str, Any] = {}
        self.family, base = (_family_of(pipeline), pipeline.to(dtype=self.dtype)) if given else self._load(
            single_file_config)
        if attention_slicing:
            base.enable_attention_slicing()
        if vae_tiling:
            base.vae.enable_tiling()
        if cpu_offload:
            base.enable_model_cpu_offload(device=self.device if self.device != "cpu" else None)
        else:
            base.to(self.device)
        base.set_progress_bar_config(disable=True)
        self._base = base
        self._default_scheduler = base.scheduler
        self._pipelines[type(base).__name__] = base

    # -- loading ---------------------------------------------------------------------------------

    def _load(self, single_file_config: str | None):
        import diffusers

        source = self.source
        if source.kind == "testing":
            pipe = tiny.build_pipeline(source.ref).to(dtype=self.dtype)
            return _family_of(pipe), pipe
        try:
            if source.kind == "single_file":
                family = models.single_file_family(source.path)
                cls = getattr(diffusers, _SINGLE_FILE_CLASS[family])
                config = single_file_config or models.SINGLE_FILE_CONFIGS[family]
                kwargs: dict[str, Any] = dict(dtype=self.dtype, config=config)
                if "XL" not in cls.__name__ and "Depth2Img" not in cls.__name__:
                    kwargs.update(safety_checker=None, requires_safety_checker=False)
                pipe = cls.from_single_file(str(source.path), **kwargs)
                return family, pipe
            pipe = diffusers.DiffusionPipeline.from_pretrained(
                str(source.path) if source.path else source.ref,
                dtype=self.dtype,
                use_safetensors=None if self.allow_pickle else True,
                safety_checker=None,
                requires_safety_checker=False,
            )
        except models.hub_errors() as exc:
            ref = single_file_config or (models.SINGLE_FILE_CONFIGS.get(models.single_file_family(source.path))
                                         if source.kind == "single_file" else source.ref)
            if source.kind == "single_file":
                raise ModelUnavailable(
                    f"the checkpoint '{source.ref}' needs the configs and tokenizer of '{ref}', which are not "
                    f"available here ({_first_line(exc)}). On a machine with internet run `hf download {ref} "
                    "--exclude '*.safetensors' '*.bin' '*.ckpt'` once, or pass --config with a local diffusers "
                    "folder of the same architecture"
                ) from exc
            if source.kind == "folder":
                raise ModelUnavailable(f"cannot load the model folder '{source.ref}': {_first_line(exc)}") from exc
            raise ModelUnavailable(models.offline_advice(source.ref)) from exc
        return _family_of(pipe), pipe

    def _depth_controlnet(self):
        if self._controlnet is not None:
            return self._controlnet
        import diffusers

        if self.source.kind == "testing" and self._controlnet_ref is None:
            controlnet = tiny.build_depth_controlnet(self._base.unet).to(dtype=self.dtype)
        else:
            ref = self._controlnet_ref or models.DEFAULT_DEPTH_CONTROLNETS.get(self.family)
            if ref is None:
                raise UnsupportedMode(f"no depth ControlNet is known for {self.family} models: pass --controlnet")
            cn_source = models.resolve(ref, allow_pickle=self.allow_pickle)
            try:
                if cn_source.kind == "single_file":
                    controlnet = diffusers.ControlNetModel.from_single_file(str(cn_source.path),
                                                                            dtype=self.dtype)
                else:
                    controlnet = diffusers.ControlNetModel.from_pretrained(
                        str(cn_source.path) if cn_source.path else ref, dtype=self.dtype,
                        use_safetensors=None if self.allow_pickle else True)
            except models.hub_errors() as exc:
                raise ModelUnavailable("depth ControlNet: " + models.offline_advice(ref)) from exc
        if not self.cpu_offload:
            controlnet.to(self.device)
        self._controlnet = controlnet
        return controlnet

    def _pipeline(self, key: str):
        table = _PIPELINES[self.family]
        if key not in table:
            can = ", ".join(sorted(self.modes()))
            raise UnsupportedMode(f"model '{self.model_id}' ({self.family}) cannot do {key.replace('+', ' with ')}; "
                                  f"it can do: {can}")
        cls_name = table[key]
        cache_key = cls_name
        if cache_key in self._pipelines:
            return self._pipelines[cache_key]
        import diffusers

        cls = getattr(diffusers, cls_name)
        extra = {"controlnet": self._depth_controlnet()} if "ControlNet" in cls_name else {}
        pipe = cls.from_pipe(self._base, **extra)
        pipe.set_progress_bar_config(disable=True)
        self._pipelines[cache_key] = pipe
        return pipe

    # -- public ----------------------------------------------------------------------------------

    def modes(self) -> list[str]:
        return sorted({key.split("+")[0] for key in _PIPELINES[self.family]})

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "family": self.family,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "modes": self.modes(),
            "samplers": list(samplers.SAMPLERS),
            "default_sampler": samplers.name_of(self._default_scheduler),
        }

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[GeneratedImage]:
        """Run one request; returns batch_size * count images, or raises Cancelled (never a partial image)."""
        request.validate()
        # Beyond a few hundred steps nothing changes but the time; at the training schedule's length some
        # schedulers index past its end.
        max_steps = min(MAX_STEPS, self._default_scheduler.config.get("num_train_timesteps", 1000) - 1)
        if request.steps > max_steps:
            raise InvalidRequest(f"steps must be at most {max_steps} for this model, got {request.steps}")
        request = request.with_seed()
        sampler = samplers.canonical(request.sampler)
        with self._lock:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            key = self._pipeline_key(request)
            pipe = self._pipeline(key)
            inputs = _per_image_inputs(request)
            kwargs = self._call_arguments(request, key, inputs)
            kwargs["callback_on_step_end"] = self._step_callback(request, progress, cancel)
            modules = [pipe.unet, pipe.vae, getattr(pipe, "controlnet", None)]
            pipe.scheduler = self._scheduler(sampler)
            try:
                with seamless(modules, request.seamless):
                    images = pipe(**kwargs).images
            finally:  # the sampler, like seamless, is the job's: the model is left as it was loaded
                pipe.scheduler = self._default_scheduler
        if "mask" in inputs:
            # What lies outside the mask is the caller's, unchanged to the pixel: the VAE round trip would
            # otherwise soften it (and, in texturing, repaint texels that were already good).
            from PIL import Image

            images = [Image.composite(img, init, mask) for img, init, mask in
                      zip(images, inputs["init"], inputs["mask"], strict=True)]
        params = self._parameters(request, sampler or samplers.name_of(self._default_scheduler))
        seeds = [request.image_seed(k) for k in range(len(images))]
        return [GeneratedImage(image=image, seed=seed, parameters={**params, "seed": seed})
                for image, seed in zip(images, seeds, strict=True)]

    # -- one job ---------------------------------------------------------------------------------

    def _pipeline_key(self, request: GenerationRequest) -> str:
        if request.mode != "depth":
            return request.mode
        if request.masks:
            return "depth+mask"
        if request.init_images or self.family == "sd2-depth":
            return "depth+init"
        return "depth"

    def _scheduler(self, sampler: str):
        if not sampler:
            return self._default_scheduler
        if sampler not in self._schedulers:
            self._schedulers[sampler] = samplers.build(sampler, self._default_scheduler.config)
        return self._schedulers[sampler]

    def _call_arguments(self, request: GenerationRequest, key: str, inputs: dict[str, list]) -> dict[str, Any]:
        import torch
        from PIL import Image

        n = request.batch_size * request.count
        size = (request.width, request.height)
        kwargs: dict[str, Any] = dict(
            prompt=[request.prompt] * n,
            negative_prompt=[request.negative_prompt] * n,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            num_images_per_prompt=1,
            generator=[torch.Generator("cpu").manual_seed(request.image_seed(k)) for k in range(n)],
            output_type="pil",
        )
        init, masks, depths = inputs.get("init"), inputs.get("mask"), inputs.get("depth")
        if self.family == "sd2-depth":
            if init is None:  # no init: start from flat grey at full strength, so only depth and prompt count
                init = [Image.new("RGB", size, (128, 128, 128))] * n
                kwargs["strength"] = 1.0
            else:
                kwargs["strength"] = request.strength
            kwargs.update(image=init, depth_map=_depth_tensor(depths))
            return kwargs
        if key in ("txt2img", "depth", "inpaint", "depth+mask"):
            kwargs.update(width=request.width, height=request.height)
        if key == "img2img":
            kwargs.update(image=init, strength=request.strength)
        elif key == "inpaint":
            kwargs.update(image=init, mask_image=masks, strength=request.strength)
        elif key == "depth":
            kwargs.update(image=depths, controlnet_conditioning_scale=request.controlnet_scale)
        elif key == "depth+init":
            kwargs.update(image=init, control_image=depths, strength=request.strength,
                          controlnet_conditioning_scale=request.controlnet_scale)
        elif key == "depth+mask":
            kwargs.update(image=init, mask_image=masks, control_image=depths, strength=request.strength,
                          controlnet_conditioning_scale=request.controlnet_scale)
        return kwargs

    def _step_callback(self, request, progress: ProgressCallback | None, cancel: threading.Event | None):
        family = "sdxl" if self.family == "sdxl" else "sd"

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            if cancel is not None and cancel.is_set():
                # Raising here stops the loop before the next step and before decoding: nothing half-done
                # can come out as a result.
                raise Cancelled()
            if progress is not None:
                total = getattr(pipe, "_num_timesteps", None) or request.steps
                latents = tensors.get("latents")
                preview = latents_to_rgb(latents, family) if latents is not None else None
                progress(Progress(step=step + 1, total=total, preview=preview))
            return tensors

        return on_step_end

    def _parameters(self, request: GenerationRequest, sampler: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "steps": request.steps,
            "sampler": sampler,
            "guidance": request.guidance,
            "width": request.width,
            "height": request.height,
            "model": self.model_id,
            "mode": request.mode,
            "version": f"scene-diffusion {__version__}",
        }
        if request.init_images:
            params["strength"] = request.strength
        if request.seamless:
            params["seamless"] = request.seamless
        if request.mode == "depth" and self.family != "sd2-depth":
            params["controlnet_scale"] = request.controlnet_scale
        return params


def _per_image_inputs(request: GenerationRequest) -> dict[str, list]:
    """Init, mask and depth images, one entry per output image (item-major) and at the output size.

    Expanding here, rather than through num_images_per_prompt, makes every output meet its own view's
    inputs whatever order a pipeline repeats its batch in.
    """
    from PIL import Image

    n = request.batch_size * request.count
    size = (request.width, request.height)
    inputs = {}
    for name, images, mode in (("init", request.init_images, "RGB"), ("mask", request.masks, "L"),
                               ("depth", request.depths, "RGB")):
        if not images:
            continue
        prepared = [img.convert(mode) if img.size == size else img.convert(mode).resize(size, Image.LANCZOS)
                    for img in images]
        inputs[name] = [prepared[(k // request.count) % len(prepared)] for k in range(n)]
    return inputs


def _family_of(pipe) -> str:
    name = type(pipe).__name__
    if "XL" in name:
        return "sdxl"
    if "Depth2Img" in name:
        return "sd2-depth"
    if "Inpaint" in name and pipe.unet.config.in_channels == 9:
        return "sd-inpaint"
    return "sd"


def _depth_tensor(depths: list | None):
    """Depth images (near = bright) as the (B, H, W) tensor StableDiffusionDepth2ImgPipeline takes."""
    import numpy as np
    import torch

    if depths is None:
        raise InvalidRequest("this model is a depth-to-image model: give a depth image")
    arrays = [np.asarray(d.convert("L"), dtype=np.float32) / 255.0 for d in depths]
    return torch.from_numpy(np.stack(arrays))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
