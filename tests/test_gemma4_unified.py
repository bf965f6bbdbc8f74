"""Gemma 4 Unified's own way: no vision tower, so nothing ranks tokens by its attention or folds inside it, and
dropped frames are never embedded (its decoder's layers run by hand: tests/test_gemma4.py)."""

from __future__ import annotations

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.api import HANDLE_ATTRIBUTE
from tokcompress.methods import EarlyTom, EncoderOnly, FrameFusion, build_method

from .conftest import generate, inputs_for, model_for
from .test_equivalence import assert_logits_of_the_llm_fed_only

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
    assert TOWER_READERS == ["earlytom", "fastvid", "holitom", "prumerge", "visionzip"]


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
    assert "25% of the frames embedded (no vision tower)" in str(handle.stats)



def test_a_frame_longer_than_the_sliding_window_attends_to_itself_whole(clip):
    """Its forward ORs each frame's block into a sliding layer's windowed mask: with a 4-token window and frames of
    9 tokens (~7 kept), the LLM fed only the kept tokens gives the stock model's logits at every step."""
    model = tiny.tiny_gemma4_unified(sliding_window=4)
    inputs = tiny.video_inputs(model, clip, "What is moving?")
    with tokcompress.compress(model, "uniform", ratio=0.8) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        kept = handle.stats.samples[0].kept_positions
    assert_logits_of_the_llm_fed_only(model, inputs, kept, out.logits)


@pytest.mark.parametrize("knobs", [{"ratio": 0.5}, {"ratio": 0.7, "layer": 3}])
def test_an_in_llm_reduction_after_a_global_layer_generates_alike_with_a_static_cache(clip, knobs):
    """generate builds a static cache's masks by the model's class rule (global layers causal), its forward by
    another (frames both ways in every layer): the layers before FastV's reduction take the forward's too."""
    model = model_for("gemma4_unified")
    inputs = inputs_for("gemma4_unified", clip, "What is moving?")
    with tokcompress.compress(model, "fastv", **knobs):
        assert torch.equal(generate(model, inputs, max_new_tokens=6, cache_implementation="static"),
                           generate(model, inputs, max_new_tokens=6))
