"""LLaVA-OneVision (also LLaVA-Video checkpoints in HF format): SigLIP → projector → bilinear ½ pooling,
frames of ceil(s/2)² tokens in raster order, one `image_newline` token after each video."""

from __future__ import annotations

import math

from ..engine import compat
from ..layout import VisualLayout
from .base import Adapter, token_runs


class LlavaOnevisionAdapter(Adapter):
    model_type = "llava_onevision"

    def frame_grid(self) -> tuple[int, int]:
        side = math.ceil(self.config.vision_config.image_size // self.config.vision_config.patch_size / 2)
        return side, side

    def video_layouts(self, input_ids, call_kwargs):
        height, width = self.frame_grid()
        per_frame = height * width
        per_video, videos = self._video_sizes(call_kwargs)
        if int((input_ids == self.config.video_token_id).sum()) != per_video * videos:
            return None  # placeholders and features disagree: HF's own error says by how much
        layouts = []
        for ids in input_ids:
            starts, grids = [], []
            for start, length in token_runs(ids, self.config.video_token_id):
                # A run may hold several videos back to back, each T·h·w tokens plus its newline.
                if length % per_video or (per_video - 1) % per_frame:
                    raise ValueError(
                        f"a run of {length} video tokens does not split into videos of {per_video} tokens (frames of "
                        f"{per_frame} tokens plus one newline); is the processor's frame size the model's?"
                    )
                for offset in range(0, length, per_video):
                    starts.append(start + offset)
                    grids.append(((per_video - 1) // per_frame, height, width))
            layouts.append(VisualLayout.from_videos(starts, grids, separators_per_video=1, device=ids.device))
        return layouts

    def _video_sizes(self, call_kwargs) -> tuple[int, int]:
        """(tokens per video, videos) of this call, from its pixels or from the features generate pre-encoded."""
        pixels = call_kwargs.get("pixel_values_videos")
        if pixels is not None:
            per_frame = self.frame_grid()[0] * self.frame_grid()[1]
            return pixels.shape[1] * per_frame + 1, pixels.shape[0]
        features = compat.encoded_video(call_kwargs)
        return features.shape[1], features.shape[0]
