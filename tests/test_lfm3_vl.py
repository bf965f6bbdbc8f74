"""LFM3-VL: what its hybrid decoder and convolutional tower need beyond the contract suite."""

from __future__ import annotations

import torch
from transformers.models.lfm3.modeling_lfm3 import apply_rotary_pos_emb, repeat_kv

import tokcompress
from tokcompress import tiny

from .conftest import inputs_for, logits, model_for


def test_a_convolution_layer_is_scored_by_the_next_attention_layer_with_its_own_rotary_tables(clip):
    """FastV at layer 3 scores at layer 2, a short convolution (no attention map): the last token's attention at
    layer 3 - the next attention layer, a global one - computed from the hidden states entering layer 2, its q/k
    normed per head and rotated by the global layers' tables, as that layer would; the top of it stays."""
    model = model_for("lfm3_vl")
    inputs = inputs_for("lfm3_vl", clip, "What is moving?")
    language_model = model.model.language_model
    assert [layer.is_attention_layer for layer in language_model.layers] == [False, True, False, True]
    seen = []
    hook = language_model.layers[2].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0], kwargs["position_ids"])), with_kwargs=True
    )
    try:
        with torch.no_grad():
            logits(model, inputs)
    finally:
        hook.remove()
    ((hidden, positions),) = seen
    layer = language_model.layers[3]
    attention, normed = layer.self_attn, layer.operator_norm(hidden)
    with torch.no_grad():
        queries = attention.q_norm(attention.q_proj(normed).unflatten(-1, (-1, attention.head_dim))).transpose(1, 2)
        keys = attention.k_norm(attention.k_proj(normed).unflatten(-1, (-1, attention.head_dim))).transpose(1, 2)
        cos, sin = language_model.rotary_emb(hidden, positions, "full_attention")
        queries, keys = apply_rotary_pos_emb(queries, keys, cos, sin)
        keys = repeat_kv(keys, attention.num_key_value_groups)
        row = (queries[:, :, -1:] @ keys.transpose(-1, -2) * attention.scaling).softmax(-1)[0, :, 0].mean(dim=0)
    visual = (inputs["input_ids"][0] == tiny.VIDEO).nonzero().squeeze(1)
    with tokcompress.compress(model, "fastv", ratio=0.8, layer=3) as handle:
        logits(model, inputs)
        (sample,) = handle.stats.samples
    top = visual[row[visual].argsort(descending=True)[: sample.visual_out]]
    assert sample.kept_positions == sorted(top.tolist())
