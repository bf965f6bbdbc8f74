"""dots3 Note: in its indexed layers a DSA indexer picks each query's keys - among the tokens that remain, and while
decoding attends to selected visual KV entries, among those. Here the indexer picks 8 keys a query, so it binds on
every prompt. (The contract suite runs on its tiny model too, whose indexer picks more keys than its prompts hold:
`tiny.tiny_dots3_note` says why.)"""

from __future__ import annotations

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine import compat

from .conftest import logits
from .test_equivalence import assert_logits_of_the_llm_fed_only

TOP_K = 8


@pytest.fixture(scope="module")
def model():
    return tiny.tiny_dots3_note(index_topk=TOP_K)


def test_ratio_1_is_the_stock_model_where_the_indexer_binds(model, clip):
    inputs = tiny.video_inputs(model, clip, "What is moving?")
    with torch.no_grad():
        stock = logits(model, inputs)
        stock_tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        with tokcompress.compress(model, "none"):
            torch.testing.assert_close(logits(model, inputs), stock, rtol=0, atol=0)
            assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), stock_tokens)


@pytest.mark.parametrize("method", ["uniform", "framededup"])
def test_the_indexer_picks_among_the_kept_tokens_as_in_the_llm_fed_only_those(model, clip, method):
    """Each step's logits are the LLM's on the text and the kept visual tokens at their original positions: every
    indexed layer scored and cached only those."""
    inputs = tiny.video_inputs(model, clip, "What is moving?")
    with tokcompress.compress(model, method, ratio=0.3) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        kept = handle.stats.samples[0].kept_positions
    assert_logits_of_the_llm_fed_only(model, inputs, kept, out.logits)


def test_while_decoding_the_indexer_picks_among_the_selected_visual_entries(model, clip):
    """DyCoke's decoding steps attend to a fifth of the visual KV from layer 3 (indexed) on: that layer's indexer
    scores the same entries (its own cached keys, gathered alike), so its picks index the keys the attention reads."""
    inputs = tiny.video_inputs(model, clip, "What is moving?")
    layer = adapter_for(model).layers[3]
    assert compat.layer_type(model.config.text_config, 3) == compat.INDEXED_LAYER
    steps = []

    def record(module, args, picks):  # (hidden states, query latent, rotary tables, mask)
        if args[0].shape[1] == 1:  # a decoding step
            steps.append((args[3].shape[-1], int(picks.max()), picks.shape[-1]))

    hook = layer.self_attn.indexer.register_forward_hook(record)
    try:
        with tokcompress.compress(model, "dycoke", ratio=0.5, decode_keep=0.2) as handle, torch.no_grad():
            model.generate(**inputs, max_new_tokens=4, do_sample=False)
    finally:
        hook.remove()
    kept_visual = handle.stats.samples[0].visual_out
    prompt = inputs["input_ids"].shape[1] - handle.stats.samples[0].visual_in + kept_visual
    assert len(steps) == 3
    for step, (keys, last_pick, picks) in enumerate(steps, start=1):
        assert keys < prompt + step  # fewer than the cache holds: the selected visual entries and every other
        assert last_pick < keys and picks == TOP_K  # it binds, among those


def test_proportional_attentions_key_bias_reaches_the_softmax_not_the_indexers_ranking(model, clip):
    """ToMe's merged keys get + log(size) in the mask every attention reads; the indexer, which adds that mask to
    its own key scores, gets it without the bias (it ranks keys as in the LLM fed only the merged tokens)."""
    inputs = tiny.video_inputs(model, clip, "What is moving?")
    attention = adapter_for(model).layers[0].self_attn
    seen = {}

    def record(name, position):
        def hook(module, args, kwargs):
            seen.setdefault(name, kwargs.get("attention_mask", args[position] if len(args) > position else None))
        return hook

    with tokcompress.compress(model, "tome", ratio=0.3), torch.no_grad():  # after the engine's hooks
        hooks = [attention.register_forward_pre_hook(record("attention", 2), with_kwargs=True),
                 attention.indexer.register_forward_pre_hook(record("indexer", 3), with_kwargs=True)]
        try:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        finally:
            for hook in hooks:
                hook.remove()
    biased = seen["attention"][:, 0]
    assert biased.max() > 0.69  # log 2: a token standing for two or more
    assert torch.equal(seen["indexer"], biased.clamp_max(0))
