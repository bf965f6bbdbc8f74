"""`tsllava` (TS-LLaVA, Qu et al.): a thumbnail of a few frames plus tokens sampled uniformly from the rest."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from .base import PRE_LLM, LayerBudget, Method, TokenReduction
from .knobs import check_int, check_interval
from .selection import area_blocks, block_heads, merge_destinations, video_grids

PAPER_FRAMES, PAPER_SAMPLED, PAPER_THUMBNAIL = 50, 2880, 576  # V2: 50 frames of 576 tokens, 2,880 sampled
PAPER_RATIO = (PAPER_SAMPLED + PAPER_THUMBNAIL) / (PAPER_FRAMES * PAPER_THUMBNAIL)


@dataclass
class TSLLaVA(Method):
    """Thumbnail-and-sampling, training-free, before the LLM (the official V2 variant).

    Per video: `thumbnail_frames` frames at round(linspace(0, T − 1, k)) form the thumbnail. The official
    code tiles them into one image (rows × cols, the factor pair of k closest to square with rows ≥ cols,
    each frame squeezed into a tile of th × tw = h / rows × w / cols) and encodes it again; here each
    thumbnail frame's tokens are area-pooled to its tile's size in feature space (cell (r, c) in block
    (r · th // h, c · tw // w), each block merged into its first token). The other tokens are sampled
    uniformly: round(linspace(0, M − 1, s)) of the M tokens in frame-major order, so the sampled cells shift
    from frame to frame. The thumbnail takes `thumbnail_share` of the kept tokens, at most one frame's grid
    (the official 576 of 3,456).

    ratio: 0.12 (2,880 sampled + 576 thumbnail of 50 × 576); thumbnail_frames: 6; thumbnail_share: 1/6.

    Departures:
    - The thumbnail is pooled from the projected features rather than encoded from a pixel mosaic (no
      second vision-tower pass), and its tokens sit at their frames' original positions, in frame order
      (official: [sampled ; thumbnail], re-indexed); so Qwen's 3-D positions stay meaningful.
    - Tokens are sampled from the frames outside the thumbnail (official: every frame), so a token stands for
      itself or for its thumbnail block, never both; fewer thumbnail frames are used when the rest cannot
      supply the sampled count (high ratios) - at least one frame is always sampled. A smaller budget shrinks
      the tiles in proportion (the official count is a fixed 12 %). Videos too short for the thumbnail use
      the frames they have (official: ValueError); separators are kept first.
    """

    ratio: float = PAPER_RATIO
    thumbnail_frames: int = 6
    thumbnail_share: float = PAPER_THUMBNAIL / (PAPER_SAMPLED + PAPER_THUMBNAIL)

    name = "tsllava"
    stages = (PRE_LLM,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("tsllava", "thumbnail_frames", self.thumbnail_frames, 0)
        check_interval("tsllava", "thumbnail_share", self.thumbnail_share, "[0, 1]")

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        destination, cells = merge_destinations(layout, budget.tokens_before_llm(layout.num_tokens), features.device)
        for video, grid, quota in video_grids(layout, cells, self.name):
            _, height, width = layout.grids[video]
            self._thumbnail_and_sample(grid.view(-1, height, width), quota, destination)
        return TokenReduction.from_destinations(destination)

    def thumbnail_plan(self, frames: int, height: int, width: int, quota: int) -> tuple[int, int, int]:
        """(thumbnail frames k, tile height, tile width) for a video of `frames` frames of height × width
        keeping `quota` tokens: k frames tiles of the thumbnail, the rest sampled from the other frames."""
        target = min(round(quota * self.thumbnail_share), height * width)
        scale = math.sqrt(target / (height * width))
        for count in range(min(self.thumbnail_frames, frames - 1, target), 0, -1):
            rows, cols = tile_grid(count)
            tile_height = min(max(round(height / rows * scale), 1), height)
            tile_width = min(max(round(width / cols * scale), 1), width)
            thumbnail = count * tile_height * tile_width
            if thumbnail <= quota and quota - thumbnail <= (frames - count) * height * width:
                return count, tile_height, tile_width
        return 0, 0, 0

    def _thumbnail_and_sample(self, grid: torch.Tensor, quota: int, destination: torch.Tensor) -> None:
        """grid: (T, h, w) token indices of one video."""
        frames, height, width = grid.shape
        count, tile_height, tile_width = self.thumbnail_plan(frames, height, width, quota)
        chosen = torch.linspace(0, frames - 1, count, dtype=torch.float64).round().long().tolist() if count else []
        if chosen:  # each cell folds into the first cell of its tile block (area pooling)
            blocks = area_blocks(height, width, tile_height, tile_width, grid.device)
            head = block_heads(blocks, tile_height * tile_width)
            for frame in chosen:
                tokens = grid[frame].reshape(-1)
                destination[tokens] = tokens[head]
        others = grid[[f for f in range(frames) if f not in chosen]].reshape(-1)
        sampled = quota - count * tile_height * tile_width
        if sampled:
            spots = torch.linspace(0, others.numel() - 1, sampled, dtype=torch.float64, device=others.device)
            picked = others[spots.round().long()]
            destination[picked] = picked


def tile_grid(count: int) -> tuple[int, int]:
    """(rows, cols): the factor pair of `count` closest to square, rows ≥ cols (6 → 3 × 2)."""
    cols = max(c for c in range(1, math.isqrt(count) + 1) if count % c == 0)
    return count // cols, cols
