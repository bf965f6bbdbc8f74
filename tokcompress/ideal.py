"""The ideal a compressed run is measured against: the same model fed only what the method kept.

Its vision tower encodes the share of the clip the method encoded (with the vision attention a patch runs: the
fused varlen kernel in place of a packed tower's loop over windows on a GPU), and the model's own forward (or
`generate`) runs, with no hooks, on the prompt's text plus as many visual tokens as the method kept
(layer-averaged), as text tokens (the same sequence an embedding of them would be; Gemma 4's `generate` takes
no embeddings) - the video's first tokens that many, typed as the prompt's where the model builds its own masks
from the token types (the vision blocks of Gemma 4, Molmo2), and at their M-RoPE positions where the model has
them, which it computes from the whole prompt's grids as its own forward does (the kept tokens' own positions
differ, not the cost). Timed on the path the measured run takes, `measured − ideal` is
what compression itself and its plumbing cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .adapters import adapter_for
from .engine import compat
from .engine.compat import prompt_positions
from .engine.hooks import fused_vision_attention


def ideal_inputs(
    model, inputs: dict, visual_kept: int, encoded: float = 1.0, as_patched: bool = True
) -> tuple[Callable[[], Any], Callable[[], dict]]:
    """(encode, prepare): `encode()` runs the vision tower on the encoded share of the clip (`as_patched`: with the
    vision attention a patch runs; else the stock one); `prepare()` runs it too, then returns the keyword arguments
    of a forward or `generate` over the first prompt's text and `visual_kept` of its visual tokens - what the timed
    region of an ideal prefill does before the model runs."""
    adapter = adapter_for(model)
    video = encoded_share(inputs, encoded, adapter.temporal_merge, adapter.grid_rows_are_units)
    tower = adapter.multimodal_model
    encode_video = tower.get_video_features if "pixel_values_videos" in video else tower.get_image_features
    visual = inputs["input_ids"][0] == adapter.video_token_id
    kept = ~visual | (torch.cumsum(visual, 0) <= visual_kept)  # the text, and the first kept visual tokens
    ids = inputs["input_ids"][:, :1].expand(1, int(kept.sum()))  # text ids: nothing to fill
    ideal = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if adapter.attention_blocks(inputs) is not None:  # the model builds its vision blocks' masks itself
        ideal["mm_token_type_ids"] = inputs["mm_token_type_ids"][:1, kept]
    for name in adapter.llm_token_ids:  # the kept tokens' own ids (ERNIE-4.5-VL's: vision experts for them)
        if inputs.get(name) is not None:
            ideal[name] = inputs[name][:1, kept]

    def encode():
        with _vision_attention_of_a_patch(adapter) if as_patched else contextlib.nullcontext():
            return encode_video(**video)

    def prepare() -> dict:
        encode()
        if not adapter.mrope:
            return ideal
        return {**ideal, "position_ids": prompt_positions(model, inputs)[..., :1, kept]}

    return encode, prepare


@contextlib.contextmanager
def _vision_attention_of_a_patch(adapter) -> Iterator[None]:
    implementation = fused_vision_attention(adapter)
    if implementation is None:
        yield
        return
    previous = compat.use_attention(adapter.vision_tower.config, implementation)
    try:
        yield
    finally:
        compat.use_attention(adapter.vision_tower.config, previous)


def ideal_prefill(model, inputs: dict, visual_kept: int, encoded: float = 1.0) -> Callable[[], Any]:
    """A zero-argument callable: the tower, then the model's own forward on the kept tokens (what
    `model(**inputs)` would cost had the prompt held only those)."""
    _, prepare = ideal_inputs(model, inputs, visual_kept, encoded)
    return lambda: model(**prepare())


def encoded_share(inputs: dict, fraction: float, steps: int = 1, rows_are_units: bool = False) -> dict:
    """The video inputs of the first `fraction` of the clip's frame units (LLaVA, Gemma 4, Molmo2: frames; Qwen:
    temporal patches; ERNIE-4.5-VL: frame pairs, `steps` grid steps each; MiniCPM-V: sources and slices; Kimi K2.5:
    chunks, `video_grid_thw` rows (`rows_are_units`); InternVL: all of its images, which its tower encodes before a
    method chooses frames)."""
    if "pixel_values_videos" not in inputs:
        return {"pixel_values": inputs["pixel_values"]}
    pixels = inputs["pixel_values_videos"]
    if "num_frames_per_video" in inputs:  # Gemma 4: the frames of every video in a row, each with its patch positions
        units = max(round(int(inputs["num_frames_per_video"][0]) * fraction), 1)
        counts = inputs["num_frames_per_video"][:1].clone().fill_(units)
        return {
            "pixel_values_videos": pixels[:units], "video_position_ids": inputs["video_position_ids"][:units],
            "num_frames_per_video": counts,
        }
    if "video_token_pooling" in inputs:  # Molmo2: the first frames, and their tokens' windows of patches
        t, h, w = inputs["video_grids"][0].tolist()
        units = max(round(t * fraction), 1)
        windows = inputs["video_token_pooling"][: units * h * w]  # the first video's: indices from its first patch
        grid = inputs["video_grids"].new_tensor([[units, h, w]])
        return {"pixel_values_videos": pixels[:units], "video_token_pooling": windows, "video_grids": grid}
    if "target_sizes_videos" in inputs:  # MiniCPM-V: every video's units side by side, each its own patch grid
        sizes = inputs["target_sizes_videos"]
        units = max(round(len(sizes) * fraction), 1)
        patches = int(sizes[:units].prod(dim=-1).sum())
        return {"pixel_values_videos": pixels[..., : patches * pixels.shape[2]], "target_sizes_videos": sizes[:units]}
    if "video_grid_thw" not in inputs:
        return {"pixel_values_videos": pixels[:, : max(round(pixels.shape[1] * fraction), 1)]}
    if rows_are_units:
        grid = inputs["video_grid_thw"][: max(round(len(inputs["video_grid_thw"]) * fraction), 1)]
        return {"pixel_values_videos": pixels[: int(grid.prod(dim=-1).sum())], "video_grid_thw": grid}
    t, h, w = inputs["video_grid_thw"][0].tolist()
    units = max(round(t // steps * fraction), 1) * steps  # `steps` grid steps a unit (ERNIE-4.5-VL: frame pairs)
    grid = inputs["video_grid_thw"].new_tensor([[units, h, w]])
    merges = {k: inputs[k] for k in ("video_merge_sizes",) if k in inputs}  # VideoLLaMA3's, one per video
    return {"pixel_values_videos": pixels[: units * h * w], "video_grid_thw": grid, **merges}
