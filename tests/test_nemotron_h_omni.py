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
def test_features_encoded_before_patching_are_refused_naming_the_fix(clip):
    """Nothing but the pixels tells a tubelet's grid: 16 tokens are 4 × 4 or 2 × 8 (the processor keeps a clip's
    aspect), so features encoded before the model was patched - which carry no note of it - are refused."""
    model = model_for(FAMILY)
    for size in ((128, 128), (64, 256)):
        inputs = tiny.nemotron_h_omni_inputs(clip, "What is moving?", size=size)
        with torch.no_grad():
            encoded = model.get_video_features(inputs["pixel_values_videos"])
        text = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
        call = {**text, "mm_encoder_outputs": {"video": encoded}}
        with tokcompress.compress(model, "evs", ratio=0.5), pytest.raises(ValueError, match="pass pixel_values_videos"):
            logits(model, call)


@needs_tubelets
def test_frames_given_as_one_videos_frames_run_as_its_tubelets(clip):
    """The stock model still takes one video's frames, (frames, 3, H, W) (deprecated), and packs them itself - an
    odd count padded with the last frame: every stage reads them as the tubelets it makes."""
    model = model_for(FAMILY)
    inputs = tiny.nemotron_h_omni_inputs(clip[:7], "What is moving?")
    frames = inputs["pixel_values_videos"][0].unflatten(1, (2, 3)).flatten(0, 1)[:7]  # back to 7 frames
    for method in ("evs", "framededup", "earlytom", "visionzip"):
        with tokcompress.compress(model, method, ratio=0.5) as handle:
            expected = logits(model, inputs)
            kept = handle.stats.samples[0].kept_positions
            torch.testing.assert_close(logits(model, {**inputs, "pixel_values_videos": frames}), expected)
            assert handle.stats.samples[0].kept_positions == kept


@needs_tubelets
def test_tubelets_framededup_skips_leave_the_towers_rows_in_their_videos_places(clip, other_clip):
    model = model_for(FAMILY)
    inputs = tiny.nemotron_h_omni_inputs([clip, other_clip], ["What?", "Who?"])
    with torch.no_grad():
        stock = model.get_video_features(inputs["pixel_values_videos"])
        with tokcompress.compress(model, "framededup", ratio=0.5):
            skipped = model.get_video_features(inputs["pixel_values_videos"])
    assert skipped.last_hidden_state.shape == stock.last_hidden_state.shape  # (videos, tubelets, tower tokens, D)
    encoded = skipped.last_hidden_state.flatten(2).abs().sum(-1) > 0
    assert 0 < int(encoded.sum()) < encoded.numel()
    torch.testing.assert_close(skipped.last_hidden_state[encoded], stock.last_hidden_state[encoded])


@needs_tubelets
def test_a_prompt_of_several_videos_expanded_for_beams_is_refused(clip, other_clip):
    """The stock model repeats each video for beams instead of each prompt's videos: a row would read another
    video's features (stock too), so compressing such a prompt is refused, naming why."""
    model = model_for(FAMILY)
    first, second = (tiny.nemotron_h_omni_inputs(frames, "What?") for frames in (clip, other_clip))
    inputs = {
        "input_ids": torch.cat([first["input_ids"], second["input_ids"]], dim=1),
        "pixel_values_videos": torch.cat([first["pixel_values_videos"], second["pixel_values_videos"]]),
    }
    # beside a text-only prompt: as many videos as rows, one row holding two
    ids, mask = tiny.left_pad([inputs["input_ids"][0].tolist(), tiny.text_ids("user: Hello?\nassistant:")])
    beside_text = {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": inputs["pixel_values_videos"]}
    with tokcompress.compress(model, "evs", ratio=0.5):
        generate(model, inputs, max_new_tokens=2)  # one sequence: fine
        for prompts in (inputs, beside_text):
            with pytest.raises(tokcompress.PromptRefused, match="repeats each video"):
                generate(model, prompts, max_new_tokens=2, num_beams=2)


@pytest.mark.skipif(compat.NEMOTRON_TUBELETS, reason="transformers 5.23: one video's frames a call")
def test_transformers_before_tubelets_is_refused_naming_the_upgrade():
    with pytest.raises(ValueError, match="from transformers 5.24"):
        tokcompress.patch(tiny.tiny_nemotron_h_omni(), "evs")
