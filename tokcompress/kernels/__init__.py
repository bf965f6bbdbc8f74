"""Triton kernels behind `tokcompress.ops`, installed as `tokcompress.kernels`.

Each module holds the `@triton.jit` kernels of one op and a small launcher with the op's signature.
They run on CUDA tensors, or anywhere under `TRITON_INTERPRET=1` (how the CPU tests check their logic).
"""

from __future__ import annotations

import importlib.util
import os


def available() -> bool:
    """Whether triton is importable (the kernels still need CUDA tensors or the interpreter)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"
