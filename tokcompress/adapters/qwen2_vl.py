"""Qwen2-VL and Qwen2.5-VL: videos become T × (H/m) × (W/m) merged patches (m = spatial merge size),
frame-major in raster order; 3-D M-RoPE positions come from `get_rope_index` and stay the original ones."""

from __future__ import annotations

import torch

from ..engine.compat import mrope_grid_rows
from ..layout import VisualLayout
from .base import Adapter, token_runs


class Qwen2VLAdapter(Adapter):
    model_type = "qwen2_vl"
    mrope = True

    def video_layouts(self, input_ids, call_kwargs):
        grid_thw = call_kwargs.get("video_grid_thw")
        merge = self.config.vision_config.spatial_merge_size
        all_grids = [(t, h // merge, w // merge) for t, h, w in grid_thw.tolist()] if grid_thw is not None else []
        if all_grids and int((input_ids == self.config.video_token_id).sum()) != sum(t * h * w for t, h, w in all_grids):
            return None  # placeholders and features disagree: HF's own error says by how much
        grids = iter(all_grids)
        # `generate` encodes the videos up front and drops video_grid_thw; the M-RoPE ids still carry the grid.
        positions = call_kwargs.get("position_ids")
        layouts = []
        for b, ids in enumerate(input_ids):
            starts, sample_grids = [], []
            for start, length in token_runs(ids, self.config.video_token_id):
                grid = next(grids, None)
                if grid is None and positions is not None and positions.ndim == 3:
                    grid = grid_from_positions(mrope_grid_rows(positions)[:, b, start : start + length])
                if grid is None or grid[0] * grid[1] * grid[2] != length:
                    raise ValueError(
                        f"a run of {length} video tokens does not match `video_grid_thw` "
                        "(one grid per video, in order of appearance); pass the processor's video_grid_thw"
                    )
                starts.append(start)
                sample_grids.append(grid)
            layouts.append(VisualLayout.from_videos(starts, sample_grids, device=ids.device))
        return layouts


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    model_type = "qwen2_5_vl"


def grid_from_positions(positions: torch.Tensor) -> tuple[int, int, int]:
    """(T, h, w) of one video from its (3, n) temporal/height/width M-RoPE ids."""
    height = torch.unique(positions[1]).numel()
    width = torch.unique(positions[2]).numel()
    return positions.shape[1] // (height * width), height, width
