"""Nemotron-H Omni: its own token pruning (EVS) against ours, tubelets that are not square, and the refusals."""

from __future__ import annotations

import pytest
import torch
from transformers.models.nemotron_h_omni.modeling_nemotron_h_omni import compute_retention_mask

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine import compat

from .conftest import generate, inputs_for, logits, model_for

FAMILY = "nemotron_h_omni"
needs_tubelets = pytest.mark.skipif(not compat.NEMOTRON_TUBELETS, reason="transformers 5.24+: videos as tubelets")


@pytest.fixture
def pruning_model():
    """The tiny model with its own pruning set to `video_pruning_rate`, off again after the test."""
    model = model_for(FAMILY)
    yield model
    model.video_pruning_rate = 0.0


@needs_tubelets
@pytest.mark.parametrize("rate", [0.5, 0.75])
def test_evs_keeps_the_tokens_the_models_own_pruning_keeps_and_gives_its_logits(pruning_model, clip, rate):
    """Efficient Video Sampling as the model runs it inside its forward (transformers' own `compute_retention_mask`)
    and `evs` at the same count: the same tokens, and - no positional encoding - the same logits."""
    model = pruning_model
    inputs = inputs_for(FAMILY, clip, "What is moving?")
    with torch.no_grad():
        (features,) = model.get_video_features(inputs["pixel_values_videos"]).pooler_output
    tubelets = inputs["pixel_values_videos"].shape[1]
    retained = compute_retention_mask(features, tubelets, rate)
    expected = (inputs["input_ids"][0] == tiny.VIDEO).nonzero().squeeze(1)[retained].tolist()
    model.video_pruning_rate = rate
    own = logits(model, inputs)
    model.video_pruning_rate = 0.0
    with tokcompress.compress(model, "evs", ratio=len(expected) / len(features)) as handle:
        ours = logits(model, inputs)
    assert handle.stats.samples[0].kept_positions == expected
    torch.testing.assert_close(ours[:, -1], own[:, -1], rtol=1e-4, atol=1e-5)


@needs_tubelets
def test_compressing_while_the_model_prunes_itself_is_refused_naming_the_fix(pruning_model, clip):
    model = pruning_model
    inputs = inputs_for(FAMILY, clip, "What is moving?")
    model.video_pruning_rate = 0.5
    reference = logits(model, inputs)
    with tokcompress.compress(model, "none"):  # the identity: the model's own forward, pruning included
        assert torch.equal(logits(model, inputs), reference)
    with tokcompress.compress(model, "fastv", ratio=0.3), pytest.raises(ValueError, match="video_pruning_rate = 0"):
        logits(model, inputs)


@needs_tubelets
def test_tubelets_wider_than_high_keep_their_grid_through_the_tower_scores_and_generate(clip):
    """128 × 96-px frames: tubelets of 3 × 4 tokens, read as such from the pixels, from the grids noted on what
    `generate` encodes, and in the tower's attention pooled as the pixel shuffle gathers patches."""
    model = model_for(FAMILY)
    inputs = tiny.nemotron_h_omni_inputs(clip, "What is moving?", size=(96, 128))
    (layout,) = adapter_for(model).visual_layouts(inputs)
    assert layout.grids == ((4, 3, 4),)
    for method in ("visionzip", "framededup", "sttm"):
        with tokcompress.compress(model, method, ratio=0.5) as handle:
            generate(model, inputs, max_new_tokens=2)
        tolerance = 12 if method == "framededup" else 1  # framededup: whole tubelets, a cap
        assert abs(handle.stats.samples[0].achieved_ratio - 0.5) * 48 <= tolerance


@needs_tubelets
def test_features_encoded_before_patching_need_square_tubelets_or_their_pixels(clip):
    model = model_for(FAMILY)
    for size, works in (((96, 96), True), ((96, 128), False)):
        inputs = tiny.nemotron_h_omni_inputs(clip, "What is moving?", size=size)
        with torch.no_grad():
            encoded = model.get_video_features(inputs["pixel_values_videos"])
        assert compat.ENCODED_GRIDS not in encoded
        text = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
        with tokcompress.compress(model, "evs", ratio=0.5) as handle:
            call = {**text, "mm_encoder_outputs": {"video": encoded}}
            if works:
                logits(model, call)
                assert handle.stats.samples[0].achieved_ratio == 0.5
            else:
                with pytest.raises(ValueError, match="carry no frame grid: pass pixel_values_videos"):
                    logits(model, call)


@pytest.mark.skipif(compat.NEMOTRON_TUBELETS, reason="transformers 5.23: one video's frames a call")
def test_transformers_before_tubelets_is_refused_naming_the_upgrade():
    with pytest.raises(ValueError, match="from transformers 5.24"):
        tokcompress.patch(tiny.tiny_nemotron_h_omni(), "evs")
