"""Qwen2.5-Omni with the video's audio track (`use_audio_in_video`): the video's frame units come in chunks of
seconds with the chunk's audio tokens between them; only the video tokens are compressed."""

from __future__ import annotations

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for

from .conftest import COMPRESSING, FRAME_GRANULAR, generate, model_for, video_encoder_inputs
from .test_adapters import placed_embeddings

AUDIO_FRAMES = 400  # mel frames: 100 audio tokens, two chunks of 50 beside the 8-frame clip's two chunks of units


def test_the_layout_holds_each_chunks_units_and_leaves_the_audio_out(clip):
    model = model_for("qwen2_5_omni_thinker")
    inputs = tiny.qwen_omni_inputs(clip, "What is moving?", audio_frames=AUDIO_FRAMES)
    ids = inputs["input_ids"][0]
    video, audio = (ids == tiny.VIDEO).nonzero()[:, 0], (ids == tiny.AUDIO).nonzero()[:, 0]
    assert len(audio) == 100 and video[31] + 1 < video[32]  # units 0-1, 50 audio tokens, units 2-3, the rest
    (layout,) = adapter_for(model).visual_layouts(inputs)
    assert layout.grids == ((4, 4, 4),) and layout.positions.tolist() == video.tolist()
    assert layout.frame.tolist() == torch.arange(4).repeat_interleave(16).tolist()
    with torch.no_grad():
        features = torch.cat(model.model.get_video_features(**video_encoder_inputs(inputs)).pooler_output)
    torch.testing.assert_close(placed_embeddings(model, inputs)[layout.positions], features)


@pytest.mark.parametrize("method", COMPRESSING)
def test_every_method_compresses_a_video_with_its_audio_track(clip, other_clip, method):
    """Exact at ratio 1; at 0.3 of the video tokens (the audio tokens are not among them: the layout test) a batch
    of two videos of different lengths with their tracks decodes as each alone."""
    model = model_for("qwen2_5_omni_thinker")
    videos, questions = [clip, other_clip[:4]], ["What is moving?", "Describe it."]
    batch = tiny.qwen_omni_inputs(videos, questions, audio_frames=AUDIO_FRAMES)
    reference = generate(model, batch)
    with tokcompress.compress(model, method, ratio=1.0):
        assert torch.equal(generate(model, batch), reference)
    with tokcompress.compress(model, method, ratio=0.3) as handle:
        together = generate(model, batch)
        stats = handle.stats
        alone = [generate(model, tiny.qwen_omni_inputs(v, q, audio_frames=AUDIO_FRAMES))[0]
                 for v, q in zip(videos, questions)]
    tolerance = 16 if method in FRAME_GRANULAR else 1.0
    assert [s.visual_in for s in stats.samples] == [64, 32]
    assert all(abs(s.achieved_ratio - 0.3) * s.visual_in <= tolerance for s in stats.samples)
    assert all(torch.equal(row, single) for row, single in zip(together, alone))


def test_patching_the_whole_model_compresses_what_its_thinker_generates(clip):
    """The whole Qwen2.5-Omni's `generate` runs its thinker's (then the talker, which sees no video): patching the
    whole model hooks the thinker."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    thinker = model_for("qwen2_5_omni_thinker")
    whole = Qwen2_5OmniForConditionalGeneration(
        Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False)
    ).eval()
    whole.thinker.load_state_dict(thinker.state_dict())
    whole.thinker.generation_config.pad_token_id = tiny.PAD
    inputs = tiny.qwen_omni_inputs(clip, "What is moving?", audio_frames=AUDIO_FRAMES)
    with tokcompress.compress(thinker, "framefusion", ratio=0.3) as handle:
        expected, kept = generate(thinker, inputs), handle.stats.samples[0].kept_positions
    with tokcompress.compress(whole, "framefusion", ratio=0.3) as handle:
        assert torch.equal(generate(whole.thinker, inputs), expected)
        assert handle.stats.samples[0].kept_positions == kept
    assert not tokcompress.api.unpatch(whole)


def test_the_command_line_runs_a_whole_qwen2_5_omni_checkpoint_through_its_thinker(tmp_path, monkeypatch):
    """`tokcompress run --model` loads the whole model (not an image-text-to-text class) and answers with its
    thinker, which the patch knows."""
    from transformers import AutoProcessor, Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from tokcompress import cli

    thinker = model_for("qwen2_5_omni_thinker")
    whole = Qwen2_5OmniForConditionalGeneration(
        Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False)
    )
    whole.thinker.load_state_dict(thinker.state_dict())
    whole.save_pretrained(tmp_path)
    torch.save({}, tmp_path / "spk_dict.pt")  # its speakers, which every checkpoint ships (none needed here)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda path: "its processor")
    model, processor = cli.load_checkpoint(str(tmp_path))
    assert type(model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration" and processor == "its processor"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), thinker.state_dict().values()))
    assert adapter_for(model).model_type == "qwen2_5_omni_thinker"
