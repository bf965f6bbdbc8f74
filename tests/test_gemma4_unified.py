"""Gemma 4 Unified's own way: no vision tower, so nothing ranks tokens by its attention or folds inside it, and
dropped frames are never embedded (its decoder's layers run by hand: tests/test_gemma4.py)."""

from __future__ import annotations

import pytest
import torch

import tokcompress
from tokcompress.api import HANDLE_ATTRIBUTE
from tokcompress.methods import EarlyTom, EncoderOnly, FrameFusion, build_method

from .conftest import inputs_for, model_for

TOWER_READERS = [name for name in tokcompress.list_methods() if build_method(name).uses_tower_attention()]


@pytest.mark.parametrize(
    "method",
    [*TOWER_READERS, EncoderOnly(EarlyTom(ratio=0.3)), [EncoderOnly(EarlyTom()), FrameFusion(ratio=0.3)]],
    ids=str,
)
def test_methods_that_need_a_vision_tower_are_refused_naming_the_fix(method):
    model = model_for("gemma4_unified")
    with pytest.raises(ValueError, match="no vision tower.*framededup"):
        tokcompress.patch(model, method, ratio=0.3)
    assert getattr(model, HANDLE_ATTRIBUTE, None) is None or not getattr(model, HANDLE_ATTRIBUTE).patched
    assert TOWER_READERS == ["earlytom", "fastvid", "holitom", "visionzip"]


def test_dropped_frames_are_never_embedded(clip):
    """framededup on a clip of two repeated frames: the patch embedder runs on the two it keeps, and the prompt's
    tokens of the others are dropped, so the LLM reads two frames' tokens."""
    model = model_for("gemma4_unified")
    inputs = inputs_for("gemma4_unified", torch.stack([clip[0]] * 4 + [clip[5]] * 4), "What is here?")
    embedded = []
    hook = model.model.embed_vision.register_forward_pre_hook(lambda module, args: embedded.append(len(args[0])))
    try:
        with tokcompress.compress(model, "framededup", ratio=0.25) as handle, torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    assert embedded == [2]
    (sample,) = handle.stats.samples
    assert sample.visual_in == 8 * 9 and sample.visual_out == 2 * 9

