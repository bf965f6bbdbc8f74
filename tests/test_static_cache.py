"""`generate` with a static cache: each decoder layer fills its own preallocated slots with the tokens it keeps
(counting them itself), the empty slots masked out, so a compressed generation gives the dynamic cache's tokens."""

from __future__ import annotations

import pytest
import torch

import tokcompress

from .conftest import COMPRESSING, FAMILIES, TINY, inputs_for, model_for


def padded_batch(family, clip, other_clip) -> dict:
    """Two videos (of different lengths where the family takes them) with questions of different lengths: the
    shorter prompt left-padded."""
    other = other_clip[:4] if TINY[family].mixed_frame_counts else other_clip
    return inputs_for(family, [clip, other], ["What is happening here?", "Why?"])


def generations(model, inputs, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens greedy `generate` gives with the default cache and with a static one."""
    with torch.no_grad():
        return tuple(
            model.generate(**inputs, max_new_tokens=5, do_sample=False, **kwargs, **cache)
            for cache in ({}, {"cache_implementation": "static"})
        )


@pytest.mark.parametrize("method", COMPRESSING)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_static_cache_generates_what_the_default_one_does(family, method, clip, other_clip):
    """Every method on every family: key biases, decode-time KV selection, in-LLM reductions; sliding-window and
    KV-sharing layers (Gemma 4), linear-attention ones (Qwen3.5), M-RoPE, DeepStack."""
    model = model_for(family)
    with tokcompress.compress(model, method, ratio=0.3):
        dynamic, static = generations(model, padded_batch(family, clip, other_clip))
    assert torch.equal(dynamic, static)


def test_beams_with_a_static_cache(clip, other_clip):
    model = model_for("qwen2_5_vl")
    with tokcompress.compress(model, "framefusion", ratio=0.3):
        dynamic, static = generations(model, padded_batch("qwen2_5_vl", clip, other_clip), num_beams=2)
    assert torch.equal(dynamic, static)


def test_a_forward_given_masks_built_beforehand_is_refused(clip):
    """Without the prompt's 2-D padding mask the kept tokens' masks cannot be built: the error says what works."""
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What?")
    length = inputs["input_ids"].shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    with tokcompress.compress(model, "fastv", ratio=0.3), pytest.raises(ValueError, match="static cache is supported"):
        model(**{**inputs, "attention_mask": causal})
