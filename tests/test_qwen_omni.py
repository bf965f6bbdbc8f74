"""Qwen-Omni with the video's audio track (`use_audio_in_video`): the video's frame units sit between its audio
tokens at their times (Qwen2.5-Omni: in chunks of seconds; Qwen3-Omni: unit by unit); only the video tokens are
compressed. Both thinkers, and each whole model through its thinker."""

from __future__ import annotations

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for

from .conftest import COMPRESSING, FRAME_GRANULAR, generate, model_for, video_encoder_inputs
from .test_adapters import placed_embeddings

AUDIO_FRAMES = 400  # mel frames: 100 audio tokens (Qwen2.5-Omni) or 52 (Qwen3-Omni) beside the 8-frame clip
WHOLE = {  # thinker -> the whole model's config and class
    "qwen2_5_omni_thinker": ("Qwen2_5OmniConfig", "Qwen2_5OmniForConditionalGeneration"),
    "qwen3_omni_moe_thinker": ("Qwen3OmniMoeConfig", "Qwen3OmniMoeForConditionalGeneration"),
}


@pytest.fixture(params=list(WHOLE))
def thinker(request) -> str:
    return request.param


def omni_inputs(thinker: str, frames, questions):
    return tiny.qwen_omni_inputs(frames, questions, AUDIO_FRAMES, qwen3=thinker == "qwen3_omni_moe_thinker")


def whole_model(thinker: str):
    """The whole model (no talker) holding the tiny thinker's weights."""
    import transformers

    config_cls, model_cls = (getattr(transformers, name) for name in WHOLE[thinker])
    tiny_thinker = model_for(thinker)
    whole = model_cls(config_cls(thinker_config=tiny_thinker.config.to_dict(), enable_audio_output=False)).eval()
    whole.thinker.load_state_dict(tiny_thinker.state_dict())
    whole.thinker.generation_config.pad_token_id = tiny.PAD
    return whole


def test_the_layout_holds_the_units_between_the_audio_and_leaves_the_audio_out(thinker, clip):
    model = model_for(thinker)
    inputs = omni_inputs(thinker, clip, "What is moving?")
    ids = inputs["input_ids"][0]
    video, audio = (ids == tiny.VIDEO).nonzero()[:, 0], (ids == tiny.AUDIO).nonzero()[:, 0]
    assert len(audio) == tiny.omni_audio_tokens(AUDIO_FRAMES, thinker == "qwen3_omni_moe_thinker")
    assert video[31] + 1 < video[32]  # audio tokens between units 1 and 2
    (layout,) = adapter_for(model).visual_layouts(inputs)
    assert layout.grids == ((4, 4, 4),) and layout.positions.tolist() == video.tolist()
    assert layout.frame.tolist() == torch.arange(4).repeat_interleave(16).tolist()
    with torch.no_grad():
        features = torch.cat(model.model.get_video_features(**video_encoder_inputs(inputs)).pooler_output)
    torch.testing.assert_close(placed_embeddings(model, inputs)[layout.positions], features)


def test_a_unit_split_over_two_chunks_at_low_fps_is_laid_out_token_by_token(clip):
    """At fps below 1 Qwen2.5-Omni's processor puts the first token of a unit that jumps two chunk ends in a chunk
    of its own, audio tokens between it and the rest of its unit: the layout follows the tokens, not the runs."""
    model = model_for("qwen2_5_omni_thinker")
    inputs = tiny.qwen_omni_inputs(clip, "What is moving?", audio_frames=1000, fps=0.5)
    ids = inputs["input_ids"][0]
    video = (ids == tiny.VIDEO).nonzero()[:, 0]
    runs = torch.tensor([0, *((video.diff() > 1).nonzero()[:, 0] + 1).tolist(), len(video)]).diff().tolist()
    assert runs == [16, 1, 15, 1, 15, 16]  # units 1 and 2 each straddle two chunks
    (layout,) = adapter_for(model).visual_layouts(inputs)
    assert layout.positions.tolist() == video.tolist() and layout.grids == ((4, 4, 4),)
    with torch.no_grad():
        features = torch.cat(model.model.get_video_features(**video_encoder_inputs(inputs)).pooler_output)
    torch.testing.assert_close(placed_embeddings(model, inputs)[layout.positions], features)
    with tokcompress.compress(model, "framefusion", ratio=0.3) as handle:
        generate(model, inputs)
    assert abs(handle.stats.samples[0].achieved_ratio - 0.3) * 64 <= 1


@pytest.mark.parametrize("method", COMPRESSING)
def test_every_method_compresses_a_video_with_its_audio_track(thinker, clip, other_clip, method):
    """Exact at ratio 1; at 0.3 of the video tokens (the audio tokens are not among them: the layout test) a batch
    of two videos of different lengths with their tracks decodes as each alone."""
    model = model_for(thinker)
    videos, questions = [clip, other_clip[:4]], ["What is moving?", "Describe it."]
    batch = omni_inputs(thinker, videos, questions)
    reference = generate(model, batch)
    with tokcompress.compress(model, method, ratio=1.0):
        assert torch.equal(generate(model, batch), reference)
    with tokcompress.compress(model, method, ratio=0.3) as handle:
        together = generate(model, batch)
        stats = handle.stats
        alone = [generate(model, omni_inputs(thinker, v, q))[0] for v, q in zip(videos, questions)]
    tolerance = 16 if method in FRAME_GRANULAR else 1.0
    assert [s.visual_in for s in stats.samples] == [64, 32]
    assert all(abs(s.achieved_ratio - 0.3) * s.visual_in <= tolerance for s in stats.samples)
    assert all(torch.equal(row, single) for row, single in zip(together, alone))


def test_patching_the_whole_model_compresses_what_its_thinker_generates(thinker, clip):
    """The whole model's `generate` runs its thinker's (then the talker, which sees no video): patching the whole
    model hooks the thinker."""
    whole, tiny_thinker = whole_model(thinker), model_for(thinker)
    inputs = omni_inputs(thinker, clip, "What is moving?")
    with tokcompress.compress(tiny_thinker, "framefusion", ratio=0.3) as handle:
        expected, kept = generate(tiny_thinker, inputs), handle.stats.samples[0].kept_positions
    with tokcompress.compress(whole, "framefusion", ratio=0.3) as handle:
        assert torch.equal(generate(whole.thinker, inputs), expected)
        assert handle.stats.samples[0].kept_positions == kept
    assert not tokcompress.api.unpatch(whole)


def test_the_command_line_runs_a_whole_checkpoint_through_its_thinker(thinker, tmp_path, monkeypatch):
    """`tokcompress run --model` loads the whole model (not an image-text-to-text class) and answers with its
    thinker, which the patch knows."""
    from transformers import AutoProcessor

    from tokcompress import cli

    whole_model(thinker).save_pretrained(tmp_path)
    torch.save({}, tmp_path / "spk_dict.pt")  # its speakers, which every checkpoint ships (none needed here)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda path: "its processor")
    model, processor = cli.load_checkpoint(str(tmp_path))
    assert model.config.model_type == thinker and processor == "its processor"
    expected = model_for(thinker).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
