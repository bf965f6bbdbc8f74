"""Muse Glimmer's own way: its tower's rows leave window order between its last layer and its pixel shuffle."""

from __future__ import annotations

import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.methods import EarlyTom

from .conftest import inputs_for, model_for, video_encoder_inputs, video_features_and_layer_rows


def test_tower_scores_pool_each_tokens_patches_as_the_pixel_shuffle_groups_them(clip):
    """A value per tower row, in the window order its last layer leaves them (112 px: 2 × 2 windows of 4 × 4
    patches), averaged per token exactly as the pixel shuffle gathers that token's four patches."""
    model = model_for("muse_glimmer")
    adapter, tower = adapter_for(model), model.model.vision_tower
    inputs = inputs_for("muse_glimmer", clip, "What is moving?")
    rows = []
    hook = tower.layers[-1].register_forward_hook(lambda module, args, output: rows.append(output))
    try:
        with torch.no_grad():
            shuffled = tower(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"]).last_hidden_state
    finally:
        hook.remove()
    with torch.no_grad():
        first_feature = tower.ln_post(rows[0])[:, 0]  # per row, in window order
    means = adapter.token_means(first_feature, inputs["video_grid_thw"], 4)
    torch.testing.assert_close(means, shuffled[:, :4].mean(dim=-1))  # a token's feature 0: its 4 patches side by side
    window_order = adapter.token_means(torch.arange(len(first_feature)).float(), inputs["video_grid_thw"], 4)
    assert not torch.equal(window_order, torch.arange(len(first_feature)).float().view(-1, 4).mean(dim=-1))


def test_identical_units_folded_after_the_first_layer_leave_later_windows_fewer_rows_and_the_output_exact(clip):
    """A tower that attends in windows after a fold (window, window, full, window): identical temporal patches fold
    after layer 0, so the later layers (windows and the full one) run on fewer rows, and the output, expanded at
    the last layer before the tower leaves window order, is the stock one exactly."""
    model = tiny.tiny_muse_glimmer(tower_layers=("window_attention",) * 2 + ("full_attention", "window_attention"))
    inputs = inputs_for("muse_glimmer", torch.stack([clip[0], clip[1]] * 4), "What is here?")
    encoder_args = video_encoder_inputs(inputs)

    stock, stock_rows = video_features_and_layer_rows(model, encoder_args)
    with tokcompress.compress(model, EarlyTom(ratio=0.1, tau=0.0, merge_layers="0")):
        folded, folded_rows = video_features_and_layer_rows(model, encoder_args)
    assert stock_rows == [256] * 4 and folded_rows[0] == 256 and folded_rows[1:] == [folded_rows[1]] * 3
    assert folded_rows[1] < 256 and folded_rows[1] % 64 == 0  # whole 64-row units fewer
    torch.testing.assert_close(torch.cat(folded), torch.cat(stock), rtol=0, atol=0)
