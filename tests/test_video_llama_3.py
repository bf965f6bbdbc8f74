"""VideoLLaMA3's own compression: its processor leaves out the tokens of a frame that repeat the previous frame's
pixels (`video_compression_mask`, on by default), so its prompts hold thinned frames before any method runs."""

from __future__ import annotations

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for

from .conftest import COMPRESSING, FRAME_GRANULAR, generate, logits, model_for, video_encoder_inputs
from .test_adapters import placed_embeddings

THRESHOLD = 0.1  # the processor's
WHOLE_FRAMES = {"earlytom", "fastvid", "holitom", "prunevid", "quota", "sttm", "tsllava"}  # read frames as full grids


def half_still(clip: torch.Tensor) -> torch.Tensor:
    """The clip with its top half frozen on the first frame's: the processor drops those cells after frame 0."""
    frames = clip.clone()
    frames[1:, : frames.shape[1] // 2] = frames[0, : frames.shape[1] // 2]
    return frames


def test_the_layout_holds_the_cells_the_processor_kept_where_the_model_placed_them(clip):
    model = model_for("video_llama_3")
    inputs = tiny.video_llama_3_inputs(half_still(clip), "What is moving?", compression=THRESHOLD)
    kept = inputs["video_compression_mask"].view(8, 16)
    assert kept[0].all() and not kept[1:, :4].any() and kept.sum() < 8 * 16  # the still rows' cells went
    (layout,) = adapter_for(model).visual_layouts(inputs)
    assert layout.grids == ((8, 4, 4),)
    assert layout.positions.tolist() == (inputs["input_ids"][0] == tiny.VIDEO).nonzero()[:, 0].tolist()
    assert torch.equal(torch.stack([layout.frame, layout.spatial], dim=1), kept.nonzero())
    with torch.no_grad():
        features = torch.cat(model.model.get_video_features(**video_encoder_inputs(inputs)).pooler_output)
    placed = placed_embeddings(model, inputs)[layout.positions]
    torch.testing.assert_close(placed, features.view(8, 16, -1)[layout.frame, layout.spatial])


@pytest.mark.parametrize("method", COMPRESSING)
def test_every_method_compresses_videos_the_processor_already_thinned(clip, method):
    """Exact at ratio 1; at 0.3 of the tokens the prompts hold, a batch of two thinned videos of different lengths
    decodes as each video alone - or, for the methods that read frames as full grids, a refusal naming the fix."""
    model = model_for("video_llama_3")
    videos, questions = [half_still(clip), half_still(clip[:4])], ["What is moving?", "Describe it."]
    batch = tiny.video_llama_3_inputs(videos, questions, compression=THRESHOLD)
    alone = [tiny.video_llama_3_inputs(v, q, compression=THRESHOLD) for v, q in zip(videos, questions)]
    reference = generate(model, batch)
    with tokcompress.compress(model, method, ratio=1.0):
        assert torch.equal(generate(model, batch), reference)
    if method in WHOLE_FRAMES:
        with tokcompress.compress(model, method, ratio=0.3), pytest.raises(ValueError, match="use_token_compression"):
            generate(model, batch)
        return
    with tokcompress.compress(model, method, ratio=0.3) as handle:
        together = generate(model, batch)
        stats = handle.stats
        singles = [generate(model, inputs)[0] for inputs in alone]
    assert [s.visual_in for s in stats.samples] == [int(i["video_compression_mask"].sum()) for i in alone]
    tolerance = 16 if method in FRAME_GRANULAR else 1.0
    assert all(abs(s.achieved_ratio - 0.3) * s.visual_in <= tolerance for s in stats.samples)
    for row, single in zip(together, singles):
        assert torch.equal(row, single)


def test_features_encoded_while_patched_carry_their_grid_and_others_are_refused(clip):
    model = model_for("video_llama_3")
    inputs = tiny.video_llama_3_inputs(half_still(clip), "What is moving?", compression=THRESHOLD)
    text = {k: inputs[k] for k in ("input_ids", "attention_mask", "video_compression_mask")}
    with torch.no_grad():
        unpatched = model.model.get_video_features(**video_encoder_inputs(inputs))
    with tokcompress.compress(model, "framefusion", ratio=0.3):
        expected = logits(model, inputs)
        with torch.no_grad():
            encoded = model.model.get_video_features(**video_encoder_inputs(inputs))
        torch.testing.assert_close(logits(model, {**text, "mm_encoder_outputs": {"video": encoded}}), expected)
        with pytest.raises(ValueError, match="encoded before the model was patched"):
            logits(model, {**text, "mm_encoder_outputs": {"video": unpatched}})


def test_beams_repeat_each_samples_grids_even_where_two_videos_have_as_many_tokens(clip, other_clip):
    """`generate` drops the grids and repeats each sample's videos for its beams: the noted grids are repeated
    the same way, so a batch of a 4-frame 4 × 4 and an 8-frame 2 × 4 video (64 tokens each) decodes as each
    video alone."""
    model = model_for("video_llama_3")
    videos, questions, sizes = [clip[:4], other_clip], ["What is moving?", "Describe it."], [(128, 128), (64, 128)]
    batch = tiny.video_llama_3_inputs(videos, questions, sizes=sizes)
    assert batch["video_grid_thw"].tolist() == [[4, 8, 8], [8, 4, 8]]
    with tokcompress.compress(model, "framefusion", ratio=0.3):
        together = generate(model, batch, num_beams=2)
        alone = [generate(model, tiny.video_llama_3_inputs(v, q, sizes=[size]), num_beams=2)[0]
                 for v, q, size in zip(videos, questions, sizes)]
    assert all(torch.equal(row, single) for row, single in zip(together, alone))


def test_token_folding_in_the_tower_leaves_its_pooled_output_alone(clip):
    """VideoLLaMA3's tower hands out its pooled output: after folding three quarters of its rows away (leaving as
    many as the pooled output has) only the layers' rows are expanded back."""
    model = model_for("video_llama_3")
    inputs = tiny.video_llama_3_inputs(clip, "What is moving?")
    with tokcompress.compress(model, "vidtldr", ratio=0.3, merge_schedule="0.5,0.5") as handle:
        generate(model, inputs)
    assert abs(handle.stats.samples[0].achieved_ratio - 0.3) * handle.stats.samples[0].visual_in <= 1
