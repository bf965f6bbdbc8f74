"""The ideal a compressed run is measured against: the same model fed only what the method kept.

Its vision tower encodes the share of the clip the method encoded, and the model's own forward (or
`generate`) runs, with no hooks, on the prompt's text plus as many visual tokens as the method kept
(layer-averaged), as text tokens (the same sequence an embedding of them would be; Gemma 4's `generate` takes
no embeddings) - typed as the prompt's where the model builds its own masks from the token types (Gemma 4's
vision blocks). Timed on the path the measured run takes, `measured − ideal` is what compression itself and its
plumbing cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .adapters import adapter_for


def ideal_inputs(model, inputs: dict, visual_kept: int, encoded: float = 1.0) -> tuple[Callable[[], Any], dict]:
    """(encode, ideal): `encode()` runs the vision tower on the encoded share of the clip; `ideal` are the
    keyword arguments of a forward or `generate` over the prompt's text and `visual_kept` visual tokens."""
    adapter, video = adapter_for(model), encoded_share(inputs, encoded)
    tower = adapter.multimodal_model
    encode = tower.get_video_features if "pixel_values_videos" in video else tower.get_image_features
    visual = inputs["input_ids"][0] == adapter.video_token_id
    ids = inputs["input_ids"][:, :1].expand(1, int((~visual).sum()) + visual_kept)  # text ids: nothing to fill
    ideal = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if adapter.attention_blocks(inputs) is not None:  # the model builds its vision blocks' masks itself (Gemma 4)
        kept = ~visual | (torch.cumsum(visual, 0) <= visual_kept)  # the text, and the first kept visual tokens
        ideal["mm_token_type_ids"] = inputs["mm_token_type_ids"][:1, kept]
    return (lambda: encode(**video)), ideal


def ideal_prefill(model, inputs: dict, visual_kept: int, encoded: float = 1.0) -> Callable[[], Any]:
    """A zero-argument callable: the tower, then the model's own forward on the kept tokens (what
    `model(**inputs)` would cost had the prompt held only those)."""
    encode, ideal = ideal_inputs(model, inputs, visual_kept, encoded)

    def prefill():
        encode()
        return model(**ideal)

    return prefill


def encoded_share(inputs: dict, fraction: float) -> dict:
    """The video inputs of the first `fraction` of the clip's frame units (LLaVA, Gemma 4: frames; Qwen: temporal
    patches; InternVL: all of its images, which its tower encodes before a method chooses frames)."""
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
    if "video_grid_thw" not in inputs:
        return {"pixel_values_videos": pixels[:, : max(round(pixels.shape[1] * fraction), 1)]}
    t, h, w = inputs["video_grid_thw"][0].tolist()
    units = max(round(t * fraction), 1)
    grid = inputs["video_grid_thw"].new_tensor([[units, h, w]])
    merges = {k: inputs[k] for k in ("video_merge_sizes",) if k in inputs}  # VideoLLaMA3's, one per video
    return {"pixel_values_videos": pixels[: units * h * w], "video_grid_thw": grid, **merges}
