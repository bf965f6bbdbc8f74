"""Fused bipartite matching: cosine of A-blocks against all of B, running best per A row, nothing A×B stored."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting


@triton.jit
def _bipartite_match_kernel(
    a, b, a_lengths, b_lengths, best_score, best_index, d,
    stride_ar, stride_an, stride_br, stride_bn, stride_out,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    a_index = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)
    a_count = tl.load(a_lengths + row)
    b_count = tl.load(b_lengths + row)
    a_ok = a_index < a_count
    a_base = a + row * stride_ar
    b_base = b + row * stride_br
    running_score = tl.full((BLOCK_A,), float("-inf"), dtype=tl.float32)
    running_index = tl.full((BLOCK_A,), -1, dtype=tl.int32)
    for b_start in range(0, b_count, BLOCK_B):
        b_index = b_start + tl.arange(0, BLOCK_B)
        b_ok = b_index < b_count
        dot = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
        a_norm = tl.zeros((BLOCK_A,), dtype=tl.float32)
        b_norm = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for d_start in range(0, d, BLOCK_D):
            dims = d_start + tl.arange(0, BLOCK_D)
            d_ok = dims < d
            a_block = tl.load(a_base + a_index[:, None] * stride_an + dims[None, :], mask=a_ok[:, None] & d_ok[None, :], other=0.0)
            b_block = tl.load(b_base + b_index[:, None] * stride_bn + dims[None, :], mask=b_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:  # the interpreter has no bf16 matmul
                a_block = a_block.to(tl.float32)
                b_block = b_block.to(tl.float32)
            if IEEE:
                dot += tl.dot(a_block, tl.trans(b_block), input_precision="ieee")
            else:
                dot += tl.dot(a_block, tl.trans(b_block))
            a_float = a_block.to(tl.float32)
            b_float = b_block.to(tl.float32)
            a_norm += tl.sum(a_float * a_float, axis=1)
            b_norm += tl.sum(b_float * b_float, axis=1)
        cosine = dot / (tl.maximum(tl.sqrt(a_norm), 1e-6)[:, None] * tl.maximum(tl.sqrt(b_norm), 1e-6)[None, :])
        cosine = tl.where(b_ok[None, :], cosine, float("-inf"))
        block_score = tl.max(cosine, axis=1)
        block_index = tl.argmax(cosine, axis=1).to(tl.int32) + b_start
        better = block_score > running_score
        running_score = tl.where(better, block_score, running_score)
        running_index = tl.where(better, block_index, running_index)
    running_score = tl.where(a_ok, running_score, float("-inf"))
    running_index = tl.where(a_ok, running_index, -1)
    tl.store(best_score + row * stride_out + a_index, running_score, mask=a_index < stride_out)
    tl.store(best_index + row * stride_out + a_index, running_index.to(tl.int64), mask=a_index < stride_out)


def bipartite_match(
    a: torch.Tensor, b: torch.Tensor, a_lengths: torch.Tensor, b_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel version of `tokcompress.ops.bipartite_match`."""
    rows, na, d = a.shape
    score = torch.full((rows, na), float("-inf"), dtype=torch.float32, device=a.device)
    index = torch.full((rows, na), -1, dtype=torch.long, device=a.device)
    if rows == 0 or na == 0 or b.shape[1] == 0:
        return score, index
    a, b = a.contiguous(), b.contiguous()
    block_d = min(64, max(16, triton.next_power_of_2(d)))
    grid = (rows, triton.cdiv(na, 32))
    _bipartite_match_kernel[grid](
        a, b, a_lengths.to(torch.int32).contiguous(), b_lengths.to(torch.int32).contiguous(), score, index, d,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), na,
        IEEE=a.dtype == torch.float32, UPCAST=interpreting() and a.dtype == torch.bfloat16, BLOCK_A=32, BLOCK_B=32, BLOCK_D=block_d,
    )
    return score, index
