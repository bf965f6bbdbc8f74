"""LLaVA-NeXT-Video: CLIP (the CLS token dropped) → `vision_resampler` pooling (stride s) → projector; frames of
(side / s)² tokens in raster order, no separator; a Llama LLM with 1-D positions."""

from __future__ import annotations

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
        if self.config.vision_feature_select_strategy == "default":
            scores = scores[:, 1:]  # the CLS token is dropped
        return self.multimodal_model.vision_resampler(scores[..., None])[..., 0]
