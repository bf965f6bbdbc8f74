"""Attention probabilities of a few query rows, without materialising the full attention matrix."""

from __future__ import annotations

import torch

from .dispatch import kernel_for


def few_query_attention(
    queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None = None, head_mean: bool = True
) -> torch.Tensor:
    """softmax(q·kᵀ/√d) for a handful of query rows, averaged over heads, grouped-query aware.

    queries: (Hq, Q, d) rotary-embedded queries; keys: (Hkv, K, d) with Hq a multiple of Hkv;
    key_mask: optional (Q, K) or (K,) bool, True where the query may attend.
    Returns (Q, K) fp32 probabilities (each row sums to 1 over the allowed keys), or (Hq, Q, K) per head
    without `head_mean`. Costs O(Hq·Q·K·d), the rows FastV / FrameFusion / DyCoke need, beside whatever
    attention kernel the model runs.
    """
    kernel = kernel_for("few_query_attention", queries, keys.shape[1]) if head_mean else None
    if kernel:
        return kernel(queries, keys, key_mask)
    return few_query_attention_reference(queries, keys, key_mask, head_mean)


def few_query_attention_reference(
    queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None = None, head_mean: bool = True
) -> torch.Tensor:
    num_heads, num_queries, head_dim = queries.shape
    num_kv_heads = keys.shape[0]
    grouped = queries.float().reshape(num_kv_heads, num_heads // num_kv_heads * num_queries, head_dim)
    logits = grouped @ keys.float().transpose(-1, -2) * head_dim**-0.5  # (Hkv, G·Q, K)
    logits = logits.reshape(num_heads, num_queries, -1)
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask.expand(num_queries, -1), float("-inf"))
    probabilities = logits.softmax(dim=-1)
    return probabilities.mean(dim=0) if head_mean else probabilities
