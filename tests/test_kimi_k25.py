"""Kimi K2.5: a video's chunks of frames are its frame units, read off the prompt; the decoder's multi-head latent
attention is scored with its own queries and keys. (The contract suite runs on its tiny model too.)"""

from __future__ import annotations

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine import compat
from tokcompress.methods.base import PromptRefused
from tokcompress.tiny_inputs import VIDEO, VIDEO_START, VISION_END, VISION_START, text_ids
from tokcompress.video import kimi_k25_pixels

from .conftest import inputs_for, logits, model_for
from .test_adapters import assert_scores_reproduce_the_attention_map

pytestmark = pytest.mark.skipif(not compat.KIMI_CHUNKS, reason="Kimi K2.5 needs transformers 5.24+")


def two_videos(first: torch.Tensor, second: torch.Tensor, between: str = " and then ") -> dict:
    """One prompt holding two videos (chunks of 2 frames, 112 px: 4 × 4 tokens a chunk) with `between` between."""
    pixels, grids, ids = [], [], text_ids("Compare ")
    for index, frames in enumerate((first, second)):
        flat, grid = kimi_k25_pixels(frames, 112, 112, temporal_patch_size=2)
        pixels.append(flat)
        grids.append(grid)
        for chunk in range(len(grid)):
            stamp = f"00:00:0{chunk}.000"
            ids += text_ids(stamp) + [VISION_START, *text_ids("video"), VIDEO_START, *[VIDEO] * 16, VISION_END]
        ids += text_ids(between if index == 0 else ". Which moves more?")
    ids = torch.tensor([ids])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": torch.cat(pixels),
            "video_grid_thw": torch.cat(grids)}


def test_chunks_close_together_are_one_videos_and_text_parts_two_videos(clip, other_clip):
    """8 frames: 4 chunks; 5 frames: 3, the last of one frame (the processor does not pad it)."""
    model = model_for("kimi_k25")
    inputs = two_videos(clip, other_clip[:5])
    (layout,) = adapter_for(model).visual_layouts(inputs)
    assert layout.grids == ((4, 4, 4), (3, 4, 4))
    assert layout.positions.tolist() == (inputs["input_ids"][0] == VIDEO).nonzero().squeeze(1).tolist()
    with torch.no_grad():
        stock = logits(model, inputs)
        with tokcompress.compress(model, "none"):
            torch.testing.assert_close(logits(model, inputs), stock, rtol=0, atol=0)
        with tokcompress.compress(model, "framefusion", ratio=0.4) as handle:
            assert torch.isfinite(logits(model, inputs)).all()
    assert abs(handle.stats.samples[0].achieved_ratio - 0.4) < 0.02


@pytest.mark.parametrize(("frames", "between", "grids"), [
    ((8, 5), " vs ", ((4, 4, 4), (3, 4, 4))),  # any text between two videos parts them
    ((5, 8), " vs ", ((3, 4, 4), (4, 4, 4))),
    ((2, 2), " vs ", ((1, 4, 4), (1, 4, 4))),  # videos of one chunk each: no chunk's gap to compare the text's with
    ((2, 2), ",", ((1, 4, 4), (1, 4, 4))),
    ((5, 8), "", ((3, 4, 4), (4, 4, 4))),  # a chunk of fewer frames ends its video
    ((1, 8), "", ((1, 4, 4), (4, 4, 4))),  # ... its only one, too: no chunk of more frames follows it in a video
    ((8, 5), "", ((4, 4, 4), (3, 4, 4))),  # back to back: the second's first time is the first's again
    ((2, 2), "", ((1, 4, 4), (1, 4, 4))),
])
def test_two_videos_in_one_prompt_are_told_apart_by_the_text_the_times_or_the_short_chunk_between(
    clip, other_clip, frames, between, grids
):
    inputs = two_videos(clip[: frames[0]], other_clip[: frames[1]], between)
    (layout,) = adapter_for(model_for("kimi_k25")).visual_layouts(inputs)
    assert layout.grids == grids


def test_a_pre_encoder_method_keeps_whole_chunks_of_each_video_out_of_the_tower(clip):
    """Two still videos of 4 chunks each: framededup keeps one chunk of each (its window's middle one, as LongVU);
    the tower sees those 2 chunks' patches."""
    model = model_for("kimi_k25")
    still = clip[:1].expand(8, -1, -1, -1).contiguous()
    inputs = two_videos(still, still)
    rows = []
    first_layer = adapter_for(model).vision_tower.layers[0]
    hook = first_layer.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        with tokcompress.compress(model, "framededup", ratio=0.25) as handle, torch.no_grad():
            assert torch.isfinite(logits(model, inputs)).all()
    finally:
        hook.remove()
    assert rows == [2 * 2 * 64]  # two chunks of two frames of 8 × 8 patches
    kept = torch.tensor(handle.stats.samples[0].kept_positions)
    (layout,) = adapter_for(model).visual_layouts(inputs)
    assert layout.frame[torch.isin(layout.positions, kept)].unique().tolist() == [2, 6]


@pytest.mark.parametrize("text_extra", [{"rope_interleave": False}, {"q_lora_rank": None}], ids=str)
def test_mla_scores_reproduce_its_attention_map_either_way_it_rotates_or_projects_queries(clip, text_extra):
    model = tiny.tiny_kimi_k25(attn_implementation="eager", **text_extra)
    assert_scores_reproduce_the_attention_map(model, tiny.video_inputs(model, clip, "Who?"))


def test_a_prompt_whose_runs_are_not_the_chunks_is_refused(clip):
    model = model_for("kimi_k25")
    inputs = two_videos(clip, clip)
    ids = inputs["input_ids"][0]
    (first, second) = (ids == VIDEO).nonzero().squeeze(1)[[15, 16]].tolist()
    ids = torch.cat([ids[: first + 1], ids[second:]])[None]  # the first two chunks' tokens in one run of 32
    inputs = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with pytest.raises(PromptRefused, match="a run per chunk"):
        adapter_for(model).visual_layouts(inputs)


def test_transformers_5_23_is_refused_naming_the_upgrade(monkeypatch):
    monkeypatch.setattr(compat, "KIMI_CHUNKS", False)
    with pytest.raises(ValueError, match="from transformers 5.24"):
        tokcompress.patch(model_for("kimi_k25"), "tome")


def test_the_ideal_encodes_the_first_share_of_the_chunks(clip):
    """The ideal of a method that encoded half the chunks runs the tower on the first half of them (2 of 4)."""
    from tokcompress.ideal import ideal_inputs

    model = model_for("kimi_k25")
    encode, _ = ideal_inputs(model, inputs_for("kimi_k25", clip, "Who?"), 7, encoded=0.5)
    with torch.no_grad():
        features = encode().pooler_output
    assert len(features) == 2 and all(chunk.shape[0] == 16 for chunk in features)
