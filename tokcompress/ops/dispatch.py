"""Choosing between an op's Triton kernel and its torch reference."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable

import torch

from tokcompress import kernels

FORCE_REFERENCE = "TOKCOMPRESS_FORCE_REFERENCE"
"""Set to 1 to run every op's torch reference, even on CUDA tensors."""

MIN_KERNEL_SIZE: dict[str, float] = {
    # H200, bf16, N = 12k, D = 3584: kernel 0.039 ms, reference 0.80 ms
    "aligned_cosine": 0,
    # H200: kernel 0.25 ms, reference 0.88 ms
    "weighted_merge": 0,
    # rebuilt as split-K / tensor-core kernels and not yet measured on a GPU (their first versions lost to the
    # reference: 0.92 vs 0.069 ms and 16.5 vs 5.8 ms on the H200), so the reference runs until a committed
    # eval/results/kernels_<gpu>.csv shows where they win
    "few_query_attention": math.inf,
    "bipartite_match": math.inf,
}
"""Per op, the smallest problem (tokens or keys) from which the kernel beats the reference on a GPU;
`python eval/bench_kernels.py` prints these crossovers from its measurements."""


def kernel_for(op: str, tensor: torch.Tensor, size: int) -> Callable | None:
    """The op's kernel launcher if it should run on `tensor`, else None (use the reference)."""
    if not tensor.is_cuda or os.environ.get(FORCE_REFERENCE) == "1" or size < MIN_KERNEL_SIZE[op]:
        return None
    if not kernels.available():
        return None
    module = {"aligned_cosine": "similarity", "weighted_merge": "merge", "few_query_attention": "attention"}.get(
        op, "matching"
    )
    return getattr(importlib.import_module(f"tokcompress.kernels.{module}"), op)
