"""Size-weighted scatter of tokens into destinations (atomic fp32 accumulation), then one division."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _scatter_weighted_kernel(
    tokens, sizes, destination, total, total_size, n, d, stride_in, stride_out,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < n
    target = tl.load(destination + rows, mask=row_ok, other=-1)
    used = row_ok & (target >= 0)
    target = tl.where(used, target, 0)
    weight = tl.load(sizes + rows, mask=used, other=0.0).to(tl.float32)
    mask = used[:, None] & (cols[None, :] < d)
    values = tl.load(tokens + rows[:, None] * stride_in + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(total + target[:, None] * stride_out + cols[None, :], values * weight[:, None], mask=mask)
    if tl.program_id(1) == 0:
        tl.atomic_add(total_size + target, weight, mask=used)


def weighted_merge(
    tokens: torch.Tensor, sizes: torch.Tensor, merge_into: torch.Tensor, num_destinations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel version of `tokcompress.ops.weighted_merge`."""
    tokens = tokens.contiguous()
    n, d = tokens.shape
    total = torch.zeros(num_destinations, d, dtype=torch.float32, device=tokens.device)
    total_size = torch.zeros(num_destinations, dtype=torch.float32, device=tokens.device)
    if n:
        block_n, block_d = 16, min(128, triton.next_power_of_2(d))
        grid = (triton.cdiv(n, block_n), triton.cdiv(d, block_d))
        _scatter_weighted_kernel[grid](
            tokens, sizes.float().contiguous(), merge_into.contiguous(), total, total_size, n, d,
            tokens.stride(0), total.stride(0), BLOCK_N=block_n, BLOCK_D=block_d,
        )
    return (total / total_size.clamp_min(1e-12)[:, None]).to(tokens.dtype), total_size
