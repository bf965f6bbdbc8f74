"""InternVL (InternVL3 / 3.5 in HF format): no video path. Its processor turns a video into frames given as
images - `FrameN: <img>` + one tile's `image_seq_length` tokens + `</img>` per frame - and the tower encodes
every image before the prompt is read (`generate` encodes them up front).

So a video is read off the prompt: two or more single-tile images back to back (at most `MAX_FRAME_GAP` text
tokens apart, the processor's frame labels, each opened by the same token) are the frames of one video, each an
s × s grid (the pixel-shuffled tile, raster order). Lone images and multi-tile images pass through as text.
A pre-encoder method (framededup) chooses frames from their features before the LLM: the tower has seen them
all."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..layout import VisualLayout
from .base import Adapter, feature_layer_index, vit_attention_received
from .prompt import token_runs

MAX_FRAME_GAP = 16
"""Most text tokens between two frames of one video (`</img>\\nFrame12: <img>` is about 8)."""


class InternVLAdapter(Adapter):
    model_type = "internvl"
    encoder_side: ClassVar[bool] = False
    tower_has_cls = True
    video_pixels, video_modality = "pixel_values", "image"

    @property
    def video_token_id(self) -> int:
        return self.config.image_token_id

    @property
    def tokens_per_frame(self) -> int:
        """The tokens of a one-tile image: a frame."""
        return self.config.image_seq_length

    def video_layouts(self, input_ids, call_kwargs):
        per_frame = self.tokens_per_frame
        side = math.isqrt(per_frame)
        layouts = []
        for ids in input_ids:
            videos: list[list[int]] = []
            runs = token_runs(ids, self.video_token_id)
            # the token before each run: a frame opens as the one before it (`<img>`, SmolVLM's `<global-img>`),
            # a tile of a split image with its own `<row_i_col_j>`
            openers = ids[torch.tensor([max(start - 1, 0) for start, _ in runs], dtype=torch.long, device=ids.device)]
            openers = openers.tolist()
            previous_end, previous_opener = None, None
            for (start, length), opener in zip(runs, openers):
                if length != per_frame:  # a tiled image (InternVL: one long run)
                    previous_end = None
                    continue
                if previous_end is not None and start - previous_end <= MAX_FRAME_GAP and opener == previous_opener:
                    videos[-1].append(start)
                else:
                    videos.append([start])
                previous_end, previous_opener = start + length, opener
            videos = [starts for starts in videos if len(starts) > 1]
            grids = [(len(starts), side, side) for starts in videos]
            layouts.append(VisualLayout.from_frames(videos, grids, device=ids.device))
        return layouts

    def tower_attention(self):
        return self.vision_tower.encoder.layer[feature_layer_index(self.config)].attention

    def tower_attention_received(self, call):  # (images, 1 + s²)
        return vit_attention_received(self.tower_attention(), call.argument("hidden_states", 0), self.tower_has_cls)

    def tower_token_scores(self, records, input_ids, standing=None):  # its tower folds nothing
        images = []
        for call in records:
            if call.kind == "attention":
                images.extend(self.pooled_tower_scores(self.tower_attention_received(call)))
        return [images[index] for index in self._frame_images(input_ids)]

    def pooled_tower_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """(images, tower tokens) scores → (images, tokens): per visual token, the mean over the patches that the
        pixel shuffle gathers into it."""
        if self.config.vision_feature_select_strategy == "default":
            scores = scores[:, 1:]
        side = math.isqrt(scores.shape[1])
        grid = scores.view(-1, side, side, 1)
        shuffled = self.multimodal_model.pixel_shuffle(grid, scale_factor=self.config.downsample_ratio)
        return shuffled.flatten(1, 2).mean(dim=-1)  # the tiles' patches each token stands for

    def _frame_images(self, input_ids: torch.Tensor) -> list[int]:
        """Indices, among the prompts' images in order, of those that are frames of a video."""
        frames, image = [], 0
        for ids, layout in zip(input_ids, self.video_layouts(input_ids, {})):
            frame_starts = set(layout.positions[layout.spatial == 0].tolist())
            for start, length in token_runs(ids, self.video_token_id):
                if start in frame_starts:
                    frames.append(image)
                image += length // self.tokens_per_frame
        return frames
