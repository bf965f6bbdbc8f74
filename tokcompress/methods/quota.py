"""`quota` (QuoTA, Luo et al., AAAI'26): the question decides how many tokens each frame gets; frames it finds
irrelevant get none."""

from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from .base import LayerSample, OnceInLLM, TokenReduction
from .knobs import check_int, check_interval
from .selection import apportion, area_blocks, block_heads, frame_grids, merge_destinations

PAPER_RATIO = 12_544 / (96 * 729)  # N_t = 196 × 64 tokens for 96 frames of LLaVA-Video's 27 × 27 projector grid


@dataclass
class QuoTA(OnceInLLM):
    """Query-oriented token assignment: each frame's share of the budget follows how relevant the question finds
    it, and each frame is pooled down to its share.

    As the paper's v1 and its official code: frame t's weight is w_t ∝ (100 · p_t)², normalised over the frames,
    where p_t is the frame's relevance to the question; frame t gets n_t of the N kept tokens in proportion to w_t
    (a frame whose share rounds to none is dropped), and its h × w grid is resized to h' × w' tokens with
    h' = w' = ⌊√n_t⌋, then one more row if (h' + 1) · w' ≤ n_t, else one more column if h' · (w' + 1) ≤ n_t.

    ratio: the default 0.179 is the paper's budget: 12,544 tokens for 96 frames of 27 × 27.
    layer: K, the decoder layer before which the frames are resized. None (default) means 2, or the deepest
        earlier layer that still leaves every later layer at least one visual token (as `fastv`).
    power: the exponent on a frame's relevance (2, the paper's (100 · p)²; 0 keeps the same share of every frame).

    Departures:
    - Relevance: the official code asks a second LVLM (Qwen2-VL-2B) of every frame whether it shows the objects
      the question names (found by a chain-of-thought generation of the Video-LLM) or enough to answer it, and
      takes P("yes"). Here no second model and no extra generation: p_t is the attention the question's tokens
      pay the frame at layer K (mean over heads, question tokens and the frame's tokens), computed from the
      layer's own q/k beside fused attention; a prompt with no text after its videos uses the last token's row.
      A frame's weight is its token count × (p_t / max p)^power: frames of one size (the paper's) weigh
      (100 · p_t)² as published, and frames of different sizes (videos of several sizes in one prompt) keep the
      same share of their tokens where the question attends to them alike.
    - Where: inside the LLM, before layer K (the layers before it see every token), instead of before the LLM;
      the budget is the layer-averaged ratio, shared by every frame of every video in the sample.
    - Resizing is area pooling (each block of the h' × w' grid folds into its first cell, a size-weighted mean
      at that cell's original position) instead of bilinear interpolation, so a frame is never upsampled
      (official v1 can give a frame more than its 729 tokens): a share is capped at the frame's tokens and what
      it cannot take goes to the other frames. The n_t − h' · w' tokens the official grid leaves unspent are
      spent: that many of the largest blocks split in two along their longer side, so the budget is met to the
      token. Shares round by largest remainders (official: int(N · w_t), which leaves tokens unspent).
    - On frames that are not square the grid keeps the frame's aspect: h' = ⌊h · s⌋, w' = ⌊w · s⌋ with
      s = √(n_t / (h · w)), then the one extra row or column as above.
    - The frame count does not grow with the video's length (the official 96 + 64 · hours frames is the
      caller's sampling); no grid newlines are added (a family's own separators are kept first); positions
      stay original.
    """

    ratio: float = PAPER_RATIO
    layer: int | None = None
    power: float = 2.0

    name = "quota"
    reads_whole_frames = True  # it pools each frame's grid

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("quota", "layer", self.layer, 0, optional=True)
        check_interval("quota", "power", self.power, "[0, 16]")

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        if sample.layer != self.acting_layer(sample.budget):
            return None
        question = 0 if sample.question is None else len(sample.question)  # the text after the last visual token
        relevance = sample.attention_to_visual(max(question, 1))  # the mean of its rows (heads averaged)
        return self.assign(relevance, sample.layout, sample.budget.tokens_per_layer())

    def assign(self, relevance: torch.Tensor, layout: VisualLayout, count: int) -> TokenReduction:
        """Keep `count` of the tokens: separators first, then each frame pooled to its share of the rest, in
        proportion to its tokens × its mean `relevance` (n,) to the power `power`."""
        destination, cells = merge_destinations(layout, count, relevance.device)
        grids = frame_grids(layout, self.name)
        if not grids:
            return TokenReduction.from_destinations(destination)
        mean = torch.cat([relevance[grid].double().mean(dim=1) for _, grid in grids]).clamp_min(0)
        sizes = [grid.shape[1] for _, grid in grids for _ in range(len(grid))]
        # relative to the most relevant frame, in float64: a high power of attentions ~1/N would underflow
        relative = (mean / mean.max()).nan_to_num(nan=1.0) ** self.power  # no attention anywhere: all alike
        weights = torch.tensor(sizes, dtype=torch.float64, device=mean.device) * relative
        shares = apportion(cells, weights.tolist(), sizes)
        first = 0
        for video, grid in grids:
            _, height, width = layout.grids[video]
            plan = torch.stack([pooled_cells(height, width, share) for share in shares[first : first + len(grid)]])
            plan = plan.to(grid.device)
            destination[grid] = torch.where(plan >= 0, grid.gather(1, plan.clamp_min(0)), -1)
            first += len(grid)
        return TokenReduction.from_destinations(destination)


def quota_grid(height: int, width: int, count: int) -> tuple[int, int]:
    """(h', w'): QuoTA's grid for `count` tokens of a height × width frame (see `QuoTA`), at most the frame's."""
    scale = math.sqrt(count / (height * width))
    rows = min(max(int(height * scale + 1e-9), 1), height)
    cols = min(max(int(width * scale + 1e-9), 1), width)
    if rows * cols > count:  # a side rounded down to none was raised to one: the other side takes the count
        rows, cols = (count, 1) if cols == 1 else (1, count)
    if rows < height and (rows + 1) * cols <= count:
        rows += 1
    elif cols < width and rows * (cols + 1) <= count:
        cols += 1
    return rows, cols


@functools.lru_cache(maxsize=4096)
def pooled_cells(height: int, width: int, count: int) -> torch.Tensor:
    """(height · width,) per cell of a frame in raster order, the cell it folds into when the frame is pooled to
    exactly `count` tokens (-1 everywhere for 0): QuoTA's grid, then the largest blocks (among equals, the one
    numbered first) split in two along their longer side until there are `count`. Read-only (cached)."""
    if not count:
        return torch.full((height * width,), -1, dtype=torch.long)
    rows, cols = quota_grid(height, width, count)
    blocks: list[list[int]] = [[] for _ in range(rows * cols)]
    for cell, block in enumerate(area_blocks(height, width, rows, cols).tolist()):
        blocks[block].append(cell)
    largest = [(-len(cells), block) for block, cells in enumerate(blocks)]
    heapq.heapify(largest)
    for _ in range(count - rows * cols):
        block = heapq.heappop(largest)[1]
        cells = blocks[block]
        row_of, col_of = [cell // width for cell in cells], [cell % width for cell in cells]
        along = row_of if max(row_of) - min(row_of) >= max(col_of) - min(col_of) else col_of
        middle = (min(along) + max(along) + 1) // 2
        blocks[block] = [cell for cell, at in zip(cells, along) if at < middle]
        blocks.append([cell for cell, at in zip(cells, along) if at >= middle])
        for index in (block, len(blocks) - 1):
            heapq.heappush(largest, (-len(blocks[index]), index))
    block_of = [0] * (height * width)
    for index, cells in enumerate(blocks):
        for cell in cells:
            block_of[cell] = index
    return block_heads(torch.tensor(block_of), count)
