"""Video-LLaVA: a CLIP video tower that keeps each frame's CLS token → projector; frames of 1 + (side / patch)²
tokens, no pooling; a Llama LLM with 1-D positions.

A frame is laid out as its CLS token, a separator of its own, then its p × p grid of cells: methods read the grid
as the image it is (pooling 2 × 2 blocks, not runs along a row), the steps before the LLM keep each CLS token first
(inside it, a method ranking tokens by attention ranks them as any other), and a frame dropped before the tower takes
its CLS token with it.
"""

from __future__ import annotations

import math

from ..engine import compat
from .frames import FrameBatchAdapter
from .prompt import token_runs


class VideoLlavaAdapter(FrameBatchAdapter):
    model_type = "video_llava"
    separators_per_frame = 1  # CLS

    def frame_grid(self) -> tuple[int, int]:
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        return side, side

    @property
    def patch_embedding(self):
        return self.vision_tower.embeddings.patch_embedding

    def encoder_features(self, videos):
        return videos.flatten(0, 1).unflatten(0, (-1, self.tokens_per_frame))  # (videos · frames, tokens per frame, D)

    def note_encoded(self, output, encoder_args):
        videos, frames = encoder_args["pixel_values_videos"].shape[:2]
        output[compat.ENCODED_GRIDS] = [(frames, *self.frame_grid())] * videos

    def encoded_sizes(self, call_kwargs, input_ids):
        """The stock features are (videos · frames, tokens per frame, D): how many frames make a video is not in
        them, so the patch notes it on features it saw encoded. Features encoded before it: every video of a batch
        has the same frame count and a run of placeholders holds whole videos, so the runs' greatest common divisor
        is one video (unless every run holds several back to back)."""
        features = compat.encoded_video(call_kwargs)
        noted = call_kwargs["mm_encoder_outputs"]["video"].get(compat.ENCODED_GRIDS)
        if noted:
            per_video = noted[0][0] * self.tokens_per_frame + self.separators_per_video
        else:
            runs = [length for ids in input_ids for _, length in token_runs(ids, self.config.video_token_id)]
            per_video = math.gcd(*runs) if runs else features.shape[:2].numel()
        return per_video, features.shape[:2].numel() // per_video

    def pool_tower_scores(self, scores):
        return scores[:, self.separators_per_frame :]  # the grid's cells; a CLS token is kept first, unscored
