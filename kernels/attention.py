"""Head-mean softmax attention of a few query rows: two passes over the keys per (head, row), no logits stored."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _few_query_attention_kernel(
    queries, keys, key_mask, out, num_queries, num_keys, head_dim, group, scale, inv_heads,
    stride_qh, stride_qq, stride_kh, stride_kk, stride_mq,
    HAS_MASK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    head = tl.program_id(0) // num_queries
    row = tl.program_id(0) % num_queries
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    q = tl.load(queries + head * stride_qh + row * stride_qq + dims, mask=dim_ok, other=0.0).to(tl.float32) * scale
    key_base = keys + (head // group) * stride_kh
    running_max = tl.full((BLOCK_K,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for start in range(0, num_keys, BLOCK_K):  # pass 1: per-lane online max and sum of exponentials
        index = start + tl.arange(0, BLOCK_K)
        allowed = index < num_keys
        if HAS_MASK:
            allowed = allowed & (tl.load(key_mask + row * stride_mq + index, mask=index < num_keys, other=0) != 0)
        k = tl.load(key_base + index[:, None] * stride_kk + dims[None, :], mask=allowed[:, None] & dim_ok[None, :], other=0.0)
        logits = tl.where(allowed, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
        new_max = tl.maximum(running_max, logits)
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - safe_max) + tl.exp(logits - safe_max)
        running_max = new_max
    row_max = tl.max(running_max, axis=0)
    row_sum = tl.sum(running_sum * tl.exp(running_max - row_max), axis=0)
    for start in range(0, num_keys, BLOCK_K):  # pass 2: normalised probabilities, averaged over heads
        index = start + tl.arange(0, BLOCK_K)
        allowed = index < num_keys
        if HAS_MASK:
            allowed = allowed & (tl.load(key_mask + row * stride_mq + index, mask=index < num_keys, other=0) != 0)
        k = tl.load(key_base + index[:, None] * stride_kk + dims[None, :], mask=allowed[:, None] & dim_ok[None, :], other=0.0)
        logits = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        probability = tl.where(allowed, tl.exp(logits - row_max) / row_sum, 0.0)
        tl.atomic_add(out + row * num_keys + index, probability * inv_heads, mask=index < num_keys)


def few_query_attention(queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel version of `tokcompress.ops.few_query_attention`: (Hq, Q, d), (Hkv, K, d) → (Q, K) fp32."""
    num_heads, num_queries, head_dim = queries.shape
    num_kv_heads, num_keys, _ = keys.shape
    out = torch.zeros(num_queries, num_keys, dtype=torch.float32, device=queries.device)
    if num_keys == 0 or num_queries == 0:
        return out
    queries, keys = queries.contiguous(), keys.contiguous()
    mask = None if key_mask is None else key_mask.expand(num_queries, num_keys).to(torch.int8).contiguous()
    _few_query_attention_kernel[(num_heads * num_queries,)](
        queries, keys, mask if mask is not None else out, out, num_queries, num_keys, head_dim,
        num_heads // num_kv_heads, head_dim**-0.5, 1.0 / num_heads,
        queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1), mask.stride(0) if mask is not None else 0,
        HAS_MASK=mask is not None, BLOCK_K=64, BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return out
