"""Bipartite matching as a tensor-core matmul with a running max/argmax epilogue: the A×B matrix is never stored.

Each program owns a tile of A rows and a slice of B: it accumulates `tl.dot` over D in fp32 for one B tile at
a time, scales by the inverse norms (cosine), and keeps the best B per A row, as flash attention keeps a
running max. B is split across programs so that even one batch row fills the GPU; the launcher reduces the
per-split winners (O(N · splits) memory).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting

SPLIT_UNIT = 128  # B slices are multiples of the largest BLOCK_B
TARGET_PROGRAMS = 1024  # enough programs to fill a Hopper / Ampere GPU several times over


@triton.jit
def _bipartite_match_kernel(
    a, b, a_inverse_norm, b_inverse_norm, a_lengths, b_lengths, split_score, split_index, d, b_per_split,
    stride_ar, stride_an, stride_br, stride_bn, stride_na, stride_nb, stride_sr, stride_ss,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    a_index = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)
    split = tl.program_id(2)
    a_ok = a_index < tl.load(a_lengths + row)
    b_end = tl.minimum(tl.load(b_lengths + row), (split + 1) * b_per_split)
    a_scale = tl.load(a_inverse_norm + row * stride_na + a_index, mask=a_ok, other=0.0)
    a_rows = a + row * stride_ar + a_index[:, None] * stride_an
    running_score = tl.full((BLOCK_A,), float("-inf"), dtype=tl.float32)
    running_index = tl.full((BLOCK_A,), -1, dtype=tl.int32)
    for b_start in range(split * b_per_split, b_end, BLOCK_B):
        b_index = b_start + tl.arange(0, BLOCK_B)
        b_ok = b_index < b_end
        b_rows = b + row * stride_br + b_index[:, None] * stride_bn
        dot = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
        for d_start in range(0, d, BLOCK_D):
            dims = d_start + tl.arange(0, BLOCK_D)
            d_ok = dims < d
            a_tile = tl.load(a_rows + dims[None, :], mask=a_ok[:, None] & d_ok[None, :], other=0.0)
            b_tile = tl.load(b_rows + dims[None, :], mask=b_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:  # the interpreter has no bf16 matmul
                a_tile = a_tile.to(tl.float32)
                b_tile = b_tile.to(tl.float32)
            if IEEE:
                dot = tl.dot(a_tile, tl.trans(b_tile), dot, input_precision="ieee")
            else:
                dot = tl.dot(a_tile, tl.trans(b_tile), dot)
        b_scale = tl.load(b_inverse_norm + row * stride_nb + b_index, mask=b_ok, other=0.0)
        cosine = tl.where(b_ok[None, :], dot * a_scale[:, None] * b_scale[None, :], float("-inf"))
        block_score = tl.max(cosine, axis=1)
        block_index = tl.argmax(cosine, axis=1).to(tl.int32) + b_start
        better = block_score > running_score  # ties keep the earlier B token
        running_score = tl.where(better, block_score, running_score)
        running_index = tl.where(better, block_index, running_index)
    out = row * stride_sr + split * stride_ss + a_index
    in_range = a_index < stride_ss
    tl.store(split_score + out, tl.where(a_ok, running_score, float("-inf")), mask=in_range)
    tl.store(split_index + out, tl.where(a_ok, running_index, -1), mask=in_range)


_CONFIGS = [
    triton.Config({"BLOCK_A": 128, "BLOCK_B": 128, "BLOCK_D": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_A": 128, "BLOCK_B": 64, "BLOCK_D": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_A": 64, "BLOCK_B": 128, "BLOCK_D": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_A": 64, "BLOCK_B": 64, "BLOCK_D": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_A": 128, "BLOCK_B": 128, "BLOCK_D": 32}, num_warps=8, num_stages=4),
]
_tuned_kernel = triton.autotune(configs=_CONFIGS, key=["d", "b_per_split"])(_bipartite_match_kernel)


def bipartite_match(
    a: torch.Tensor, b: torch.Tensor, a_lengths: torch.Tensor, b_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel version of `tokcompress.ops.bipartite_match`."""
    rows, na, d = a.shape
    nb = b.shape[1]
    if rows == 0 or na == 0 or nb == 0:
        return (torch.full((rows, na), float("-inf"), device=a.device), torch.full((rows, na), -1, device=a.device))
    a, b = a.contiguous(), b.contiguous()
    inverse_norms = [x.float().norm(dim=-1).clamp_min(1e-6).reciprocal().contiguous() for x in (a, b)]
    a_blocks = triton.cdiv(na, 64)
    splits = max(1, min(triton.cdiv(nb, SPLIT_UNIT), TARGET_PROGRAMS // max(rows * a_blocks, 1)))
    b_per_split = triton.cdiv(triton.cdiv(nb, splits), SPLIT_UNIT) * SPLIT_UNIT
    splits = triton.cdiv(nb, b_per_split)
    split_score = torch.empty(rows, splits, na, dtype=torch.float32, device=a.device)
    split_index = torch.empty(rows, splits, na, dtype=torch.int32, device=a.device)
    arguments = (
        a, b, *inverse_norms, a_lengths.to(torch.int32).contiguous(), b_lengths.to(torch.int32).contiguous(),
        split_score, split_index, d, b_per_split,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), inverse_norms[0].stride(0), inverse_norms[1].stride(0),
        split_score.stride(0), split_score.stride(1),
    )
    flags = dict(IEEE=a.dtype == torch.float32, UPCAST=interpreting() and a.dtype == torch.bfloat16)
    if interpreting():  # one small configuration: the interpreter runs every program in Python
        _bipartite_match_kernel[(rows, triton.cdiv(na, 32), splits)](
            *arguments, **flags, BLOCK_A=32, BLOCK_B=32, BLOCK_D=32
        )
    else:
        grid = lambda meta: (rows, triton.cdiv(na, meta["BLOCK_A"]), splits)  # noqa: E731
        _tuned_kernel[grid](*arguments, **flags)
    score, best_split = split_score.max(dim=1)  # ties: the earlier split, so the earlier B token
    index = split_index.gather(1, best_split[:, None]).squeeze(1).long()
    return score, index
