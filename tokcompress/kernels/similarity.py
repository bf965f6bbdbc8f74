"""Cosine between each token and its aligned partner, one pass over the rows, fp32 accumulation."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NO_PARTNER = -2.0


@triton.jit
def _aligned_cosine_kernel(
    tokens, partner, out, n, d, stride, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NO_PARTNER_VALUE: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    other = tl.load(partner + rows, mask=row_ok, other=-1)
    has_partner = row_ok & (other >= 0)
    other = tl.where(has_partner, other, 0)
    dot = tl.zeros((BLOCK_N,), dtype=tl.float32)
    norm_a = tl.zeros((BLOCK_N,), dtype=tl.float32)
    norm_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start in range(0, d, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        col_ok = cols < d
        a = tl.load(tokens + rows[:, None] * stride + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        b = tl.load(
            tokens + other[:, None] * stride + cols[None, :], mask=has_partner[:, None] & col_ok[None, :], other=0.0
        )
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        dot += tl.sum(a * b, axis=1)
        norm_a += tl.sum(a * a, axis=1)
        norm_b += tl.sum(b * b, axis=1)
    cosine = dot / (tl.maximum(tl.sqrt(norm_a), eps) * tl.maximum(tl.sqrt(norm_b), eps))
    tl.store(out + rows, tl.where(has_partner, cosine, NO_PARTNER_VALUE), mask=row_ok)


def aligned_cosine(tokens: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Kernel version of `tokcompress.ops.aligned_cosine`: (N, D), (N,) → (N,) fp32."""
    tokens = tokens.contiguous()
    n, d = tokens.shape
    out = torch.empty(n, dtype=torch.float32, device=tokens.device)
    if n == 0:
        return out
    block_n, block_d = 16, min(128, triton.next_power_of_2(d))
    _aligned_cosine_kernel[(triton.cdiv(n, block_n),)](
        tokens, partner.contiguous(), out, n, d, tokens.stride(0), 1e-6,
        BLOCK_N=block_n, BLOCK_D=block_d, NO_PARTNER_VALUE=NO_PARTNER,
    )
    return out
