"""LLaVA-NeXT-Video: CLIP (the CLS token dropped) → `vision_resampler` pooling (stride s) → projector; frames of
(side / s)² tokens in raster order, no separator; a Llama LLM with 1-D positions."""

from __future__ import annotations

import math

import torch

from .frames import FrameBatchAdapter


class LlavaNextVideoAdapter(FrameBatchAdapter):
    model_type = "llava_next_video"

    def frame_grid(self) -> tuple[int, int]:
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size // self.config.spatial_pool_stride
        return side, side

    @property
    def patch_embedding(self):
        return self.vision_tower.embeddings.patch_embedding

    def pool_tower_scores(self, scores):
        """As the model pools its features; a learned `conv` pooling mixes each window's cells, scored as their
        mean."""
        if self.config.vision_feature_select_strategy == "default":
            scores = scores[:, 1:]  # the CLS token is dropped
        if self.config.spatial_pool_mode == "conv":
            side = math.isqrt(scores.shape[1])
            windows = torch.nn.functional.avg_pool2d(scores.view(-1, 1, side, side), self.config.spatial_pool_stride)
            return windows.flatten(1)
        return self.multimodal_model.vision_resampler(scores[..., None])[..., 0]
