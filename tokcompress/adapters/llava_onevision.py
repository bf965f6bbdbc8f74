"""LLaVA-OneVision (also LLaVA-Video checkpoints in HF format): SigLIP → projector → bilinear ½ pooling,
frames of ceil(s/2)² tokens in raster order, one `image_newline` token after each video."""

from __future__ import annotations

import math

from .frames import FrameBatchAdapter


class LlavaOnevisionAdapter(FrameBatchAdapter):
    model_type = "llava_onevision"
    separators_per_video = 1
    tower_has_cls = False  # SigLIP

    def frame_grid(self) -> tuple[int, int]:
        side = math.ceil(self.config.vision_config.image_size // self.config.vision_config.patch_size / 2)
        return side, side

    @property
    def patch_embedding(self):
        return self.vision_tower.embeddings.patch_embedding

    def pool_tower_scores(self, scores):
        return self.multimodal_model.apply_pooling(scores[..., None])[..., 0]
