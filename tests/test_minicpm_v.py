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

from .conftest import generate, logits, model_for
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
    with tokcompress.compress(model, "framefusion", ratio=0.3) as handle:
        logits(model, inputs)
        forward = handle.stats.samples[0]
        generate(model, inputs, max_new_tokens=2)
        generated = handle.stats.samples[0]
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
    seen, method = [], VisionZip(ratio=0.5)
    original = method.reduce_pre_llm
    method.reduce_pre_llm = lambda features, layout, budget: seen.append(layout) or original(features, layout, budget)
    try:
        with tokcompress.compress(model, method):
            logits(model, inputs)
    finally:
        hook.remove()
    (hidden, bounds), (layout,) = calls[-1], seen
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
