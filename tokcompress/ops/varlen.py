"""Attention inside packed sequences: one call for every window of a vision tower instead of one per window."""

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
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v within each sequence of a packed batch.

    query / key / value: (total, heads, d), the sequences back to back; cu_seqlens: (sequences + 1,) their
    boundaries. Returns (total, heads, d). torch's fused varlen kernel where `varlen_available`, else the
    reference (a block-diagonal mask: O(total²) memory, for checks and small inputs).
    """
    if varlen_available(query):
        from torch.nn.attention.varlen import varlen_attn

        cu_seqlens = cu_seqlens.to(torch.int32)
        return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale)
    return varlen_attention_reference(query, key, value, cu_seqlens, scale)


def varlen_attention_reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> torch.Tensor:
    positions = torch.arange(query.shape[0], device=query.device)
    sequence = torch.searchsorted(cu_seqlens[1:].to(query.device), positions, right=True)
    same_sequence = sequence[:, None] == sequence[None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), attn_mask=same_sequence, scale=scale
    )
    return out.transpose(0, 1)
