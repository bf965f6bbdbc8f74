"""Public API: registry, knobs, the handle, and bad input failing early with nothing left patched."""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import tokcompress
from tokcompress.methods import METHODS, Compose, FastV, FrameDedup, FrameFusion, Method, TokenReduction, build_method

from .conftest import COMPRESSING, FAMILIES, generate, inputs_for, logits, model_for


def hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_registries_list_methods_and_models():
    assert set(tokcompress.list_methods()) >= {"none", "random", "uniform", "fastv", "framefusion", "dycoke"}
    assert set(tokcompress.list_models()) >= set(FAMILIES)


def test_patch_handle_stats_ratio_setter_and_unpatch(clip):
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    handle = tokcompress.patch(model, method="framefusion", ratio=0.3)
    try:
        generate(model, inputs, max_new_tokens=2)
        first = handle.stats
        assert first.method == "framefusion" and abs(first.achieved_ratio - 0.3) * first.visual_in <= 1
        assert first.compression_seconds > 0 and "framefusion" in str(first)
        handle.ratio = 0.5
        generate(model, inputs, max_new_tokens=2)
        assert abs(handle.stats.achieved_ratio - 0.5) * handle.stats.visual_in <= 1
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            handle.ratio = 0
        assert handle.ratio == 0.5
    finally:
        assert tokcompress.unpatch(model)
    assert not tokcompress.unpatch(model)
    handle.unpatch()  # idempotent


def test_method_instances_and_knobs_reach_the_method():
    model = model_for("llava_onevision")
    before = hook_count(model)
    with tokcompress.compress(model, method=FrameFusion(ratio=0.3, similarity_threshold=0.8)) as handle:
        assert handle.method == FrameFusion(ratio=0.3, similarity_threshold=0.8, num_queries=1)  # the family default
    with tokcompress.compress(model, method="fastv", ratio=0.5, layer=1, num_queries=2) as handle:
        assert handle.method == FastV(ratio=0.5, layer=1, num_queries=2)
    assert hook_count(model) == before


def test_a_method_spelt_with_its_knobs_reads_them_as_their_types():
    """The command lines' spelling (demo, benchmark): name:knob=value[:knob=value], values read as each knob's
    type; malformed, repeated or ratio knobs are refused naming the spelling."""
    assert tokcompress.methods.method_spec("vidtldr:merge_schedule=0.2,0.1:window=3") == (
        "vidtldr", {"merge_schedule": "0.2,0.1", "window": 3})
    assert tokcompress.methods.method_spec("framededup+fastv") == ("framededup+fastv", {})
    for spec in ("fastv:layer", "fastv:layer=2:layer=3", "fastv:ratio=0.5", "fastv:=2"):
        with pytest.raises(ValueError, match="name:knob=value"):
            tokcompress.methods.method_spec(spec)


def test_compress_context_manager_unpatches_on_error(clip):
    model = model_for("qwen2_5_vl")
    before = hook_count(model)
    with pytest.raises(RuntimeError, match="boom"), tokcompress.compress(model, "uniform", ratio=0.3):
        assert hook_count(model) > before
        raise RuntimeError("boom")
    assert hook_count(model) == before


def test_a_compress_block_inside_a_patch_gives_the_outer_patch_back(clip):
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    bare = hook_count(model)
    outer = tokcompress.patch(model, "fastv", ratio=0.3)
    hooks = hook_count(model)
    with tokcompress.compress(model, "uniform", ratio=0.5) as inner:
        assert not outer.patched and inner.patched
    assert outer.patched and not inner.patched and hook_count(model) == hooks
    logits(model, inputs)
    assert outer.stats.method == "fastv" and abs(outer.stats.achieved_ratio - 0.3) * outer.stats.visual_in <= 1
    with tokcompress.compress(model, "uniform", ratio=0.5):
        newest = tokcompress.patch(model, "random", ratio=0.5)  # patched anew inside: that one stays
    assert newest.patched and not outer.patched
    outer = tokcompress.patch(model, "fastv", ratio=0.3)
    with tokcompress.compress(model, "uniform", ratio=0.5):
        tokcompress.unpatch(model)  # unpatched inside: it stays so
    assert not outer.patched and hook_count(model) == bare
    outer = tokcompress.patch(model, "fastv", ratio=0.3)
    with pytest.raises(ValueError, match="unknown method"), tokcompress.compress(model, "nope"):
        pass
    assert outer.patched  # a refused block leaves the patch in place
    outer.unpatch()


def test_patching_twice_replaces_instead_of_stacking(clip):
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    first = tokcompress.patch(model, "random", ratio=0.3)
    hooks = hook_count(model)
    second = tokcompress.patch(model, "uniform", ratio=0.5)
    assert hook_count(model) == hooks and not first.patched and second.patched
    logits(model, inputs)
    assert second.stats.method == "uniform" and first.stats.method == "random"
    second.unpatch()


def test_a_patch_of_the_inner_multimodal_model_and_one_of_the_model_are_one_patch(clip):
    """`model.model` is what the engine hooks: patching it and the model around it (either order) replaces, never
    stacks, and either one unpatches it."""
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    reference, unpatched_hooks = logits(model, inputs), hook_count(model)
    for first, second in ((model, model.model), (model.model, model)):
        earlier = tokcompress.patch(first, "random", ratio=0.3)
        hooks = hook_count(model)
        later = tokcompress.patch(second, "uniform", ratio=0.5)
        assert hook_count(model) == hooks and not earlier.patched and later.patched
        logits(model, inputs)
        assert later.stats.method == "uniform" and later.stats.samples[0].achieved_ratio < 0.6
        assert tokcompress.unpatch(first) and hook_count(model) == unpatched_hooks
        torch.testing.assert_close(logits(model, inputs), reference, rtol=0, atol=0)


def test_a_patch_inside_the_model_is_the_models_patch_for_compress_and_a_refusal(clip):
    """A `compress` block on the model gives back a patch of `model.model` it replaced; a handle a patch of the
    inner model replaced says so; a patch refused while attaching (a setting of the model's) leaves the earlier
    patch in place."""
    model = model_for("llava_onevision")
    inner = tokcompress.patch(model.model, "fastv", ratio=0.3)
    with tokcompress.compress(model, "uniform", ratio=0.5):
        assert not inner.patched
    assert inner.patched
    outer = tokcompress.patch(model, "random", ratio=0.3)
    assert not inner.patched and outer.patched
    hooks = hook_count(model)
    model.config.vision_feature_layer = [-2, -1]
    try:
        with pytest.raises(ValueError, match="vision_feature_layer"):
            tokcompress.patch(model, "visionzip", ratio=0.3)
    finally:
        model.config.vision_feature_layer = -1
    assert outer.patched and hook_count(model) == hooks
    later = tokcompress.patch(model.model, "uniform", ratio=0.5)
    with pytest.raises(RuntimeError, match="replaced by a later one"):
        outer.ratio = 0.4
    with pytest.warns(UserWarning, match="replaced by a later one"):
        outer.unpatch()
    later.unpatch()


def test_a_generate_the_caller_wrapped_is_chained_to_and_given_back(clip):
    """The patch stands in for generate: a wrapper the caller put on the instance (a timing one, as the lmms-eval
    plugin's) still runs under it, and is the model's generate again after unpatching; a patch of `model.model`,
    which cannot generate, adds no generate to it."""
    model = model_for("llava_onevision")
    calls, stock = [], model.generate

    def timed(*args, **kwargs):
        calls.append(1)
        return stock(*args, **kwargs)

    model.generate = timed
    try:
        with tokcompress.compress(model, "fastv", ratio=0.3) as handle:
            generate(model, inputs_for("llava_onevision", clip, "What?"), max_new_tokens=2)
        assert calls == [1] and model.generate is timed and handle.stats.samples
    finally:
        del model.generate
    with tokcompress.compress(model.model, "fastv", ratio=0.3):
        assert "generate" not in vars(model.model)


def test_register_method_makes_a_custom_method_available(clip):
    @dataclass
    class KeepFirst(Method):
        name = "keep_first_test"
        stages = ("pre_llm",)

        def reduce_pre_llm(self, features, layout, budget):
            return TokenReduction.prune(torch.arange(round(self.ratio * layout.num_tokens)))

    tokcompress.register_method(KeepFirst)
    try:
        with pytest.raises(ValueError, match="already registered"):
            tokcompress.register_method(KeepFirst, name="fastv")
        for spelt_as_a_composition in ("keep+first", "keep_first@encoder"):
            with pytest.raises(ValueError, match="cannot hold"):
                tokcompress.register_method(KeepFirst, name=spelt_as_a_composition)
        model = model_for("qwen2_5_vl")
        with tokcompress.compress(model, "keep_first_test", ratio=0.25) as handle:
            logits(model, inputs_for("qwen2_5_vl", clip, "Q?"))
            kept = handle.stats.samples[0].kept_positions
        first_visual = int((inputs_for("qwen2_5_vl", clip, "Q?")["input_ids"][0] == 258).nonzero()[0])
        assert kept == list(range(first_visual, first_visual + 16))
    finally:
        METHODS.pop("keep_first_test")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"method": "fastvv"}, ValueError, f"known methods: {', '.join(tokcompress.list_methods())}"),
        ({"method": "FrameFusion"}, ValueError, "did you mean 'framefusion'"),
        ({"method": "framefusoin"}, ValueError, "did you mean 'framefusion'"),
        ({"method": "framededup+framefusion", "threshold": 0.9}, TypeError, r"method=\[FrameDedup\(threshold=0.9\)"),
        ({"method": "fastv", "ratio": 0}, ValueError, r"\(0, 1\]"),
        ({"method": "fastv", "ratio": 1.5}, ValueError, r"\(0, 1\]"),
        ({"method": "fastv", "ratio": -0.2}, ValueError, r"\(0, 1\]"),
        ({"method": "fastv", "ratio": math.nan}, ValueError, r"\(0, 1\]"),
        ({"method": "fastv", "ratio": "0.3"}, TypeError, "must be a number"),
        ({"method": "fastv", "ratio": True}, TypeError, "must be a number"),
        ({"method": "fastv", "ratio": 0.3, "layr": 2}, TypeError, "no knob 'layr'; its knobs: layer, num_queries"),
        ({"method": "fastv", "ratio": 0.3, "layer": 9}, ValueError, "has 4 layers"),
        ({"method": "fastv", "ratio": 0.1, "layer": 2}, ValueError, "ratio must be above 0.500"),
        ({"method": "fastv", "ratio": 0.5, "layer": 2}, ValueError, "spend the whole budget"),
        ({"method": "dycoke", "decode_layer": 4}, ValueError, "has 4 layers"),
        ({"method": "framefusion", "similarity_threshold": 2.0}, ValueError, r"\[-1, 1\]"),
        ({"method": FastV(ratio=0.3), "layer": 1}, TypeError, "set them on the instance"),
        ({"method": 3}, TypeError, "Method class or instance"),
        ({"method": Compose}, TypeError, r"Compose wraps other methods: pass an instance"),
    ],
)
def test_bad_input_fails_early_and_leaves_the_model_untouched(kwargs, error, message):
    model = model_for("llava_onevision")
    before = hook_count(model)
    with pytest.raises(error, match=message):
        tokcompress.patch(model, **kwargs)
    assert hook_count(model) == before and not hasattr(model, "_tokcompress_handle")


def test_unsupported_model_lists_the_supported_families():
    config = Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
    )
    model = Qwen2ForCausalLM(config)
    before = hook_count(model)
    with pytest.raises(
        ValueError, match=f"model_type 'qwen2'.*supported families: {', '.join(tokcompress.list_models())}$"
    ):
        tokcompress.patch(model, "fastv", ratio=0.3)
    assert hook_count(model) == before


@pytest.mark.parametrize("model", ["Qwen/Qwen2.5-VL-7B-Instruct", torch.nn.Linear(2, 2)])
def test_anything_but_a_loaded_model_is_refused_naming_what_is_expected(model):
    with pytest.raises(TypeError, match="takes a loaded Hugging Face model"):
        tokcompress.patch(model, "fastv", ratio=0.3)


def test_every_registered_method_compresses_at_its_own_default_ratio():
    """Patched by name alone, each method meets its own default (below 1), not the identity."""
    assert {name: build_method(name).ratio < 1 for name in COMPRESSING} == dict.fromkeys(COMPRESSING, True)


def test_compose_takes_its_methods_as_one_list_too():
    composed = Compose([FrameDedup(), FrameFusion(ratio=0.3)])
    assert composed.name == "framededup+framefusion" and composed.ratio == 0.3


def test_refused_repatch_keeps_the_old_patch():
    model = model_for("llava_onevision")
    handle = tokcompress.patch(model, "random", ratio=0.3)
    with pytest.raises(ValueError):
        tokcompress.patch(model, "nope")
    assert handle.patched
    handle.unpatch()


def test_text_only_prompt_passes_through_untouched(family):
    model = model_for(family)
    ids = torch.tensor([list(b"A question with no video at all?")])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:  # Qwen-VL reads token types beside the ids
        inputs["mm_token_type_ids"] = torch.zeros_like(ids)
    reference_logits, reference_tokens = logits(model, inputs), generate(model, inputs)
    with tokcompress.compress(model, "framefusion", ratio=0.2) as handle:
        assert torch.equal(logits(model, inputs), reference_logits)
        assert torch.equal(generate(model, inputs), reference_tokens)
        assert "no video tokens" in handle.stats.note


@pytest.mark.parametrize(
    ("knobs", "error", "message"),
    [
        ({"method": "fastv", "layer": -1}, ValueError, "fastv layer must be an int ≥ 0 or None, got -1"),
        ({"method": "fastv", "num_queries": 0}, ValueError, "fastv num_queries must be an int ≥ 1"),
        ({"method": "fastv", "scoring": "last"}, ValueError, "fastv scoring must be one of 'previous_layer'"),
        ({"method": "framefusion", "num_queries": True}, TypeError, r"num_queries must be an int or None, got True"),
        ({"method": "dycoke", "decode_layer": 1.5}, TypeError, r"decode_layer must be an int or None, got 1.5"),
        ({"method": "dycoke", "decode_keep": 0}, ValueError, r"dycoke decode_keep must lie in \(0, 1\]"),
        ({"method": "dycoke", "decode_keep": None}, TypeError, "dycoke decode_keep must be a number, got None"),
        ({"method": "framededup", "threshold": float("nan")}, ValueError, r"threshold must lie in \[-1, 1\], got nan"),
        ({"method": "visionzip", "contextual_share": 1.0}, ValueError, r"contextual_share must lie in \[0, 1\), got 1"),
        ({"method": "sttm", "temporal_threshold": -1.5}, ValueError, r"sttm temporal_threshold must lie in \[-1, 1\]"),
        ({"method": "framefusion", "similarity_threshold": "0.5"}, TypeError, "must be a number or None, got '0.5'"),
        ({"method": "tome", "window": 1}, ValueError, "tome window must be an int ≥ 2"),
        ({"method": "tome", "proportional_attention": 1}, TypeError, "must be True or False, got 1"),
        ({"method": "random", "seed": "abc"}, TypeError, "random seed must be an int, got 'abc'"),
        ({"method": "random", "seed": None}, TypeError, "random seed must be an int, got None"),
        ({"method": "random", "seed": 1.5}, TypeError, "random seed must be an int, got 1.5"),
    ],
)
def test_every_knob_is_validated_at_patch_time(knobs, error, message):
    model = model_for("llava_onevision")
    before = hook_count(model)
    with pytest.raises(error, match=message):
        tokcompress.patch(model, ratio=0.5, **knobs)
    assert hook_count(model) == before


def test_numpy_numbers_are_accepted_and_none_refuses_a_ratio():
    model = model_for("llava_onevision")
    for ratio in (np.float32(0.25), np.float64(0.25), np.int64(1)):
        with tokcompress.compress(model, "random", ratio=ratio, seed=np.int32(3)) as handle:
            assert handle.ratio == pytest.approx(float(ratio)) and handle.method.seed == 3
    with pytest.raises(ValueError, match="method 'none' keeps every token, so it takes no ratio"):
        tokcompress.patch(model, "none", ratio=0.3)
    with pytest.raises(ValueError, match=r"name a method to compress with .*'none' is patch's default"):
        tokcompress.patch(model, ratio=0.3)  # the method forgotten
    tokcompress.patch(model, "none", ratio=1).unpatch()


def test_an_unpatched_handle_refuses_a_new_ratio():
    handle = tokcompress.patch(model_for("llava_onevision"), "fastv", ratio=0.5)
    handle.unpatch()
    with pytest.raises(RuntimeError, match="unpatched"):
        handle.ratio = 0.3
    first = tokcompress.patch(model_for("llava_onevision"), "fastv", ratio=0.5)
    with tokcompress.patch(model_for("llava_onevision"), "tome", ratio=0.5) as later:
        with pytest.raises(RuntimeError, match=r"replaced by a later one \(tome\)"):
            first.ratio = 0.3
        with pytest.warns(UserWarning, match=r"\(fastv\) was replaced by a later one \(tome\), which stays"):
            first.unpatch()
        assert later.patched


def test_a_compress_block_that_patched_anew_leaves_that_patch_without_a_warning():
    model = model_for("llava_onevision")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tokcompress.compress(model, "fastv", ratio=0.5):
            inner = tokcompress.patch(model, "tome", ratio=0.5)
    assert inner.patched
    inner.unpatch()


def test_videos_of_different_lengths_in_one_frame_batch_are_refused_with_the_families_that_pack_them(clip):
    with pytest.raises(ValueError, match=r"need the same frame count \(got \[8, 4\]\).*qwen2_5_vl"):
        inputs_for("llava_onevision", [clip, clip[:4]], ["What?", "Who?"])
