"""The family half of the compatibility seam: what one model family's modeling file names or changed - version flags
read off its signatures, its own helpers the adapters call, and whether the installed transformers ships a family at
all. `compat` re-exports every name here (the engine's touchpoints live there)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from transformers.models.gemma4.modeling_gemma4 import apply_multidimensional_rope
from transformers.models.kimi_k25.modeling_kimi_k25 import Kimi_K25VisionModel
from transformers.models.molmo2.modeling_molmo2 import Molmo2Model
from transformers.models.muse_glimmer.modeling_muse_glimmer import get_vision_pixel_shuffle_index
from transformers.models.nemotron_h_omni.modeling_nemotron_h_omni import compute_retention_mask
from transformers.vision_utils import get_vision_window_index

# Nemotron-H Omni takes a call's videos as tubelets, (videos, tubelets, 2 · 3, H, W), from 5.24 (before: one video's
# frames, packed inside); its pruning helper's signature tells which.
NEMOTRON_TUBELETS = "num_tubelets" in inspect.signature(compute_retention_mask).parameters

# Kimi K2.5 splits a video's features per chunk of frames from 5.24 (before: as if each frame of a chunk had tokens
# of its own, so every video failed); the tower's pooling method, new then, tells which.
KIMI_CHUNKS = hasattr(Kimi_K25VisionModel, "temporal_merge")

# Molmo2's `video_token_pooling` lists each token's patches within its own video from 5.24 (the model offsets them
# by the videos before it), within the whole batch before; the image encoder's signature tells which.
MOLMO2_POOLING_PER_VIDEO = "image_num_crops" in inspect.signature(Molmo2Model.get_image_features).parameters


def ships(model_type: str) -> bool:
    """Whether the installed transformers has the model family `model_type` (Ovis2.5: from 5.25)."""
    return model_type in transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES


def vision_rope(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Gemma 4's 2-D rotary embedding of (images, patches, heads, d) tower states at their (x, y) patch positions."""
    return apply_multidimensional_rope(states, cos, sin, positions)


def muse_glimmer_token_rows(grid_thw: torch.Tensor, tower: Any) -> torch.Tensor:
    """Muse Glimmer's tower rows (in the window order its layers see them) of each token's merge² patches, token by
    token: its windows are of single patches, and the pixel shuffle after its layers groups each token's."""
    window_index, _ = get_vision_window_index(
        grid_thw, spatial_merge_size=1, window_size=tower.window_size, patch_size=tower.patch_size, kwargs={}
    )
    shuffle = get_vision_pixel_shuffle_index(grid_thw, tower.merge_size)  # on the grid's device; the windows: CPU
    return torch.argsort(window_index.to(shuffle.device))[shuffle]


def vision_window_order(grid_thw: torch.Tensor, vision_config: Any) -> torch.Tensor:
    """Qwen2.5-VL's window order: merged-patch units in the order its tower's blocks see them."""
    window_index, _ = get_vision_window_index(
        grid_thw, spatial_merge_size=vision_config.spatial_merge_size, window_size=vision_config.window_size,
        patch_size=vision_config.patch_size, kwargs={},
    )
    return window_index
