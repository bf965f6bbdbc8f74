"""Attention inside packed sequences: one call for every window of a vision tower instead of one per window,
optionally with a per-key bias on the logits (proportional attention for tokens folded inside the tower)."""

from __future__ import annotations

import importlib.util

import torch


def varlen_available(tensor: torch.Tensor) -> bool:
    """Whether `varlen_attention` runs its fused kernel here (CUDA, half precision, torch's varlen attention)."""
    return (
        tensor.is_cuda
        and tensor.dtype in (torch.float16, torch.bfloat16)
        and importlib.util.find_spec("torch.nn.attention.varlen") is not None
    )


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None,
    key_bias: torch.Tensor | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale + key_bias)·v within each sequence of a packed batch.

    query / key / value: (total, heads, d), the sequences back to back; cu_seqlens: (sequences + 1,) their
    boundaries; scale: None for 1/√d; key_bias: (total,) added to every logit of each key (log of a folded
    token's size), or None.
    Returns (total, heads, d). torch's fused varlen kernel where `fused` and `varlen_available` (a bias rides in
    an extra head dimension, as the kernel takes no mask), else `segment_attention`.
    """
    if not (fused and varlen_available(query)):
        return segment_attention(query, key, value, cu_seqlens, scale, key_bias)
    from torch.nn.attention.varlen import varlen_attn

    width = query.shape[-1]
    scale = width**-0.5 if scale is None else scale  # of the real heads, not the widened ones
    if key_bias is not None:
        query, key, value = biased_by_extra_dimension(query, key, value, key_bias, scale)
    cu_seqlens = cu_seqlens.to(torch.int32)
    out = varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale)
    return out[..., :width]


def biased_by_extra_dimension(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_bias: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q', k', v') with head dimension d rounded up past d to a multiple of 8 (fused kernels' granularity), such
    that q'·k'ᵀ·scale = q·kᵀ·scale + key_bias[key] and softmax(·)·v' = [softmax(·)·v, 0]: q gains a 1, k gains
    key_bias / scale, the rest zeros. In half precision the bias is rounded to the dtype (relative 2⁻⁸)."""
    rows, heads, width = query.shape
    padded = (width // 8 + 1) * 8
    extra_query = query.new_zeros(rows, heads, padded - width)
    extra_query[..., 0] = 1
    extra_key = key.new_zeros(key.shape[0], key.shape[1], padded - width)
    extra_key[..., 0] = (key_bias.float() / scale).to(key.dtype)[:, None]
    extra_value = value.new_zeros(value.shape[0], value.shape[1], padded - width)
    return torch.cat([query, extra_query], -1), torch.cat([key, extra_key], -1), torch.cat([value, extra_value], -1)


def segment_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`varlen_attention` as one sdpa call per sequence length: the sequences of a length gathered into a batch
    (a tower's windows mostly share one; MiniCPM-V's merger has thousands of 4-token ones). The same kernel on
    the same rows as stock sdpa's call per sequence - bitwise on the CPU - and the reference for the fused path.
    Same arguments; one host sync for the boundaries."""
    bounds = cu_seqlens.tolist()
    starts = torch.tensor(bounds[:-1])
    lengths = torch.tensor(bounds[1:]) - starts
    out = torch.empty_like(query)
    for length in lengths.unique().tolist():
        rows = (starts[lengths == length, None] + torch.arange(length)).flatten().to(query.device)
        q, k, v = (states[rows].unflatten(0, (-1, length)).transpose(1, 2) for states in (query, key, value))
        bias = None if key_bias is None else key_bias[rows].to(q.dtype).view(-1, 1, 1, length)
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        out[rows] = attended.transpose(1, 2).flatten(0, 1)
    return out
