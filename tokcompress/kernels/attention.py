"""Head-mean softmax attention of a few query rows, split over the keys so the whole GPU works on it.

Pass 1 gives every (KV head, key slice) a program: the query rows of its head group against its keys in one
`tl.dot` per key block, logits written out, and the slice's running max and sum of exponentials. Pass 2
gives every (query row, key block) a program: it combines the slices' max and sum per head and averages the
normalised probabilities over heads. Keys are read once; the logits buffer is (Hq · Q, K) fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting

TARGET_PROGRAMS = 512  # pass 1 programs: enough to fill a Hopper / Ampere GPU


@triton.jit
def _logits_kernel(
    queries, keys, key_mask, logits, split_max, split_sum, num_queries, num_keys, head_dim, group, scale,
    keys_per_split, stride_qh, stride_qq, stride_kh, stride_kk, stride_mq, stride_lr, stride_ss,
    HAS_MASK: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    kv_head = tl.program_id(0)
    split = tl.program_id(1)
    rows = tl.arange(0, BLOCK_R)  # the group's query rows: head kv_head·group + rows // Q, query rows % Q
    row_ok = rows < group * num_queries
    head = kv_head * group + rows // num_queries
    query = rows % num_queries
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    q = tl.load(queries + head[:, None] * stride_qh + query[:, None] * stride_qq + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    running_max = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
    key_end = tl.minimum(num_keys, (split + 1) * keys_per_split)
    for start in range(split * keys_per_split, key_end, BLOCK_K):
        index = start + tl.arange(0, BLOCK_K)
        key_ok = index < key_end
        k = tl.load(keys + kv_head * stride_kh + index[:, None] * stride_kk + dims[None, :],
                    mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        if IEEE:
            block = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # (BLOCK_R, BLOCK_K), fp32 accumulation
        else:
            block = tl.dot(q, tl.trans(k)) * scale
        allowed = row_ok[:, None] & key_ok[None, :]
        if HAS_MASK:
            allowed = allowed & (
                tl.load(key_mask + query[:, None] * stride_mq + index[None, :], mask=allowed, other=0) != 0
            )
        block = tl.where(allowed, block, float("-inf"))
        tl.store(logits + (head * num_queries + query)[:, None] * stride_lr + index[None, :], block,
                 mask=row_ok[:, None] & key_ok[None, :])
        new_max = tl.maximum(running_max, tl.max(block, axis=1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - safe_max) + tl.sum(tl.exp(block - safe_max[:, None]), axis=1)
        running_max = new_max
    out = split * stride_ss + head * num_queries + query
    tl.store(split_max + out, running_max, mask=row_ok)
    tl.store(split_sum + out, running_sum, mask=row_ok)


@triton.jit
def _head_mean_kernel(
    logits, split_max, split_sum, out, num_heads, num_queries, num_keys, splits, inv_heads, stride_lr, stride_ss,
    BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
):
    query = tl.program_id(0)
    index = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    key_ok = index < num_keys
    split = tl.arange(0, BLOCK_S)
    split_ok = split < splits
    total = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for head in range(0, num_heads):
        row = head * num_queries + query
        maxima = tl.load(split_max + split * stride_ss + row, mask=split_ok, other=float("-inf"))
        sums = tl.load(split_sum + split * stride_ss + row, mask=split_ok, other=0.0)
        row_max = tl.max(maxima, axis=0)
        safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        row_sum = tl.sum(sums * tl.exp(maxima - safe_max), axis=0)
        block = tl.load(logits + row * stride_lr + index, mask=key_ok, other=float("-inf"))
        total += tl.where(row_sum > 0, tl.exp(block - safe_max) / row_sum, 0.0)
    tl.store(out + query * num_keys + index, total * inv_heads, mask=key_ok)


def few_query_attention(
    queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Kernel version of `tokcompress.ops.few_query_attention`: (Hq, Q, d), (Hkv, K, d) → (Q, K) fp32."""
    num_heads, num_queries, head_dim = queries.shape
    num_kv_heads, num_keys, _ = keys.shape
    out = torch.zeros(num_queries, num_keys, dtype=torch.float32, device=queries.device)
    if num_keys == 0 or num_queries == 0:
        return out
    queries, keys = queries.contiguous(), keys.contiguous()
    group = num_heads // num_kv_heads
    block_k = 32 if interpreting() else 64
    splits = max(1, min(triton.cdiv(num_keys, block_k), TARGET_PROGRAMS // num_kv_heads))
    keys_per_split = triton.cdiv(triton.cdiv(num_keys, splits), block_k) * block_k
    splits = triton.cdiv(num_keys, keys_per_split)
    logits = torch.empty(num_heads * num_queries, num_keys, dtype=torch.float32, device=queries.device)
    split_max = torch.empty(splits, num_heads * num_queries, dtype=torch.float32, device=queries.device)
    split_sum = torch.empty_like(split_max)
    mask = None if key_mask is None else key_mask.expand(num_queries, num_keys).to(torch.int8).contiguous()
    _logits_kernel[(num_kv_heads, splits)](
        queries, keys, mask if mask is not None else out, logits, split_max, split_sum, num_queries, num_keys,
        head_dim, group, head_dim**-0.5, keys_per_split,
        queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1), mask.stride(0) if mask is not None else 0,
        logits.stride(0), split_max.stride(0),
        HAS_MASK=mask is not None, IEEE=queries.dtype == torch.float32,
        UPCAST=interpreting() and queries.dtype == torch.bfloat16,
        BLOCK_R=max(16, triton.next_power_of_2(group * num_queries)), BLOCK_K=block_k,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
    )
    block_mean = 128
    _head_mean_kernel[(num_queries, triton.cdiv(num_keys, block_mean))](
        logits, split_max, split_sum, out, num_heads, num_queries, num_keys, splits, 1.0 / num_heads,
        logits.stride(0), split_max.stride(0), BLOCK_K=block_mean, BLOCK_S=max(2, triton.next_power_of_2(splits)),
    )
    return out
