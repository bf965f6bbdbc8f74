"""The ideal a compressed run is measured against: the same model fed only what the method kept.

Its vision tower encodes the share of the clip the method encoded, and its bare LLM prefills the prompt's
text plus as many visual tokens as the method kept (layer-averaged). `measured − ideal` is what compression
itself and its plumbing cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .adapters import adapter_for


def ideal_prefill(model, inputs: dict, visual_kept: int, encoded: float = 1.0) -> Callable[[], Any]:
    """A zero-argument callable running that prefill (with a cache); it returns the LLM's output."""
    video = encoded_share(inputs, encoded)
    encode = model.get_video_features if "pixel_values_videos" in video else model.get_image_features
    language_model, embed = model.model.language_model, model.get_input_embeddings()
    text = int((inputs["input_ids"] != adapter_for(model).video_token_id).sum())
    embeds = embed(inputs["input_ids"][:, :1].expand(1, text + visual_kept))

    def prefill():
        encode(**video)
        return language_model(inputs_embeds=embeds, use_cache=True)

    return prefill


def encoded_share(inputs: dict, fraction: float) -> dict:
    """The video inputs of the first `fraction` of the clip's frame units (LLaVA: frames; Qwen: temporal patches;
    InternVL: all of its images, which its tower encodes before a method chooses frames)."""
    if "pixel_values_videos" not in inputs:
        return {"pixel_values": inputs["pixel_values"]}
    pixels = inputs["pixel_values_videos"]
    if "video_grid_thw" not in inputs:
        return {"pixel_values_videos": pixels[:, : max(round(pixels.shape[1] * fraction), 1)]}
    t, h, w = inputs["video_grid_thw"][0].tolist()
    units = max(round(t * fraction), 1)
    grid = inputs["video_grid_thw"].new_tensor([[units, h, w]])
    return {"pixel_values_videos": pixels[: units * h * w], "video_grid_thw": grid}
