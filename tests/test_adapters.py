"""Each family's adapter against the model's own placement of a real clip: the frames × grid it hands the
methods must be where the model put each frame's features."""

from __future__ import annotations

import torch

import tokcompress
from tokcompress.adapters import adapter_for

from .conftest import FAMILIES, TINY, inputs_for, model_for


def placed_embeddings(model, inputs) -> torch.Tensor:
    """The LLM's input embeddings of one sample, as the model assembled them (features scattered in)."""
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"][0]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return seen[0]


def test_every_supported_model_type_has_a_tiny_family_under_the_contract_suite():
    covered_by_subclass = {"qwen2_vl"}  # Qwen2_5_VLAdapter's parent: same placement, tested through it
    assert set(tokcompress.list_models()) - covered_by_subclass == set(FAMILIES)


def test_the_layout_is_where_the_model_placed_each_frame(family, clip):
    """Frame unit f's tokens in the layout hold what the model produces for unit f encoded on its own,
    cell by cell in raster order; separators come after a video's frames."""
    model, spec = model_for(family), TINY[family]
    inputs = inputs_for(family, clip, "What is moving?")
    (layout,) = adapter_for(model).visual_layouts(inputs)
    units, height, width = layout.grids[0]
    assert units == len(clip) // spec.frames_per_unit and height * width == spec.tokens_per_unit
    assert layout.positions.tolist() == (inputs["input_ids"][0] == model.config.video_token_id).nonzero()[:, 0].tolist()
    separators = layout.is_separator
    assert not separators[: units * height * width].any() and separators[units * height * width :].all()
    embeddings = placed_embeddings(model, inputs)
    for unit in range(units):
        alone = inputs_for(family, clip[unit * spec.frames_per_unit : (unit + 1) * spec.frames_per_unit], "What is moving?")
        (alone_layout,) = adapter_for(model).visual_layouts(alone)
        cells = alone_layout.positions[~alone_layout.is_separator]
        in_full = layout.frame == unit
        assert layout.spatial[in_full].tolist() == list(range(height * width))
        torch.testing.assert_close(embeddings[layout.positions[in_full]], placed_embeddings(model, alone)[cells])
