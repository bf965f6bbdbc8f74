"""Muse Glimmer's own way: its tower's rows leave window order between its last layer and its pixel shuffle."""

from __future__ import annotations

import torch

from tokcompress.adapters import adapter_for

from .conftest import inputs_for, model_for


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
