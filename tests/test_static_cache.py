"""`generate` with a static cache: each decoder layer fills its own preallocated slots with the tokens it keeps
(counting them itself), the empty slots masked out, so a compressed generation gives the dynamic cache's tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import StaticCache

import tokcompress
from tokcompress import tiny
from tokcompress.engine import compat

from .conftest import TINY, every_family_and_every_method, inputs_for, logits, model_for


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


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_a_static_cache_generates_what_the_default_one_does(family, method, clip, other_clip):
    """Every family with each mechanism, every method on two families: key biases, decode-time KV selection, in-LLM
    reductions; sliding-window and KV-sharing layers (Gemma 4), linear-attention ones (Qwen3.5), M-RoPE, DeepStack."""
    model = model_for(family)
    with tokcompress.compress(model, method, ratio=0.3):
        dynamic, static = generations(model, padded_batch(family, clip, other_clip))
    assert torch.equal(dynamic, static)


@pytest.mark.parametrize("method", ["tome", "dycoke", "fastv"])  # a key bias, decode-time KV selection, in-LLM
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "gemma4"])
def test_eager_attention_with_a_static_cache(family, method, clip, other_clip):
    """Float masks: the empty slots get the dtype's minimum."""
    model = model_for(family, "eager")
    with tokcompress.compress(model, method, ratio=0.3):
        dynamic, static = generations(model, padded_batch(family, clip, other_clip))
    assert torch.equal(dynamic, static)


@pytest.mark.parametrize("method", ["tome", "dycoke", "fastv"])
def test_a_prompt_shorter_than_a_sliding_window(method, clip, other_clip):
    """Gemma 4 with a 512-token window (as its checkpoints): the kept prompt fits inside it, so a sliding layer's
    static cache hands its attention the whole window, mostly empty slots, vision blocks included."""
    model = tiny.tiny_gemma4(sliding_window=512)
    with tokcompress.compress(model, method, ratio=0.3):
        dynamic, static = generations(model, padded_batch("gemma4", clip, other_clip))
    assert torch.equal(dynamic, static)


@pytest.mark.parametrize("family", ["llava_onevision", "gemma4"])
def test_a_forward_given_a_static_cache(family, clip):
    """A plain prefill into a `StaticCache` the caller made: the logits of the default cache's."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is happening here?")
    with tokcompress.compress(model, "tome", ratio=0.3):
        expected = logits(model, inputs)
        cache = StaticCache(config=model.config.get_text_config(), max_cache_len=inputs["input_ids"].shape[1] + 4)
        static = logits(model, {**inputs, compat.CACHE_KEYWORD: cache})
    torch.testing.assert_close(static, expected)


def test_beams_with_a_static_cache(clip, other_clip):
    model = model_for("qwen2_5_vl")
    with tokcompress.compress(model, "framefusion", ratio=0.3):
        dynamic, static = generations(model, padded_batch("qwen2_5_vl", clip, other_clip), num_beams=2)
    assert torch.equal(dynamic, static)


def test_a_forward_given_masks_built_beforehand_is_refused(clip, other_clip):
    """Without the prompt's 2-D padding mask the kept tokens' masks cannot be built: the error says what works -
    also right after a refused `generate`, whose prompt's padding mask must not stand in for this call's."""
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What?")
    length = inputs["input_ids"].shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    with tokcompress.compress(model, "fastv", ratio=0.3):
        with pytest.raises(ValueError, match="speculative decoding"):
            model.generate(**padded_batch("llava_onevision", clip, other_clip), prompt_lookup_num_tokens=3,
                           max_new_tokens=3)
        with pytest.raises(ValueError, match="static cache is supported"):
            model(**{**inputs, "attention_mask": causal})
