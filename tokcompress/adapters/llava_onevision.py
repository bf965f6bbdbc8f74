"""LLaVA-OneVision (also LLaVA-Video checkpoints in HF format): SigLIP → projector → bilinear ½ pooling,
frames of ceil(s/2)² tokens in raster order, one `image_newline` token after each video."""

from __future__ import annotations

import math

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
        videos = call_kwargs.get("pixel_values_videos")
        frames = videos.shape[1] if videos is not None else None
        layouts = []
        for ids in input_ids:
            starts, grids = [], []
            for start, length in token_runs(ids, self.config.video_token_id):
                # A run may hold several videos back to back, each T·h·w tokens plus its newline.
                per_video = frames * per_frame + 1 if frames else length
                if (length % per_video) or (per_video - 1) % per_frame:
                    raise ValueError(
                        f"a run of {length} video tokens does not split into frames of {per_frame} tokens "
                        "plus one newline per video; is the processor's frame size the model's?"
                    )
                for offset in range(0, length, per_video):
                    starts.append(start + offset)
                    grids.append(((per_video - 1) // per_frame, height, width))
            layouts.append(VisualLayout.from_videos(starts, grids, separators_per_video=1, device=ids.device))
        return layouts
