"""MiniCPM-V 4.6's own way: every unit of a call's videos - each frame's source and its slices, of their own sizes -
side by side in one packed row, the prompt holding each as a run of its own; the layout stacks a frame's views into
one grid."""

from __future__ import annotations

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.methods import VisionZip
from tokcompress.methods.base import PromptRefused
from tokcompress.video import minicpm_v_pixels

from .conftest import forward_and_generate, generate, logits, model_for, record_pre_llm_calls
from .test_adapters import placed_embeddings

SHAPES = {  # source (height, width), slices (rows, columns), tile (height, width), mode
    "narrower source": ((224, 168), (1, 2), (168, 224), "16x"),
    "two rows of slices": ((224, 224), (2, 2), (112, 168), "16x"),
    "no slices": ((224, 224), (1, 1), (224, 224), "16x"),
    "4x mode": ((112, 112), (1, 2), (112, 56), "4x"),
}


def shaped_inputs(frames, shape: str) -> dict:
    source, slices, tile, mode = SHAPES[shape]
    inputs = tiny.minicpm_v_inputs(frames, "What is moving?", source, slices, tile, mode)
    return {**inputs, "downsample_mode": mode} if mode != "16x" else inputs


def units_per_frame(shape: str) -> int:
    rows, columns = SHAPES[shape][1]
    return 1 + (rows * columns if rows * columns > 1 else 0)


def views_of(frame_cells: torch.Tensor, views: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """Per view of a frame ((1, height, width) tokens each), the cells of its stacked grid (`frame_cells`: what the
    grid holds at each cell, rows of the widest view's width) that the view holds, in its raster order."""
    width, top, held = max(w for _, _, w in views), 0, []
    grid = frame_cells.view(-1, width)
    for _, height, view_width in views:
        held.append(grid[top : top + height, :view_width].flatten())
        top += height
    return held


@pytest.mark.parametrize("shape", SHAPES)
def test_each_view_of_each_frame_sits_where_the_model_placed_its_unit(clip, shape):
    """Frame f's stacked grid holds its source's tokens, then each slice's, at the prompt positions where the model
    scattered those units' features, in raster order; views narrower than the grid leave the cells past them out."""
    model = model_for("minicpmv4_6")
    inputs = shaped_inputs(clip[:3], shape)
    (layout,) = adapter_for(model).visual_layouts(inputs)
    ((frames, height, width),) = layout.grids
    views = adapter_for(model).unit_grids(inputs)[: units_per_frame(shape)]
    stacked = adapter_for(model).stacked_views(views)
    assert (frames, height, width) == (3, *stacked.shape) and layout.num_tokens == 3 * int(stacked.sum())
    assert layout.positions.tolist() == (inputs["input_ids"][0] == tiny.VIDEO).nonzero()[:, 0].tolist()
    assert bool(stacked.all()) == (shape == "no slices")  # the others hold views narrower than the grid
    with torch.no_grad():
        units = model.model.get_video_features(
            inputs["pixel_values_videos"], inputs["target_sizes_videos"], downsample_mode=SHAPES[shape][3]
        ).pooler_output
    embeddings, units = placed_embeddings(model, inputs), iter(units)
    for frame in range(frames):
        in_frame = layout.frame == frame
        cells = torch.full((height * width,), -1)
        cells[layout.spatial[in_frame]] = layout.positions[in_frame]
        assert sorted(layout.spatial[in_frame].tolist()) == stacked.flatten().nonzero()[:, 0].tolist()
        for view in views_of(cells, views):
            torch.testing.assert_close(embeddings[view], next(units))


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_generate_keep_the_same_tokens_whatever_the_views(clip, shape):
    """generate encodes up front and drops the units' sizes (and the mode): the layout comes from the grids the
    encoding noted, so it keeps what the forward keeps."""
    model = model_for("minicpmv4_6")
    inputs = shaped_inputs(clip[:4], shape)
    forward, generated = forward_and_generate(model, inputs, "framefusion")
    assert forward.kept_positions == generated.kept_positions
    assert abs(generated.achieved_ratio - 0.3) * generated.visual_in <= 1.0


def test_tower_scores_are_each_tokens_rows_attention_at_the_last_layer(clip):
    """VisionZip gets, per token, the attention its rows got at the tower's last layer (inside their unit,
    averaged over heads and queries), pooled over the rows the MLP merger folds into it - on views of two
    sizes, each in its place in the stacked grid."""
    model = model_for("minicpmv4_6")
    inputs = shaped_inputs(clip[:2], "narrower source")
    attention = model.model.vision_tower.encoder.layers[-1].self_attn
    calls = []
    hook = attention.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((kwargs["hidden_states"][0], kwargs["cu_seqlens"])), with_kwargs=True
    )
    method = VisionZip(ratio=0.5)
    seen = record_pre_llm_calls(method)
    try:
        with tokcompress.compress(model, method):
            logits(model, inputs)
    finally:
        hook.remove()
    (hidden, bounds), ((layout, _),) = calls[-1], seen
    received = []
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        rows = hidden[start:end]
        queries = attention.q_proj(rows).view(len(rows), attention.num_heads, -1).transpose(0, 1)
        keys = attention.k_proj(rows).view(len(rows), attention.num_heads, -1).transpose(0, 1)
        weights = (queries @ keys.transpose(1, 2) * attention.scaling).softmax(dim=-1)  # (heads, queries, keys)
        received.append(weights.mean(dim=(0, 1)).detach())
    grids = adapter_for(model).unit_grids(inputs)
    expected = [  # per unit, its tokens' scores: the mean of each 2 × 2 block of rows (after the window merger)
        scores.view(h, 2, w, 2).mean(dim=(1, 3)).flatten() for scores, (_, h, w) in zip(received, grids)
    ]
    ((frames, height, width),) = layout.grids
    for frame in range(frames):
        in_frame = layout.frame == frame
        cells = torch.full((height * width,), -1)
        cells[layout.spatial[in_frame]] = torch.arange(layout.num_tokens)[in_frame]
        for view, scores in zip(views_of(cells, grids[:3]), expected[3 * frame : 3 * frame + 3]):
            torch.testing.assert_close(layout.saliency[view], scores, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", ["narrower source", "two rows of slices"])
@pytest.mark.parametrize("run", ["forward", "generate"])
def test_framededup_keeps_whole_frames_out_of_the_tower(clip, shape, run):
    """The tower's call packs every video's sources and slices alike; read with the prompt (a forward's, or the one
    generate encodes for), framededup keeps whole frames - a source and all its slices - out of it, and the LLM
    reads the frames it encoded."""
    model = model_for("minicpmv4_6")
    inputs = shaped_inputs(clip[:4], shape)
    sizes = inputs["target_sizes_videos"]
    per_frame = units_per_frame(shape)
    patches_per_frame = int(sizes[:per_frame].prod(dim=-1).sum())
    rows = []
    hook = model.model.vision_tower.encoder.layers[0].register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[1])
    )
    try:
        with tokcompress.compress(model, "framededup", ratio=0.5) as handle:
            logits(model, inputs) if run == "forward" else generate(model, inputs, max_new_tokens=2)
            (sample,) = handle.stats.samples
    finally:
        hook.remove()
    assert rows == [2 * patches_per_frame] and sample.encoder_ratio == 0.5
    frames = []
    for frame in adapter_for(model)._videos(inputs["input_ids"])[0][0]:
        positions = {p for start, length in frame.runs for p in range(start, start + length)}
        frames.append(positions <= set(sample.kept_positions))
        assert frames[-1] or not positions & set(sample.kept_positions)  # a frame whole, or not at all
    assert sum(frames) == 2


def stacked_video_inputs(frames: torch.Tensor) -> dict:
    """One video as the processor lays it out with `stack_frames > 1`: each second's frame (a source and 1 × 2
    slices) followed by the canvas of that second's sub-frames (another size: a source and 2 × 1 slices), all one
    video after one `<image_id>`. Here frames 0, 2, ... stand for the seconds' frames, 1, 3, ... for the canvases."""
    shapes = [((224, 168), (1, 2), (168, 224)), ((168, 224), (2, 1), (112, 224))]  # source, slices, tile

    def run(opener: int, closer: int, size: tuple[int, int]) -> list[int]:
        return [opener, *[tiny.VIDEO] * (size[0] // 56 * (size[1] // 56)), closer]

    ids, pixels, sizes = tiny.text_ids("user: <image_id>0</image_id>"), [], []
    for frame in range(len(frames)):
        source, (rows, columns), tile = shapes[frame % 2]
        ids += run(tiny.VISION_START, tiny.VISION_END, source)
        for row in range(rows):
            ids += tiny.text_ids("\n" if row else "") + run(tiny.VIDEO_START, tiny.VIDEO_END, tile) * columns
        frame_pixels, frame_sizes = minicpm_v_pixels(frames[frame : frame + 1], source, (rows, columns), tile)
        pixels, sizes = pixels + [frame_pixels], sizes + [frame_sizes]
    ids = torch.tensor([ids + tiny.text_ids("\nWhat is moving?\nassistant:")])
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": torch.cat(pixels, -1)[None],
        "target_sizes_videos": torch.cat(sizes),
    }


def test_stacked_sub_frames_stay_in_their_video(clip):
    """With `stack_frames > 1` the frames of one video alternate between two sizes (each second's frame, then the
    canvas of its sub-frames): they are still one video, each frame's views in the top-left corner of the grid that
    holds them all, each token where the model placed its unit's feature; framededup then chooses among its frames
    (when each frame was a video of its own, it kept them all), alone or before a method ranking by the tower's
    attention, and forward and generate keep the same tokens."""
    model = model_for("minicpmv4_6")
    inputs = stacked_video_inputs(clip[:4])
    adapter = adapter_for(model)
    (layout,) = adapter.visual_layouts(inputs)
    ((frames, height, width),) = layout.grids
    grids = adapter.unit_grids(inputs)
    per_frame = [grids[:3], grids[3:6]]  # the seconds' frames' views, the canvases'
    assert (frames, height, width) == (4, 4 + 3 + 3, 4) and layout.num_tokens == 2 * (12 + 2 * 12) + 2 * (12 + 2 * 8)
    with torch.no_grad():
        units = iter(model.model.get_video_features(
            inputs["pixel_values_videos"], inputs["target_sizes_videos"]).pooler_output)
    embeddings = placed_embeddings(model, inputs)
    for frame in range(frames):
        in_frame = layout.frame == frame
        cells = torch.full((height * width,), -1)
        cells[layout.spatial[in_frame]] = layout.positions[in_frame]
        views = views_of(cells, per_frame[frame % 2])
        assert sum(len(view) for view in views) == int(in_frame.sum())
        for view in views:
            torch.testing.assert_close(embeddings[view], next(units))
    for method in ("framededup", "framefusion", "visionzip", "framededup:ratio=0.75+visionzip"):
        forward, generated = forward_and_generate(model, inputs, method)
        assert forward.kept_positions == generated.kept_positions
        assert generated.achieved_ratio < 0.8, method


def test_minicpm_ocr_reads_in_its_own_default_mode(clip):
    """MiniCPM-OCR's config (and processor) default to the "4x" mode (no window merger): with no mode passed, the
    layout takes its grids from the config, and forward and generate keep the same tokens."""
    from transformers import MiniCPMOcrConfig, MiniCPMOcrForConditionalGeneration

    from tokcompress.tiny.packed import _minicpm_v

    model = _minicpm_v(MiniCPMOcrConfig, MiniCPMOcrForConditionalGeneration, 4, "sdpa", 0, 64)  # its own defaults
    assert model.config.downsample_mode == "4x"
    inputs = tiny.video_inputs(model, clip[:3], "What is moving?")  # its processor's "4x" layout
    (layout,) = adapter_for(model).visual_layouts(inputs)
    assert layout.grids == ((3, 4 + 4 + 4, 4),) and layout.num_tokens == 3 * (16 + 2 * 8)
    forward, generated = forward_and_generate(model, inputs, "framefusion")
    assert forward.kept_positions == generated.kept_positions


def test_a_forward_that_fails_before_its_llm_leaves_no_prompt_for_a_later_encoding(clip):
    """A forward stopped inside the tower (before the LLM pre-hook takes its prompt) must not leave its ids for a
    later get_video_features call on its own: that one reads no prompt and encodes every unit."""
    model = model_for("minicpmv4_6")
    failing, other = tiny.minicpm_v_inputs(clip[:4], "What is moving?"), tiny.minicpm_v_inputs(clip[:6], "What?")

    def fail(module, args):
        raise RuntimeError("out of memory in the tower")

    with tokcompress.compress(model, "framededup", ratio=0.5):
        hook = model.model.vision_tower.register_forward_pre_hook(fail)
        try:
            with pytest.raises(RuntimeError, match="out of memory"), torch.no_grad():
                model(**failing)
        finally:
            hook.remove()
        with torch.no_grad():
            encoded = model.model.get_video_features(
                pixel_values_videos=other["pixel_values_videos"], target_sizes_videos=other["target_sizes_videos"]
            )
    assert len(encoded.pooler_output) == len(other["target_sizes_videos"])
    assert encoded["tokcompress_encoding"].keep is None  # no prompt: every unit encoded, chosen at the prefill


@pytest.mark.parametrize("method", ["quota", "sttm", "tsllava"])
def test_frames_whose_views_differ_in_width_are_refused_by_grid_readers_naming_the_fix(clip, method):
    """A 2 × 1 source over 2 × 2 slices stacks into a grid the source does not fill: the methods that read whole
    frames as grids refuse, naming slice_mode=False; the others compress it."""
    model = model_for("minicpmv4_6")
    inputs = tiny.minicpm_v_inputs(clip[:4], "What is moving?", source=(112, 56))
    with torch.no_grad():
        with tokcompress.compress(model, method, ratio=0.5), pytest.raises(PromptRefused, match="slice_mode=False"):
            logits(model, inputs)
        with tokcompress.compress(model, "framefusion", ratio=0.5) as handle:
            assert torch.isfinite(logits(model, inputs)).all()
    assert abs(handle.stats.samples[0].achieved_ratio - 0.5) < 0.05
