"""MiniCPM-V 4.6 and MiniCPM-OCR (OpenBMB, one model's modules): a packed SigLIP (NaViT) tower encodes each frame
of a video as units - its whole view downscaled (the source) and, for frames larger than its 448-px scale, the tiles
of an upscaled view (the slices), each at its own size -, a window merger after one of its layers
(`insert_layer_id`) folding each 2 × 2 block of rows into one, and a 2 × 2 MLP merger after it; a Qwen3.5 decoder
with 1-D positions reads them. The processor packs every unit of every video of a call into one sequence
(`target_sizes_videos` holds each unit's patch grid), and the prompt holds each frame as `<image>` + its source's
tokens + `</image>`, then each slice as `<slice>` + its tokens + `</slice>` (rows of slices a newline apart), each
video after its `<image_id>k</image_id>`.

So the layout is read off the prompt: a run of video tokens opened as the run that starts its video is a frame's
source, another run a slice of that frame; a frame right after the previous one's closing token (no text between)
continues its video. A frame's views - its source, then its slices - stack top to bottom into one grid
(left-aligned: where a view is narrower, the cells past its width are not held), so that a cell's neighbour in
the previous frame is the same cell of the same view.

Where it departs from the stock forward: none beyond the engine's rules. A pre-encoder method (framededup) chooses
frames from their features before the LLM: the tower call does not say which units are frames of which video, so
it encodes them all; nothing folds inside the tower (its window merger reads every frame's grid)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..engine import compat
from ..layout import VisualLayout
from ..methods.base import PromptRefused
from ..ops import attention_received
from .base import Adapter, noted_grids, split_heads, token_runs
from .qwen3_5 import Qwen3_5Decoder

MARKERS_BETWEEN_FRAMES = 2
"""Tokens between the last run of a frame and the source of the next frame of the same video: `</image>` or
`</slice>`, then `<image>`."""


@dataclass
class _Frame:
    """One frame in a prompt: per slot (source, slices), its run's start and its (1, height, width) token grid, and
    the index of each slot's unit among the call's units."""

    starts: list[int]
    grids: list[tuple[int, int, int]]
    units: list[int]
    gap: int | None  # tokens between the previous run's end and its source (None: the sample's first run)


class MiniCPMV4_6Adapter(Qwen3_5Decoder, Adapter):
    model_type = "minicpmv4_6"
    encoder_side: ClassVar[bool] = False  # its tower call does not say which units are frames of which video

    # ------------------------------------------------------------------ layout
    def video_layouts(self, input_ids, call_kwargs):
        grids = self._token_grids(input_ids, call_kwargs)
        samples = self._videos(input_ids, grids)
        if samples is None:
            return None  # placeholders and grids disagree in number: the model's own check says by how much
        layouts = []
        for ids, videos in zip(input_ids, samples):
            positions, video_grids, cells = [], [], []
            for frames in videos:
                stacked = self.stacked_views(frames[0].grids)
                positions.append(torch.cat([
                    torch.arange(start, start + height * width)
                    for frame in frames for start, (_, height, width) in zip(frame.starts, frame.grids)
                ]))
                video_grids.append((len(frames), *stacked.shape))
                cells.append(None if stacked.all() else stacked.flatten().expand(len(frames), -1))
            layouts.append(VisualLayout.from_token_positions(positions, video_grids, cells, device=ids.device))
        return layouts

    @staticmethod
    def stacked_views(views: list[tuple[int, int, int]]) -> torch.Tensor:
        """A frame's views (its source, then its slices, each (1, height, width) tokens) stacked top to bottom,
        left-aligned, as one grid: (rows, columns), True at the cells they hold (all of them where the widths
        agree)."""
        width = max(w for _, _, w in views)
        return torch.cat([torch.arange(width).expand(h, width) < w for _, h, w in views])

    def _videos(self, input_ids: torch.Tensor, grids: list[tuple[int, int, int]]) -> list[list[list[_Frame]]] | None:
        """Per sample, its videos, each a list of frames (None where the prompts' video tokens are not the units')."""
        runs = [token_runs(ids, self.video_token_id) for ids in input_ids]
        if sum(length for sample in runs for _, length in sample) != sum(h * w for _, h, w in grids):
            return None
        units = iter(enumerate(grids))
        samples = []
        for ids, sample in zip(input_ids, runs):
            frames: list[_Frame] = []
            source_opener, previous_end = None, None
            for start, length in sample:
                unit, grid = next(units)
                if length != grid[1] * grid[2]:
                    raise PromptRefused(
                        f"a run of {length} video tokens holds a unit of {grid[1]}×{grid[2]} tokens: pass the "
                        "processor's prompt and videos (one run per source and per slice)"
                    )
                opener = int(ids[start - 1]) if start else None
                gap = start - previous_end if previous_end is not None else None
                new_video = gap is None or gap > MARKERS_BETWEEN_FRAMES + 1  # text before it (`<image_id>k</image_id>`)
                source_opener = opener if new_video else source_opener
                if new_video or opener == source_opener:  # a frame's source
                    frames.append(_Frame([start], [grid], [unit], gap))
                else:  # a slice of the frame in progress
                    frames[-1].starts.append(start)
                    frames[-1].grids.append(grid)
                    frames[-1].units.append(unit)
                previous_end = start + length
            videos: list[list[_Frame]] = []
            for frame in frames:
                if videos and frame.gap == MARKERS_BETWEEN_FRAMES and frame.grids == videos[-1][0].grids:
                    videos[-1].append(frame)
                else:
                    videos.append([frame])
            samples.append(videos)
        return samples

    def _token_grids(self, input_ids, call_kwargs) -> list[tuple[int, int, int]]:
        """Per unit of the call (sources and slices, in order), its (1, height, width) grid of LLM tokens:
        from `target_sizes_videos`, or (generate encodes up front and drops it) as noted on the features."""
        if call_kwargs.get("target_sizes_videos") is not None:
            return self.unit_grids(call_kwargs)
        return noted_grids(call_kwargs, input_ids, self.video_token_id, "MiniCPM-V", "target_sizes_videos")

    def unit_grids(self, encoder_args: dict[str, Any]) -> list[tuple[int, int, int]]:
        """Per unit of a call's `target_sizes_videos`, its (1, height, width) grid of LLM tokens: halved by the
        window merger (not in the "4x" mode) and by each round of the MLP merger."""
        config = self.config
        vit_merger = (encoder_args.get("downsample_mode") or config.downsample_mode) != "4x"
        side = (config.vision_config.window_kernel_size[0] if vit_merger else 1) * (
            config.merge_kernel_size[0] ** config.merger_times
        )
        sizes = encoder_args["target_sizes_videos"].tolist()
        return [(1, height // side, width // side) for height, width in sizes]

    def note_encoded(self, output, encoder_args):
        output[compat.ENCODED_GRIDS] = self.unit_grids(encoder_args)

    # ------------------------------------------------------------------ tower
    def tower_attention(self):
        return self.vision_tower.encoder.layers[-1].self_attn

    def tower_attention_received(self, call):  # (rows,): attention runs inside each unit
        attention, hidden = self.tower_attention(), call.argument("hidden_states", 0)[0]
        queries, keys = (split_heads(projection(hidden), attention.num_heads) for projection in (
            attention.q_proj, attention.k_proj))
        bounds = call.kwargs["cu_seqlens"].tolist()
        return torch.cat([
            attention_received(queries[None, :, start:end], keys[None, :, start:end])[0]
            for start, end in zip(bounds[:-1], bounds[1:])
        ])

    def tower_token_scores(self, records, input_ids, standing=None):
        """Per frame, its views' tokens' scores on its stacked grid: a token's the mean over its rows at the last
        layer (0 at the cells no view holds)."""
        units, grids = [], []
        for call in records:
            if call.kind == "tower":
                vit_merger = call.kwargs.get("use_vit_merger", True)
                sizes = call.argument("target_sizes", 1)
                grids += self.unit_grids({
                    "target_sizes_videos": sizes, "downsample_mode": "16x" if vit_merger else "4x"})
                merged = vit_merger and self.config.insert_layer_id < len(self.vision_tower.encoder.layers) - 1
                rows = sizes // self.config.vision_config.window_kernel_size[0] if merged else sizes  # its last layer's
                continue
            received = self.tower_attention_received(call)
            for (height, width), (_, token_h, token_w) in zip(rows.tolist(), grids[len(units):]):
                unit, received = received[: height * width], received[height * width :]
                side = height // token_h
                units.append(unit.view(token_h, side, token_w, side).mean(dim=(1, 3)))
        frames = []
        for videos in self._videos(input_ids, grids):
            for video in videos:
                stacked = self.stacked_views(video[0].grids)
                for frame in video:
                    scores = torch.cat([
                        torch.nn.functional.pad(units[unit], (0, stacked.shape[1] - units[unit].shape[1]))
                        for unit in frame.units
                    ])
                    frames.append(scores.flatten())
        return frames


class MiniCPMOcrAdapter(MiniCPMV4_6Adapter):
    """MiniCPM-OCR: MiniCPM-V 4.6's modules under another name."""

    model_type = "minicpm_ocr"
