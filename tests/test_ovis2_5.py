"""Ovis2.5's own way: its visual tokenizer reads the tower's last layer in window order, so the prompt holds each
frame's tokens in that order (transformers 5.25+)."""

from __future__ import annotations

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.methods import EarlyTom
from tokcompress.methods.selection import frame_grids

from .conftest import TINY, inputs_for, model_for, video_encoder_inputs, video_features_and_layer_rows

pytestmark = pytest.mark.skipif("ovis2_5" not in TINY, reason="Ovis2.5 arrived in transformers 5.25")


def test_each_token_sits_at_the_raster_cell_of_the_patches_its_feature_comes_from(clip):
    """Token k's feature is the visual tokenizer's reading of the last layer's rows 4k..4k+3 (window order: at 128
    px, 2 × 2 windows of 2 × 2 blocks), and the layout puts it at the raster cell of those rows' patches (their
    rotary coordinates in the tower, halved) - not at k."""
    model = model_for("ovis2_5")
    tower = model.model.vision_tower
    inputs = inputs_for("ovis2_5", clip[:2], "What is moving?")
    rows, coordinates = [], []
    hooks = [
        tower.layers[-1].register_forward_hook(lambda module, args, output: rows.append(output)),
        tower.rotary_emb.register_forward_pre_hook(lambda module, args: coordinates.append(args[1])),
    ]
    try:
        with torch.no_grad():
            (features,) = model.model.get_video_features(**video_encoder_inputs(inputs)).pooler_output
            torch.testing.assert_close(features, model.model.multi_modal_projector(rows[0]), rtol=0, atol=0)
    finally:
        for hook in hooks:
            hook.remove()
    blocks = coordinates[0].view(-1, 4, 2) // 2  # per token, its four patches' (row, column) halved
    assert (blocks == blocks[:, :1]).all()
    (layout,) = adapter_for(model).visual_layouts(inputs)
    frames, height, width = layout.grids[0]
    assert torch.equal(layout.spatial, blocks[:, 0, 0] * width + blocks[:, 0, 1])
    assert not torch.equal(layout.spatial, torch.arange(height * width).repeat(frames))


def test_methods_that_read_frames_as_grids_get_them_in_raster_order(clip):
    model = model_for("ovis2_5")
    (layout,) = adapter_for(model).visual_layouts(inputs_for("ovis2_5", clip, "What is moving?"))
    ((_, grid),) = frame_grids(layout, "test")
    assert torch.equal(layout.spatial[grid], torch.arange(grid.shape[1]).expand_as(grid))
    assert torch.equal(layout.frame[grid], torch.arange(len(grid))[:, None].expand_as(grid))


def test_tower_scores_reach_each_token_from_its_own_rows(clip):
    """A value per tower row (window order), pooled per token in raster order (`token_means`), comes back to each
    prompt token at its layout cell as the mean of the four rows its feature was read from."""
    model = model_for("ovis2_5")
    adapter = adapter_for(model)
    inputs = inputs_for("ovis2_5", clip[:2], "What is moving?")
    (layout,) = adapter.visual_layouts(inputs)
    frames, height, width = layout.grids[0]
    values = torch.randn(frames * height * width * 4)
    pooled = adapter.token_means(values, inputs["video_grid_thw"], 4).view(frames, height * width)
    torch.testing.assert_close(pooled[layout.frame, layout.spatial], values.view(-1, 4).mean(dim=-1))


def test_identical_frames_folded_after_the_first_layer_leave_later_windows_fewer_rows_and_the_output_exact(clip):
    """Identical frames fold after layer 0 of a window, full, window tower: the later layers run on fewer rows, and
    the features, read from the last layer's rows expanded back where it leaves them, are the stock ones exactly."""
    model = tiny.tiny_ovis2_5(tower_layers=("window_attention", "full_attention", "window_attention"))
    inputs = inputs_for("ovis2_5", torch.stack([clip[0], clip[0], clip[1], clip[1]] * 2), "What is here?")
    encoder_args = video_encoder_inputs(inputs)

    stock, stock_rows = video_features_and_layer_rows(model, encoder_args)
    with tokcompress.compress(model, EarlyTom(ratio=0.1, tau=0.0, merge_layers="0")):
        folded, folded_rows = video_features_and_layer_rows(model, encoder_args)
    assert stock_rows == [512] * 3 and folded_rows[0] == 512 and folded_rows[1:] == [folded_rows[1]] * 2
    assert folded_rows[1] < 512 and folded_rows[1] % 64 == 0  # whole 64-row frames fewer
    torch.testing.assert_close(torch.cat(folded), torch.cat(stock), rtol=0, atol=0)
