"""accelerate-dispatched models and half precision."""

from __future__ import annotations

import functools

import pytest
import torch
from accelerate import dispatch_model

import tokcompress
from tokcompress.adapters import adapter_for

from .conftest import FRAME_GRANULAR, TINY, build, every_family_and_every_method, generate, inputs_for, logits


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_accelerate_dispatched_model_compresses_like_the_plain_one(family, clip, method):
    plain = build(family)
    dispatched = dispatch_model(build(family), device_map={"": "cpu"}, force_hooks=True)
    assert hasattr(adapter_for(dispatched).language_model, "_hf_hook")
    inputs = inputs_for(family, clip, "What is moving?")
    results = []
    for model in (plain, dispatched):
        with tokcompress.compress(model, method, ratio=0.3) as handle:
            results.append((generate(model, inputs), handle.stats.samples[0].kept_positions))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]


@functools.cache
def half_precision_model(family: str, dtype: torch.dtype):
    """A family's tiny model in `dtype`, built once (each test leaves it unpatched)."""
    return build(family).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_half_precision(family, clip, method, dtype):
    model = half_precision_model(family, dtype)
    inputs = inputs_for(family, clip, "What is moving?")
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    reference = generate(model, inputs)
    with tokcompress.compress(model, method, ratio=1.0):
        assert torch.equal(generate(model, inputs), reference)
    with tokcompress.compress(model, method, ratio=0.3) as handle, torch.inference_mode():
        out = model(**inputs)
        sample = handle.stats.samples[0]
    assert torch.isfinite(out.logits).all()
    tolerance = TINY[family].tokens_per_unit if method in FRAME_GRANULAR else 1.0
    assert abs(sample.achieved_ratio - 0.3) * sample.visual_in <= tolerance


def test_a_half_precision_model_takes_float32_pixels_in_every_encoder_side_stage(family, clip):
    """Processors hand a bf16 model float32 pixels, which its stock encoder casts: the frame signatures (framededup),
    the tower's attention (visionzip) and folds inside the tower (earlytom: frames, vidtldr: tokens) take them too."""
    model = half_precision_model(family, torch.bfloat16)
    inputs = inputs_for(family, clip, "What is moving?")
    # LFM3-VL's and Kimi K2.5's stock towers do not cast them, Nemotron-H Omni's casts them to its config's dtype,
    # which `.to()` leaves as built: a bf16 model takes bf16 pixels
    if family in ("lfm3_vl", "nemotron_h_omni", "kimi_k25"):
        inputs = {**inputs, "pixel_values_videos": inputs["pixel_values_videos"].to(torch.bfloat16)}
    readers = ("visionzip", "earlytom") if adapter_for(model).has_tower else ()  # of the tower's attention
    for method in ("framededup", *readers, "vidtldr"):
        with tokcompress.compress(model, method, ratio=0.4) as handle, torch.no_grad():
            assert torch.isfinite(logits(model, inputs)).all()
        assert handle.stats.samples[0].achieved_ratio < 1
