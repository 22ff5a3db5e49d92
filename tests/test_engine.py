"""The diffusers engine with the built-in tiny model: every mode, batches, determinism, progress, cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import pixels
from PIL import Image

from backend.engine import GenerationRequest
from backend.errors import Cancelled, InvalidRequest


def request(**kw) -> GenerationRequest:
    base = dict(prompt="a red brick wall", width=64, height=64, steps=3, seed=7)
    base.update(kw)
    return GenerationRequest(**base)


def generate_one(engine, **kw) -> Image.Image:
    (result,) = engine.generate(request(**kw))
    return result.image


def test_txt2img_size_and_content(tiny_engine):
    image = generate_one(tiny_engine, width=96, height=64)
    assert image.size == (96, 64) and image.mode == "RGB"
    assert pixels(image).std() > 5, "a blank image is no result"


def test_same_seed_same_pixels_other_seed_differs(tiny_engine):
    a = pixels(generate_one(tiny_engine))
    b = pixels(generate_one(tiny_engine))
    c = pixels(generate_one(tiny_engine, seed=8))
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1


def test_random_seed_is_concrete_and_reproduces(tiny_engine):
    (first,) = tiny_engine.generate(request(seed=None))
    assert 0 <= first.seed < 2**32 and first.parameters["seed"] == first.seed
    again = generate_one(tiny_engine, seed=first.seed)
    assert np.array_equal(pixels(first.image), pixels(again))


def test_img2img_init_matters_less_as_strength_rises(tiny_engine):
    # The tiny VAE is random, so "close to the init" cannot be judged in pixels; how much the output
    # depends on the init can: at low strength another init changes the result, at full strength barely.
    init_a, init_b = generate_one(tiny_engine, seed=1), generate_one(tiny_engine, seed=2)

    def init_effect(strength: float) -> float:
        a = generate_one(tiny_engine, init_images=(init_a,), strength=strength, steps=3)
        b = generate_one(tiny_engine, init_images=(init_b,), strength=strength, steps=3)
        return float(np.abs(pixels(a) - pixels(b)).mean())

    assert init_effect(0.34) > 2 * init_effect(1.0)


def test_init_of_other_size_is_resized(tiny_engine):
    init = generate_one(tiny_engine, seed=1, width=128, height=128)
    assert generate_one(tiny_engine, init_images=(init,)).size == (64, 64)


def test_inpaint_keeps_pixels_outside_mask(tiny_engine, square_mask):
    init = generate_one(tiny_engine, seed=1)
    out = generate_one(tiny_engine, init_images=(init,), masks=(square_mask,), strength=1.0)
    outside = np.asarray(square_mask) == 0
    assert np.array_equal(pixels(out)[outside], pixels(init)[outside])
    inside = np.asarray(square_mask) == 255
    assert np.abs(pixels(out)[inside] - pixels(init)[inside]).mean() > 5


def test_depth_conditions_the_image(tiny_engine, gradient):
    flipped = gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a = pixels(generate_one(tiny_engine, depths=(gradient,)))
    b = pixels(generate_one(tiny_engine, depths=(flipped,)))
    plain = pixels(generate_one(tiny_engine))
    assert np.abs(a - b).mean() > 1, "another depth map must give another image"
    assert np.abs(a - plain).mean() > 2


def test_depth_with_init_and_mask(tiny_engine, gradient, square_mask):
    init = generate_one(tiny_engine, seed=1)
    with_init = generate_one(tiny_engine, depths=(gradient,), init_images=(init,), strength=0.67)
    masked = generate_one(tiny_engine, depths=(gradient,), init_images=(init,), masks=(square_mask,))
    assert with_init.size == masked.size == (64, 64)
    outside = np.asarray(square_mask) == 0
    assert np.array_equal(pixels(masked)[outside], pixels(init)[outside])


def test_count_gives_consecutive_seeds(tiny_engine):
    results = tiny_engine.generate(request(count=3, seed=10))
    assert [r.seed for r in results] == [10, 11, 12]
    single = pixels(generate_one(tiny_engine, seed=11))
    assert np.abs(pixels(results[1].image) - single).max() <= 2  # batched vs single: float noise only


def test_batch_of_views_each_meets_its_own_depth(tiny_engine, gradient):
    depths = (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient.rotate(90))
    results = tiny_engine.generate(request(depths=depths, count=2, seed=100))
    assert len(results) == 6
    for k, result in enumerate(results):
        alone = generate_one(tiny_engine, depths=(depths[k // 2],), seed=100 + k)
        assert np.abs(pixels(result.image) - pixels(alone)).max() <= 2, f"image {k} met the wrong view"


def test_progress_every_step_with_small_preview(tiny_engine):
    events = []
    tiny_engine.generate(request(steps=4, width=128, height=64), progress=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert all(e.total == 4 for e in events)
    assert events[-1].preview.size == (16, 8)


def test_progress_total_counts_img2img_steps(tiny_engine):
    init = generate_one(tiny_engine, seed=1)
    events = []
    tiny_engine.generate(request(steps=10, init_images=(init,), strength=0.5), progress=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4, 5] and events[-1].total == 5


def test_cancel_stops_within_a_step_and_engine_recovers(tiny_engine):
    cancel = threading.Event()
    seen = []

    def on_progress(p):
        seen.append(p.step)
        if p.step == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        tiny_engine.generate(request(steps=20), progress=on_progress, cancel=cancel)
    assert seen == [1, 2]
    assert generate_one(tiny_engine).size == (64, 64)


def test_cancel_before_start(tiny_engine):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        tiny_engine.generate(request(), cancel=cancel)


def test_modes_share_the_loaded_components(tiny_engine, gradient, square_mask):
    init = generate_one(tiny_engine, seed=1)
    generate_one(tiny_engine, init_images=(init,))
    generate_one(tiny_engine, init_images=(init,), masks=(square_mask,))
    generate_one(tiny_engine, depths=(gradient,))
    pipes = list(tiny_engine._pipelines.values())
    assert len(pipes) >= 4
    assert all(p.unet is pipes[0].unet and p.vae is pipes[0].vae for p in pipes)
    assert all(p.text_encoder is pipes[0].text_encoder for p in pipes)


def test_sampler_choice_changes_result_and_is_recorded(tiny_engine):
    (euler,) = tiny_engine.generate(request(sampler="Euler a"))
    assert euler.parameters["sampler"] == "euler_a"
    assert np.abs(pixels(euler.image) - pixels(generate_one(tiny_engine))).mean() > 1
    # the sampler is per job: the model keeps its own scheduler (and saves it) afterwards
    assert type(tiny_engine._base.scheduler).__name__ == "DDIMScheduler"
    assert tiny_engine.generate(request())[0].parameters["sampler"] == "ddim"


def test_parameters_describe_the_job(tiny_engine, gradient):
    (result,) = tiny_engine.generate(request(depths=(gradient,), negative_prompt="blurry", controlnet_scale=0.5))
    p = result.parameters
    assert p["mode"] == "depth" and p["model"] == "testing/tiny-sd" and p["negative_prompt"] == "blurry"
    assert p["controlnet_scale"] == 0.5 and p["seed"] == 7 and (p["width"], p["height"]) == (64, 64)


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(width=100), "got 100: use 96 or 104"),
        (dict(height=0), "at least 64"),
        (dict(steps=0), "steps"),
        (dict(count=0), "count"),
        (dict(strength=1.5), "strength"),
        (dict(guidance=-1.0), "guidance"),
        (dict(seamless="z"), "seamless"),
        (dict(seed=2**32), "seed"),
        (dict(sampler="nonsense"), "unknown sampler"),
    ],
)
def test_bad_parameters_rejected(tiny_engine, kw, words):
    with pytest.raises(InvalidRequest, match=words):
        tiny_engine.generate(request(**kw))


def test_mask_without_init_and_wrong_sizes(tiny_engine, square_mask, gradient):
    with pytest.raises(InvalidRequest, match="needs an init"):
        tiny_engine.generate(request(masks=(square_mask,)))
    with pytest.raises(InvalidRequest, match="depth image is 64x64 but the output is 128x64"):
        tiny_engine.generate(request(depths=(gradient,), width=128))
    init = generate_one(tiny_engine)
    with pytest.raises(InvalidRequest, match="leaves no step"):
        tiny_engine.generate(request(init_images=(init,), strength=0.1, steps=3))
    with pytest.raises(InvalidRequest, match="one per batch item"):
        tiny_engine.generate(request(depths=(gradient,) * 2, init_images=(init,) * 3))


def test_memory_options():
    from backend.engine import create_engine

    req = request(width=128, height=128)
    plain = pixels(create_engine("testing/tiny-sd").generate(req)[0].image)
    sliced = pixels(create_engine("testing/tiny-sd", attention_slicing=True).generate(req)[0].image)
    assert np.abs(plain - sliced).max() <= 2, "attention slicing changes memory use, not the picture"
    tiled_engine = create_engine("testing/tiny-sd", vae_tiling=True)
    tiled = pixels(tiled_engine.generate(req)[0].image)
    # the tiny VAE tiles above 64 px: 128 px decodes as blended tiles, same size, near the untiled picture
    assert tiled_engine._base.vae.use_tiling and tiled.shape == plain.shape
    assert np.abs(tiled - plain).mean() < 10


def test_cpu_offload_without_gpu_is_refused():
    from backend.engine import create_engine

    with pytest.raises(InvalidRequest, match="no GPU here"):
        create_engine("testing/tiny-sd", device="cpu", cpu_offload=True)
