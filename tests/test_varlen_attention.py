"""Packed vision attention: one varlen call (or one sdpa call per window length) in place of stock sdpa's loop over a
packed tower's windows, with the key bias of tokens folded inside the tower riding along - the same math."""

from __future__ import annotations

import pytest
import torch

import tokcompress
from tokcompress.adapters import ADAPTERS, adapter_for

from .conftest import FAMILIES, inputs_for, model_for, multimodal, video_encoder_inputs


# windows (Qwen2.5-VL) / frames (Qwen3-VL, GLM-4.1V, VideoLLaMA3) / units and 2×2 windows (MiniCPM-V), each looped
# over by stock sdpa
@pytest.mark.parametrize("family", [f for f in FAMILIES if ADAPTERS[f].packed_vision_attention])
def test_packed_vision_attention_matches_the_stock_window_loop(family, clip, monkeypatch):
    """Forced on (the CPU has no fused varlen kernel: one sdpa call per window length stands in), Qwen's tower
    gives the stock features; unpatching restores the stock attention."""
    from tokcompress.engine import compat, hooks

    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    tower_config = adapter_for(model).vision_tower.config
    stock_implementation = tower_config._attn_implementation
    encode = video_encoder_inputs(inputs)
    with torch.no_grad():
        stock = torch.cat(multimodal(model).get_video_features(**encode, return_dict=True).pooler_output)
        with tokcompress.compress(model, "none"):
            assert tower_config._attn_implementation == stock_implementation  # CPU, fp32: the stock path
        monkeypatch.setattr(hooks, "varlen_available", lambda tensor: True)
        with tokcompress.compress(model, "none"):
            assert tower_config._attn_implementation == compat.VARLEN_ATTENTION
            packed = torch.cat(multimodal(model).get_video_features(**encode, return_dict=True).pooler_output)
        with tokcompress.compress(model, "none", varlen_vision=False):
            assert tower_config._attn_implementation == stock_implementation
    assert tower_config._attn_implementation == stock_implementation
    torch.testing.assert_close(packed, stock, rtol=1e-5, atol=1e-5)


def block_diagonal_attention(query, key, value, boundaries, scale, key_bias=None):
    """The definition, in fp32: one mask over every row, keys of other sequences at -inf, the bias on the rest."""
    sequence = torch.searchsorted(boundaries[1:], torch.arange(len(query), device=query.device), right=True)
    mask = torch.where(sequence[:, None] == sequence[None, :], 0.0, float("-inf"))
    if key_bias is not None:
        mask = mask + key_bias.float()[None, :]
    q, k, v = (states.float().transpose(0, 1) for states in (query, key, value))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).transpose(0, 1)


def packed_batch(dtype=torch.float32, width=8):
    """Five sequences, lengths 4, 1, 4, 6, 1: some share a length, not next to each other."""
    query, key, value = (torch.randn(16, 2, width, generator=torch.Generator().manual_seed(s)).to(dtype)
                         for s in range(3))
    key_bias = torch.rand(16, generator=torch.Generator().manual_seed(3)) * 2  # log-sizes up to e²
    return query, key, value, torch.tensor([0, 4, 5, 9, 15, 16]), key_bias


def test_the_ideal_encodes_with_the_vision_attention_a_patch_runs(clip, monkeypatch):
    """Where a patch runs the fused varlen kernel for a packed tower (a GPU in half precision: forced here), the ideal
    it is measured against encodes with it too - `measured - ideal` is then compression's cost, not the tower's -
    and the stock model's own timing (`as_patched=False`) keeps the stock loop; the config is the stock one after."""
    from tokcompress.engine import compat, hooks
    from tokcompress.ideal import ideal_inputs

    model = model_for("qwen2_5_vl")
    inputs = inputs_for("qwen2_5_vl", clip, "What is moving?")
    tower = adapter_for(model).vision_tower
    stock_implementation = tower.config._attn_implementation
    seen = []
    hook = tower.register_forward_pre_hook(lambda module, args: seen.append(tower.config._attn_implementation))
    monkeypatch.setattr(hooks, "varlen_available", lambda tensor: True)
    try:
        with torch.no_grad():
            for as_patched in (True, False):
                encode, _ = ideal_inputs(model, inputs, 10, as_patched=as_patched)
                encode()
    finally:
        hook.remove()
    assert seen == [compat.VARLEN_ATTENTION, stock_implementation]
    assert tower.config._attn_implementation == stock_implementation


@pytest.mark.parametrize("biased", [False, True])
def test_varlen_attention_off_the_gpu_is_attention_inside_each_sequence(biased):
    from tokcompress.ops.varlen import varlen_attention

    query, key, value, boundaries, key_bias = packed_batch()
    key_bias = key_bias if biased else None
    out = varlen_attention(query, key, value, boundaries, 6, 8**-0.5, key_bias)
    torch.testing.assert_close(out, block_diagonal_attention(query, key, value, boundaries, 8**-0.5, key_bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("biased", [False, True])
def test_attention_by_sequence_length_is_bitwise_the_call_per_sequence(dtype, biased):
    """What stock sdpa towers run - one call per window, on views of the packed heads - equals ours bit for bit:
    the sequences of a length batched into one call."""
    from tokcompress.ops.varlen import segment_attention

    query, key, value, boundaries, key_bias = packed_batch(dtype, 80)
    key_bias = key_bias if biased else None
    heads = [states.transpose(0, 1)[None] for states in (query, key, value)]  # (1, heads, total, d), as a tower's
    per_sequence = torch.cat([
        torch.nn.functional.scaled_dot_product_attention(
            *(states[:, :, start:end] for states in heads), scale=80**-0.5,
            attn_mask=None if key_bias is None else key_bias[start:end].to(dtype).view(1, 1, 1, -1),
        )[0].transpose(0, 1)
        for start, end in zip(boundaries[:-1].tolist(), boundaries[1:].tolist())
    ])
    assert torch.equal(segment_attention(query, key, value, boundaries, 80**-0.5, key_bias), per_sequence)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize("width", [8, 80])  # Qwen-VL's towers: 80 per head
def test_a_key_bias_riding_in_an_extra_head_dimension_is_the_biased_attention(dtype, tolerance, width):
    """What the fused varlen kernel (no mask) computes on the widened heads: q gains a 1, k its bias / scale;
    checked with unmasked attention per sequence, as the kernel runs it."""
    from tokcompress.ops.varlen import biased_by_extra_dimension

    query, key, value, boundaries, key_bias = packed_batch(dtype, width)
    scale = width**-0.5
    widened = biased_by_extra_dimension(query, key, value, key_bias, scale)
    assert widened[0].shape[-1] % 8 == 0 and widened[0].shape[-1] > width
    out = torch.cat([
        torch.nn.functional.scaled_dot_product_attention(
            *(states[start:end].float().transpose(0, 1) for states in widened), scale=scale
        ).transpose(0, 1)
        for start, end in zip(boundaries[:-1].tolist(), boundaries[1:].tolist())
    ])
    assert (out[..., width:] == 0).all()
    expected = block_diagonal_attention(query, key, value, boundaries, scale, key_bias)
    torch.testing.assert_close(out[..., :width], expected, rtol=tolerance, atol=tolerance)


def test_proportional_attention_counts_a_folded_token_as_the_copies_it_stands_for():
    """Three identical tokens folded into one of size 3 (log 3 on its key): every token's output is as before."""
    from tokcompress.ops.varlen import varlen_attention

    query, key, value, _, _ = packed_batch()
    copies = torch.tensor([0, 0, 0, 1, 2])  # rows 0-2 the same token
    unfolded = varlen_attention(query[copies], key[copies], value[copies], torch.tensor([0, 5]), 5, 8**-0.5)
    folded = varlen_attention(query[:3], key[:3], value[:3], torch.tensor([0, 3]), 3, 8**-0.5,
                              torch.tensor([3.0, 1.0, 1.0]).log())
    torch.testing.assert_close(folded[copies], unfolded)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused varlen kernel runs on a GPU")
@pytest.mark.parametrize("biased", [False, True])
def test_the_fused_varlen_kernel_is_the_attention_inside_each_sequence(biased):
    from tokcompress.ops.varlen import varlen_attention, varlen_available

    query, key, value, boundaries, key_bias = (t.cuda() for t in packed_batch(torch.bfloat16, 80))
    assert varlen_available(query)
    key_bias = key_bias if biased else None
    out = varlen_attention(query, key, value, boundaries, 6, 80**-0.5, key_bias)
    expected = block_diagonal_attention(query, key, value, boundaries, 80**-0.5, key_bias)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
