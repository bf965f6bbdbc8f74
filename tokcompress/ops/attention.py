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


def attention_received(queries: torch.Tensor, keys: torch.Tensor, from_first: bool = False, chunk: int = 256):
    """How much attention each token of a sequence gets in one layer: softmax(q·kᵀ/√d) averaged over heads and
    either over every query row (towers without a CLS token) or taken from row 0 (the CLS token's view).

    queries, keys: (B, H, n, d) for B sequences of n tokens → (B, n) fp32. Query rows go `chunk` at a time,
    so memory stays O(B·H·chunk·n) - VisionZip's cue from a tower's own q/k, with its attention left fused.
    """
    scale = queries.shape[-1] ** -0.5
    keys = keys.float().transpose(-1, -2)
    if from_first:
        return (queries[:, :, :1].float() @ keys * scale).softmax(dim=-1)[:, :, 0].mean(dim=1)
    received = torch.zeros(keys.shape[0], keys.shape[1], keys.shape[-1], device=keys.device)
    for start in range(0, queries.shape[2], chunk):
        received += (queries[:, :, start : start + chunk].float() @ keys * scale).softmax(dim=-1).sum(dim=2)
    return received.mean(dim=1) / queries.shape[2]


def packed_attention_received(
    queries: torch.Tensor, keys: torch.Tensor, cu_seqlens: torch.Tensor, from_first: bool = False
) -> torch.Tensor:
    """`attention_received` in a packed tower call: (heads, rows, d) queries and keys whose attention runs inside
    each sequence `cu_seqlens` bounds (a frame unit, a window, a chunk) → (rows,) fp32."""
    bounds = cu_seqlens.tolist()
    return torch.cat([
        attention_received(queries[None, :, start:end], keys[None, :, start:end], from_first)[0]
        for start, end in zip(bounds[:-1], bounds[1:])
    ])


def global_query_attention(queries: torch.Tensor, keys: torch.Tensor, from_first: bool = False) -> torch.Tensor:
    """FlowCut's relation: the attention each token of a sequence gets from one global query - the mean of the
    queries (towers without a CLS token) or the first token's (a CLS) -, softmax(q̄·kᵀ/√d) averaged over heads.

    queries, keys: (B, H, n, d) for B sequences of n tokens → (B, n) fp32 (each row sums to 1).
    """
    query = queries[:, :, :1] if from_first else queries.float().mean(dim=2, keepdim=True)
    logits = query.float() @ keys.float().transpose(-1, -2) * queries.shape[-1] ** -0.5  # (B, H, 1, n)
    return logits.softmax(dim=-1)[:, :, 0].mean(dim=1)


def attention_pagerank(
    queries: torch.Tensor,
    keys: torch.Tensor,
    temperature: float = 0.1,
    iterations: int = 5,
    chunk: int = 256,
    cache_elements: int = 2**27,
) -> torch.Tensor:
    """AIM's token importance: per head, a distribution over the tokens starts uniform and takes `iterations`
    steps dist ← dist · M, M = softmax(causal q·kᵀ/√d / temperature) over every query row; the importance is
    √(mean over heads of dist²).

    queries: (Hq, m, d), keys: (Hkv, m, d) of m tokens in sequence order, grouped-query aware → (m,) fp32.
    Query rows go `chunk` at a time. M is built once and kept while it holds at most `cache_elements`
    entries (Hq·m², 512 MiB by default); beyond that each step recomputes its chunks (memory O(Hq·chunk·m),
    one attention's q·kᵀ per step).
    """
    num_heads, count, head_dim = queries.shape
    num_kv_heads = keys.shape[0]
    group = num_heads // num_kv_heads
    keys_t = keys.float().transpose(-1, -2)  # (Hkv, d, m)
    scale = head_dim**-0.5 / temperature
    position = torch.arange(count, device=queries.device)

    def transition(start: int) -> torch.Tensor:
        """Rows start … start + chunk of M, per head: (Hq, rows, m)."""
        rows = queries[:, start : start + chunk].float()
        width = rows.shape[1]
        logits = (rows.reshape(num_kv_heads, group * width, head_dim) @ keys_t).reshape(num_heads, width, count)
        future = position[None, :] > position[start : start + width, None]
        return (logits * scale).masked_fill(future, float("-inf")).softmax(dim=-1)

    starts = range(0, count, chunk)
    cached = [transition(start) for start in starts] if num_heads * count * count <= cache_elements else None
    distribution = torch.full((num_heads, count), 1.0 / count, device=queries.device)
    for _ in range(iterations):
        step = torch.zeros_like(distribution)
        for i, start in enumerate(starts):
            block = cached[i] if cached is not None else transition(start)
            step += (distribution[:, start : start + block.shape[1], None] * block).sum(dim=1)
        distribution = step
    return distribution.square().mean(dim=0).sqrt()


def attention_row_sharpness(queries: torch.Tensor, keys: torch.Tensor, max_entries: int = 2**26) -> torch.Tensor:
    """vid-TLDR's saliency: for each token, Σ_j Ā_ij · log Ā_ij over its row of the head-mean attention Ā =
    mean over heads of softmax(q·kᵀ/√d) - the negative entropy of where it looks (sharper is higher).

    queries, keys: (B, H, n, d) for B sequences → (B, n) fp32; blocks of sequences and of query rows at a
    time, so that an attention map holds at most `max_entries` (or one row of each head) at once.
    """
    batch, heads, count, _ = queries.shape
    scale = queries.shape[-1] ** -0.5
    rows = max(min(count, max_entries // max(heads * count, 1)), 1)  # query rows of one sequence at once
    sequences = max(max_entries // max(heads * rows * count, 1), 1)
    sharpness = queries.new_empty(batch, count, dtype=torch.float32)
    for first in range(0, batch, sequences):
        k = keys[first : first + sequences].float()
        for row in range(0, count, rows):
            q = queries[first : first + sequences, :, row : row + rows].float()
            mean = (q @ k.transpose(-1, -2) * scale).softmax(dim=-1).mean(dim=1)  # (sequences, rows, n)
            sharpness[first : first + sequences, row : row + rows] = (mean * mean.clamp_min(1e-30).log()).sum(dim=-1)
    return sharpness


def repeat_heads(states: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """Grouped key/value heads along `dim` repeated for `heads` query heads (each serves a run of them, as HF's
    `repeat_kv`); as they are where there is one per query head."""
    groups = heads // states.shape[dim]
    return states if groups == 1 else states.repeat_interleave(groups, dim=dim)
