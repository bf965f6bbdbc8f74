"""Video-LLaVA: a CLIP video tower that keeps each frame's CLS token → projector; frames of 1 + (side / patch)²
tokens, no pooling, no separator; a Llama LLM with 1-D positions.

A frame is laid out as one row of 1 + p² cells, CLS first, so every method sees the CLS token as a cell of its
frame: temporal methods pair it with the previous frame's CLS, pruning may drop it.
"""

from __future__ import annotations

import math

from .frames import FrameBatchAdapter
from .prompt import token_runs


class VideoLlavaAdapter(FrameBatchAdapter):
    model_type = "video_llava"

    def frame_grid(self) -> tuple[int, int]:
        vision = self.config.vision_config
        return 1, 1 + (vision.image_size // vision.patch_size) ** 2

    @property
    def patch_embedding(self):
        return self.vision_tower.embeddings.patch_embedding

    def encoder_features(self, videos):
        return videos.flatten(0, 1).unflatten(0, (-1, self.frame_grid()[1]))  # (videos · frames, tokens per frame, D)

    def encoded_sizes(self, features, input_ids):
        """The stock features are (videos · frames, tokens per frame, D): how many frames make a video is not in
        them. Every video of a batch has the same frame count and a run of placeholders holds whole videos, so the
        runs' greatest common divisor is one video (unless every run holds several back to back)."""
        runs = [length for ids in input_ids for _, length in token_runs(ids, self.config.video_token_id)]
        per_video = math.gcd(*runs) if runs else features.shape[:2].numel()
        return per_video, features.shape[:2].numel() // per_video
