"""Choosing between an op's Triton kernel and its torch reference."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import torch

from tokcompress import kernels

FORCE_REFERENCE = "TOKCOMPRESS_FORCE_REFERENCE"
"""Set to 1 to run every op's torch reference, even on CUDA tensors."""

MIN_KERNEL_SIZE: dict[str, int] = {
    "aligned_cosine": 0,
    "weighted_merge": 0,
    "few_query_attention": 0,
    "bipartite_match": 0,
}
"""Per op, the smallest problem (tokens or keys) at which the kernel is used; below it the reference
wins. eval/bench_kernels.py measures where the crossover lies on a GPU."""


def kernel_for(op: str, tensor: torch.Tensor, size: int) -> Callable | None:
    """The op's kernel launcher if it should run on `tensor`, else None (use the reference)."""
    if not tensor.is_cuda or os.environ.get(FORCE_REFERENCE) == "1" or size < MIN_KERNEL_SIZE[op]:
        return None
    if not kernels.available():
        return None
    module = {"aligned_cosine": "similarity", "weighted_merge": "merge", "few_query_attention": "attention"}.get(op, "matching")
    return getattr(importlib.import_module(f"tokcompress.kernels.{module}"), op)
