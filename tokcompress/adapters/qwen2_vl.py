"""Qwen2-VL and Qwen2.5-VL: videos become T × (H/m) × (W/m) merged patches (m = spatial merge size),
frame-major in raster order; 3-D M-RoPE positions come from `get_rope_index` and stay the original ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..engine import compat
from ..engine.compat import mrope_grid_rows
from ..engine.folding import PACKED
from ..layout import VisualLayout
from ..ops import attention_row_sharpness, packed_attention_received, repeat_heads
from .base import Adapter, Projection, applied_to, rotate
from .prompt import noted_grids, token_runs, units_in_place

if TYPE_CHECKING:
    from ..engine.encoder import TowerCall


class Qwen2VLAdapter(Adapter):
    model_type = "qwen2_vl"
    mrope = True
    packed_vision_attention = True  # stock sdpa runs one attention call per window in a Python loop
    tower_frames = PACKED  # each temporal patch a run of h·w rows (window-ordered alike), attention inside each
    tower_rotary: ClassVar[bool] = True  # whether its attention rotates q/k with the call's `position_embeddings`

    def video_layouts(self, input_ids, call_kwargs):
        """Each video's tokens come in order in one or more runs: one run (Qwen2/2.5-VL), one per frame unit (Qwen3-VL:
        each between its timestamp and vision start / end), or units between the video's audio tokens (Qwen-Omni; a
        unit may straddle two runs at low fps)."""
        videos = self._video_sizes(call_kwargs, input_ids)
        all_runs = [self.frame_runs(ids) for ids in input_ids]
        if sum(length for runs in all_runs for _, length in runs) != sum(tokens for tokens, _ in videos):
            return None  # placeholders and features disagree: HF's own error says by how much
        positions = call_kwargs.get("position_ids")
        pending = iter(videos)
        layouts = []
        for b, runs in enumerate(all_runs):
            video_positions, grids = [], []
            while runs:
                tokens, frame_grid = next(pending)
                taken, held = [], 0
                while runs and held < tokens:
                    taken.append(runs.pop(0))
                    held += taken[-1][1]
                start, length = taken[0]
                # no grid (generate's continuing call drops them): read it off the M-RoPE ids, if these are (not the
                # one text row with rope deltas some models' generate hands a continuation)
                if frame_grid is None and positions is not None and positions.ndim == 3 and len(positions) >= 3:
                    frame_grid = grid_from_positions(mrope_grid_rows(positions)[:, b, start : start + length])[1:]
                height, width = frame_grid or (1, length)
                if held != tokens or tokens % (height * width):
                    raise ValueError(
                        f"a video of {tokens} tokens of {height}×{width} a frame unit does not match its runs of video "
                        f"tokens ({[length for _, length in taken]}); pass the processor's prompt and grids"
                    )
                video_positions.append(torch.cat([torch.arange(start, start + length) for start, length in taken]))
                grids.append((tokens // (height * width), height, width))
            layouts.append(VisualLayout.from_token_positions(video_positions, grids, device=input_ids.device))
        return layouts

    def frame_runs(self, ids: torch.Tensor) -> list[tuple[int, int]]:
        """(start, length) of each run of video tokens in one prompt."""
        return token_runs(ids, self.video_token_id)

    def _video_sizes(self, call_kwargs, input_ids) -> list[tuple[int, tuple[int, int] | None]]:
        """Per video, in order of appearance: its tokens and its frame grid, when the call says it. `generate`
        encodes the videos up front and drops video_grid_thw: the features it hands over still count tokens, and
        the M-RoPE ids carry the grid (1-D positions do not: there, the grids as noted on the features)."""
        grid_thw = call_kwargs.get("video_grid_thw")
        if grid_thw is not None:
            return [(t * h * w, (h, w)) for t, h, w in self.token_grids(grid_thw)]
        if not self.mrope:
            grids = noted_grids(call_kwargs, input_ids, self.video_token_id, self.model_type, "video_grid_thw")
            return [(t * h * w, (h, w)) for t, h, w in grids]
        return [(len(features), None) for features in compat.encoded_video(call_kwargs)]

    def token_grids(self, grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
        """Per video of `video_grid_thw`, its (frame units, H, W) grid of LLM tokens."""
        merge, steps = self.spatial_merge, self.temporal_merge
        return [(t // steps, h // merge, w // merge) for t, h, w in grid_thw.tolist()]

    def note_encoded(self, output, encoder_args):
        if not self.mrope:  # see `_video_sizes`
            output[compat.ENCODED_GRIDS] = self.token_grids(encoder_args["video_grid_thw"])

    def frame_signatures(self, encoder_args):
        embedded = self.patch_embeddings(encoder_args["pixel_values_videos"])  # (patches, D)
        grids = encoder_args["video_grid_thw"].tolist()
        videos = embedded.split([t * h * w for t, h, w in grids])
        return [self._units(video, t, h, w) for video, (t, h, w) in zip(videos, grids)]

    def encode_frames(self, encode, encoder_args, keep):
        """A frame unit is a temporal patch: the h·w patches, then h·w / merge² tokens, of two frames (one, with
        `temporal_merge` grid steps to a unit)."""
        grids = encoder_args["video_grid_thw"].tolist()
        pixels = encoder_args["pixel_values_videos"].split([t * h * w for t, h, w in grids])
        kept_pixels = torch.cat([
            self._units(video, t, h, w)[units].flatten(0, 1) for video, (t, h, w), units in zip(pixels, grids, keep)
        ])
        grid = encoder_args["video_grid_thw"]
        kept_grid = grid.new_tensor([[len(units) * self.temporal_merge, h, w] for (_, h, w), units in zip(grids, keep)])
        output = encode(**{**encoder_args, "pixel_values_videos": kept_pixels, "video_grid_thw": kept_grid})
        output.pooler_output = self._all_units(output.pooler_output, grids, keep)
        return output

    def _units(self, rows: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        """A video's packed rows (pixels or patch embeddings) as (frame units, rows of a unit, D)."""
        return rows.view(t // self.temporal_merge, self.temporal_merge * h * w, -1)

    def patch_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tower's (patches, D) embeddings of flattened patches, before its first layer."""
        return self.vision_tower.patch_embed(pixels)

    def frame_counts(self, encoder_args):
        return (encoder_args["video_grid_thw"][:, 0] // self.temporal_merge).tolist()

    def unit_rows(self, encoder_args):
        grid = encoder_args["video_grid_thw"]
        return (self.temporal_merge * grid[:, 1] * grid[:, 2]).tolist()

    def tower_layers(self):
        return self.vision_tower.blocks, len(self.vision_tower.blocks)

    def tower_readouts(self):
        return [self.vision_tower.merger]

    def tower_attention(self):
        return self.vision_tower.blocks[-1].attn

    def tower_attention_received(self, call):
        queries, keys, _ = self.tower_heads(self.tower_attention(), call.argument("hidden_states", 0), call.kwargs)
        return packed_attention_received(queries, keys, call.kwargs["cu_seqlens"], self.tower_has_cls)

    def tower_layer_attention(self, layer):
        return layer.attn

    def tower_row_sharpness(self, attention, hidden, kwargs, project=None):
        queries, keys, _ = self.tower_heads(attention, hidden, kwargs, project)  # (heads, rows, d)
        heads, rows, dim = queries.shape
        bounds, sharpness = kwargs["cu_seqlens"], queries.new_empty(rows)
        lengths = bounds.diff()
        for length in lengths.unique().tolist():  # segments of one length at a time, as a batch
            starts = bounds[:-1][lengths == length]
            segment_rows = (starts[:, None] + torch.arange(length, device=starts.device)).flatten()
            q, k = (states[:, segment_rows].view(heads, len(starts), length, dim).transpose(0, 1)
                    for states in (queries, keys))
            sharpness[segment_rows] = attention_row_sharpness(q, k).flatten()
        return sharpness

    def tower_heads(self, attention, hidden, kwargs, project=None):
        """(heads, rows, d) fp32 queries and keys (normed per head where the tower does - LFM3-VL's -, then rotary
        embedded with the call's tables, where the tower has them) and values of a packed tower attention on its
        (rows, D) input; grouped key/value heads (EXAONE 4.5's, LFM3-VL's) are repeated for the queries' heads, as its
        attention does."""
        projections = self.tower_projections(attention, project or applied_to(hidden))
        head_dim = projections[0].shape[-1] // attention.num_heads
        queries, keys, values = (states.unflatten(-1, (-1, head_dim)) for states in projections)
        identity = nn.Identity()
        queries = getattr(attention, "q_norm", identity)(queries).float()
        keys = repeat_heads(getattr(attention, "k_norm", identity)(keys).float(), attention.num_heads, dim=1)
        values = repeat_heads(values.float(), attention.num_heads, dim=1)
        if self.tower_rotary:
            cos, sin = (table[:, None].float() for table in kwargs["position_embeddings"])
            queries, keys = rotate(queries, cos, sin), rotate(keys, cos, sin)
        return queries.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1)

    def tower_projections(self, attention, project: Projection) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, H·d) queries, keys and values of a packed tower attention, before RoPE (a fused qkv here)."""
        return project(attention.qkv).chunk(3, dim=-1)

    @property
    def spatial_merge(self) -> int:
        """The side of the square of patches that become one LLM token."""
        return self.config.vision_config.spatial_merge_size

    def patches_per_token(self, tower_call: TowerCall) -> int:
        """How many of a recorded tower call's patch rows make one LLM token (m² for a spatial merge size m)."""
        return self.spatial_merge**2

    def tower_token_scores(self, records, input_ids, standing=None):
        units, grid, merge, steps = [], None, 1, self.temporal_merge
        standing = iter([len(stood) for stood in standing] if standing is not None else ())
        for call in records:
            if call.kind == "tower":  # the units its last layer ran on: what stood of the call's
                merge = self.patches_per_token(call)
                grid = call.argument("grid_thw", 1).clone()
                grid[:, 0] = grid.new_tensor([next(standing, t // steps) * steps for t in grid[:, 0].tolist()])
                continue
            merged = self.token_means(self.tower_attention_received(call), grid, merge)  # one per token of a step
            for t, h, w in grid.tolist():  # a unit's token: the mean over its steps
                units.extend(merged[: t * h * w // merge].view(t // steps, steps, -1).mean(dim=1))
                merged = merged[t * h * w // merge :]
        return units

    def token_means(self, received: torch.Tensor, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
        """Per LLM token of a tower call's grid (in the video's order), the mean of its patches' values, given per
        row in the order the tower's blocks see them (merged patches' rows together)."""
        return self.in_patch_order(received.view(-1, merge).mean(dim=-1), grid_thw)

    def in_patch_order(self, merged: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Per-merged-token values from the order the tower's blocks see them in back to the video's order."""
        return merged

    def _all_units(self, features: tuple[torch.Tensor, ...], grids, keep) -> tuple[torch.Tensor, ...]:
        """Per video, the features of the kept units in place and zeros for the dropped ones."""
        return units_in_place(features, keep, [t // self.temporal_merge for t, _, _ in grids])


class SiglipTower:
    """A packed SigLIP tower's modules (VideoLLaMA3, Cosmos3 Edge): `encoder.layers`, each attention with
    separate q/k/v projections, and the post-layernorm that reads their rows out."""

    def tower_layers(self):
        layers = self.vision_tower.encoder.layers
        return layers, len(layers)

    def tower_readouts(self):
        return [self.vision_tower.post_layernorm]

    def tower_attention(self):
        return self.vision_tower.encoder.layers[-1].self_attn

    def tower_layer_attention(self, layer):
        return layer.self_attn

    def tower_projections(self, attention, project):
        return project(attention.q_proj), project(attention.k_proj), project(attention.v_proj)


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    model_type = "qwen2_5_vl"

    def in_patch_order(self, merged, grid_thw):
        window_order = compat.vision_window_order(grid_thw, self.config.vision_config).to(merged.device)
        return merged[torch.argsort(window_order)]


def grid_from_positions(positions: torch.Tensor) -> tuple[int, int, int]:
    """(T, h, w) of one video from its (3, n) temporal/height/width M-RoPE ids."""
    height = torch.unique(positions[1]).numel()
    width = torch.unique(positions[2]).numel()
    return positions.shape[1] // (height * width), height, width
