"""InternVL (InternVL3 / 3.5 in HF format): no video path. Its processor turns a video into frames given as
images - `FrameN: <img>` + one tile's `image_seq_length` tokens + `</img>` per frame - and the tower encodes
every image before the prompt is read (`generate` encodes them up front).

So a video is read off the prompt: two or more single-tile images back to back (at most `MAX_FRAME_GAP` text
tokens apart, the processor's frame labels) are the frames of one video, each an s × s grid (the
pixel-shuffled tile, raster order). Lone images and multi-tile images pass through as text. A pre-encoder
method (framededup) chooses frames from their features before the LLM: the tower has seen them all."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from ..layout import VisualLayout
from .base import Adapter, token_runs

MAX_FRAME_GAP = 16
"""Most text tokens between two frames of one video (`</img>\\nFrame12: <img>` is about 8)."""


class InternVLAdapter(Adapter):
    model_type = "internvl"
    encoder_side: ClassVar[bool] = False

    @property
    def video_token_id(self) -> int:
        return self.config.image_token_id

    def carries_video(self, call_kwargs: dict[str, Any]) -> bool:
        encoded = call_kwargs.get("mm_encoder_outputs") or {}
        return call_kwargs.get("pixel_values") is not None or encoded.get("image") is not None

    def video_layouts(self, input_ids, call_kwargs):
        per_frame = self.config.image_seq_length
        side = math.isqrt(per_frame)
        layouts = []
        for ids in input_ids:
            videos: list[list[int]] = []
            previous_end = None
            for start, length in token_runs(ids, self.video_token_id):
                if length != per_frame:  # a tiled image
                    previous_end = None
                    continue
                if previous_end is not None and start - previous_end <= MAX_FRAME_GAP:
                    videos[-1].append(start)
                else:
                    videos.append([start])
                previous_end = start + length
            videos = [starts for starts in videos if len(starts) > 1]
            grids = [(len(starts), side, side) for starts in videos]
            layouts.append(VisualLayout.from_frames(videos, grids, device=ids.device))
        return layouts
