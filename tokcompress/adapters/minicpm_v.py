"""MiniCPM-V 4.6 and MiniCPM-OCR (OpenBMB, one model's modules; MiniCPM-V 4.7 below): a packed SigLIP (NaViT)
tower encodes each frame of a video as units - its whole view downscaled (the source) and, for frames larger than
its 448-px scale, the tiles of an upscaled view (the slices), each at its own size -, a window merger after one of
its layers (`insert_layer_id`) folding each 2 × 2 block of rows into one, and a 2 × 2 MLP merger after it; a Qwen3.5
decoder with 1-D positions reads them. The processor packs every unit of every video of a call into one sequence
(`target_sizes_videos` holds each unit's patch grid), and the prompt holds each frame as `<image>` + its source's
tokens + `</image>`, then each slice as `<slice>` + its tokens + `</slice>` (rows of slices a newline apart), each
video after its `<image_id>k</image_id>`.

So the layout is read off the prompt: a run of video tokens opened as the run that starts its video is a frame's
source, another run a slice of that frame; a frame right after the previous one's closing token (no text between)
continues its video, whatever its size: with `stack_frames > 1` the processor follows each second's frame with a
canvas of its sub-frames (of another size, with other views). A frame's views - its source, then its slices - stack
top to bottom into one grid (left-aligned: where a view is narrower, the cells past its width are not held); a
video's grid is the smallest that holds every frame's, so that a cell's neighbour in the previous frame is the same
cell of the same view wherever the frames are alike.

The tower's call does not say which units are frames of which video: the engine hands the adapter the prompt's ids
(a forward's, or those `generate` encodes for), so a pre-encoder method (framededup) keeps whole frames - a source
and its slices - out of the tower; features encoded on their own (no prompt) hold every unit, and the method
chooses from them before the LLM. Nothing folds inside the tower (its window merger reads every frame's grid).

Where it departs from the stock forward: none beyond the engine's rules."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..engine import compat
from ..layout import VisualLayout
from ..methods.base import PromptRefused
from ..ops import packed_attention_received
from .base import Adapter, split_heads
from .prompt import noted_grids, token_runs
from .qwen3_5 import Qwen3_5Decoder

MARKERS_BETWEEN_FRAMES = 2
"""Tokens between the last run of a frame and the source of the next frame of the same video: `</image>` or
`</slice>`, then `<image>`."""


@dataclass
class _Frame:
    """One frame in a prompt: per view (its source, then its slices), the (start, length) of its run of video tokens,
    and the index of its unit among the call's units."""

    runs: list[tuple[int, int]]
    units: list[int]
    gap: int | None  # tokens between the previous run's end and its source (None: the sample's first run)


class MiniCPMV4_6Adapter(Qwen3_5Decoder, Adapter):
    model_type = "minicpmv4_6"
    encodes_by_prompt: ClassVar[bool] = True  # its tower call does not say which units are frames of which video
    tower_folding_refused: ClassVar[str] = "its window merger, between two of its layers, reads every frame's grid"
    packed_vision_attention = True  # stock sdpa runs one call per unit, and one per 2×2 window in its merger

    # ------------------------------------------------------------------ layout
    def video_layouts(self, input_ids, call_kwargs):
        grids = self._token_grids(input_ids, call_kwargs)
        if int((input_ids == self.video_token_id).sum()) != sum(h * w for _, h, w in grids):
            return None  # placeholders and features disagree in number: the model's own check says by how much
        samples = self._videos(input_ids)
        runs = sum(len(frame.runs) for videos in samples for video in videos for frame in video)
        if runs != len(grids):
            raise PromptRefused(
                f"the prompts hold {runs} runs of video tokens, the videos {len(grids)} units: pass the processor's "
                "prompt (a run per source and per slice)"
            )
        layouts = []
        for ids, videos in zip(input_ids, samples):
            positions, video_grids, cells = [], [], []
            for frames in videos:
                views = [[grids[unit] for unit in frame.units] for frame in frames]
                for frame, frame_views in zip(frames, views):
                    for (start, length), (_, height, width) in zip(frame.runs, frame_views):
                        if length != height * width:
                            raise PromptRefused(
                                f"a run of {length} video tokens holds a unit of {height}×{width} tokens: pass the "
                                "processor's prompt and videos (one run per source and per slice)"
                            )
                held = self.video_cells(views)
                positions.append(torch.cat([
                    torch.arange(start, start + length) for frame in frames for start, length in frame.runs
                ]))
                video_grids.append(tuple(held.shape))
                cells.append(None if held.all() else held.flatten(1))
            layouts.append(VisualLayout.from_token_positions(positions, video_grids, cells, device=ids.device))
        return layouts

    @staticmethod
    def stacked_views(views: list[tuple[int, int, int]]) -> torch.Tensor:
        """A frame's views (its source, then its slices, each (1, height, width) tokens) stacked top to bottom,
        left-aligned, as one grid: (rows, columns), True at the cells they hold (all of them where the widths
        agree)."""
        width = max(w for _, _, w in views)
        return torch.cat([torch.arange(width).expand(h, width) < w for _, h, w in views])

    @classmethod
    def video_cells(cls, frames: list[list[tuple[int, int, int]]]) -> torch.Tensor:
        """(frames, rows, columns): the cells each frame's stacked views (`frames`: each frame's views) hold on the
        smallest grid that holds every frame's, each in its top-left corner."""
        stacked = [cls.stacked_views(views) for views in frames]
        rows, columns = max(len(grid) for grid in stacked), max(grid.shape[1] for grid in stacked)
        return torch.stack([
            torch.nn.functional.pad(grid, (0, columns - grid.shape[1], 0, rows - len(grid))) for grid in stacked
        ])

    def _videos(self, input_ids: torch.Tensor) -> list[list[list[_Frame]]]:
        """Per sample, its videos, each a list of frames, read off the runs of video tokens; units are numbered in
        prompt order across the samples, as the call packs them."""
        samples, unit = [], 0
        for ids in input_ids:
            frames: list[_Frame] = []
            source_opener, previous_end = None, None
            for start, length in token_runs(ids, self.video_token_id):
                opener = int(ids[start - 1]) if start else None
                gap = start - previous_end if previous_end is not None else None
                new_video = gap is None or gap > MARKERS_BETWEEN_FRAMES + 1  # text before it (`<image_id>k</image_id>`)
                source_opener = opener if new_video else source_opener
                if new_video or opener == source_opener:  # a frame's source
                    frames.append(_Frame([(start, length)], [unit], gap))
                else:  # a slice of the frame in progress
                    frames[-1].runs.append((start, length))
                    frames[-1].units.append(unit)
                previous_end, unit = start + length, unit + 1
            videos: list[list[_Frame]] = []
            for frame in frames:
                if videos and frame.gap == MARKERS_BETWEEN_FRAMES:  # its views may differ (`stack_frames`)
                    videos[-1].append(frame)
                else:
                    videos.append([frame])
            samples.append(videos)
        return samples

    def _call_videos(self, encoder_args: dict[str, Any]) -> list[list[_Frame]]:
        """The videos of a `get_video_features` call, read off the prompt the engine hands over with it."""
        videos = [video for sample in self._videos(encoder_args[compat.PROMPT_IDS]) for video in sample]
        units = sum(len(frame.units) for video in videos for frame in video)
        if units != len(encoder_args["target_sizes_videos"]):
            raise ValueError(
                f"the prompt holds {units} runs of video tokens (a frame's source and each slice) but the videos "
                f"{len(encoder_args['target_sizes_videos'])} units: pass the processor's prompt with its videos"
            )
        return videos

    def frame_signatures(self, encoder_args):
        """Per video, (frames, patches, D): each frame's views' patches, without the position table, padded with
        zeros to its video's largest frame (the canvases of `stack_frames`)."""
        embed = self.vision_tower.embeddings.patch_embedding
        pixels = encoder_args["pixel_values_videos"]
        patches = embed(pixels.to(embed.weight.dtype)).flatten(2)[0].T  # (patches of every unit, D)
        per_unit = patches.split(encoder_args["target_sizes_videos"].prod(dim=-1).tolist())
        return [
            torch.nn.utils.rnn.pad_sequence(
                [torch.cat([per_unit[unit] for unit in frame.units]) for frame in video], batch_first=True
            )
            for video in self._call_videos(encoder_args)
        ]

    def encode_frames(self, encode, encoder_args, keep):
        """The kept frames' units (their pixels' columns, their sizes), then every unit's features in place, the
        dropped ones zeros."""
        args = {name: value for name, value in encoder_args.items() if name != compat.PROMPT_IDS}
        kept = sorted(
            unit for video, frames in zip(self._call_videos(encoder_args), keep) for index in frames.tolist()
            for unit in video[index].units
        )
        pixels, sizes = args["pixel_values_videos"], args["target_sizes_videos"]
        counts = sizes.prod(dim=-1).tolist()
        firsts = [0, *itertools.accumulate(counts)]
        columns = torch.cat([torch.arange(firsts[unit], firsts[unit] + counts[unit]) for unit in kept])
        patch = pixels.shape[2]
        columns = (columns[:, None] * patch + torch.arange(patch)).flatten().to(pixels.device)
        output = encode(**{**args, "pixel_values_videos": pixels[..., columns], "target_sizes_videos": sizes[kept]})
        features, encoded = iter(output.pooler_output), set(kept)
        first = output.pooler_output[0]
        output.pooler_output = [
            next(features) if unit in encoded else first.new_zeros(height * width, first.shape[-1])
            for unit, (_, height, width) in enumerate(self.unit_grids(args))
        ]
        return output

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
        return packed_attention_received(queries, keys, call.kwargs["cu_seqlens"])

    def tower_token_scores(self, records, input_ids, standing=None):
        """Per frame encoded, its views' tokens' scores on its stacked grid, (rows, columns): a token's the mean
        over its rows at the last layer (0 at the cells no view holds)."""
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
        videos = [video for sample in self._videos(input_ids) for video in sample]
        stood = standing if standing is not None else [torch.arange(len(video)) for video in videos]
        pending, frames = iter(units), []
        for video, kept in zip(videos, stood):
            for index in kept.tolist():
                views = [next(pending) for _ in video[index].units]
                width = max(view.shape[1] for view in views)
                frames.append(torch.cat([torch.nn.functional.pad(view, (0, width - view.shape[1])) for view in views]))
        return frames


class MiniCPMV4_7Adapter(MiniCPMV4_6Adapter):
    """MiniCPM-V 4.7: MiniCPM-V 4.6's tower, merger and prompt over canvas M-RoPE - 3-D positions the model computes
    from the prompt's markers and token types, a frame's slices placed on the canvas of its source - which the LLM
    keeps for the tokens that stand (original positions only)."""

    model_type = "minicpmv4_7"
    mrope = True


class MiniCPMOcrAdapter(MiniCPMV4_6Adapter):
    """MiniCPM-OCR: MiniCPM-V 4.6's modules under another name."""

    model_type = "minicpm_ocr"
