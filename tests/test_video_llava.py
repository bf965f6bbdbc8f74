"""Video-LLaVA: each frame reaches the LLM as its CLS token, a separator of its own, then its p × p grid."""

from __future__ import annotations

import torch

import tokcompress
from tokcompress.adapters import adapter_for
from tokcompress.methods import TSLLaVA

from .conftest import generate, inputs_for, model_for, record_pre_llm_calls


def side(model) -> int:
    vision = model.config.vision_config
    return vision.image_size // vision.patch_size


def test_a_frame_is_its_cls_token_then_its_grid(clip):
    model = model_for("video_llava")
    (layout,) = adapter_for(model).visual_layouts(inputs_for("video_llava", clip, "What is moving?"))
    p = side(model)
    assert layout.grids == ((len(clip), p, p),)
    leads = layout.is_separator.nonzero().squeeze(1)
    assert leads.tolist() == list(range(0, len(clip) * (1 + p * p), 1 + p * p))
    assert layout.frame[leads].tolist() == list(range(len(clip)))  # each its frame's


def test_grid_methods_read_each_frame_as_a_square_image(clip):
    """TS-LLaVA pools each frame to a thumbnail grid: it is handed p × p frames, not rows of 1 + p² tokens."""
    model = model_for("video_llava")
    method = TSLLaVA(ratio=0.3)
    calls = record_pre_llm_calls(method)
    with tokcompress.compress(model, method) as handle:
        generate(model, inputs_for("video_llava", clip, "What is moving?"), max_new_tokens=2)
        kept = handle.stats.samples[0].kept_positions
    ((layout, _),) = calls
    assert {grid[1:] for grid in layout.grids} == {(side(model), side(model))}
    assert set(layout.positions[layout.is_separator].tolist()) <= set(kept)  # every CLS token kept first


def test_a_frame_skipped_before_the_tower_takes_its_cls_token_with_it(clip):
    model = model_for("video_llava")
    inputs = inputs_for("video_llava", clip[:1].expand(8, -1, -1, -1).contiguous(), "What is in the picture?")
    (layout,) = adapter_for(model).visual_layouts(inputs)
    with tokcompress.compress(model, "framededup", ratio=1 / 8) as handle:
        generate(model, inputs, max_new_tokens=2)
        kept = torch.tensor(handle.stats.samples[0].kept_positions)
    (frame,) = layout.frame[torch.isin(layout.positions, kept)].unique().tolist()
    assert kept.tolist() == layout.positions[layout.frame == frame].tolist()  # its CLS token and its cells
