"""Shared selection helpers of the methods: budgets split over videos and frames, the tokens a method keeps
first, top-k choices without host syncs, area pooling of a frame's grid."""

from __future__ import annotations

import itertools

import torch

from ..layout import VisualLayout
from .base import PRE_LLM, LayerBudget, Method, PromptRefused, TokenReduction


def separators_first(layout: VisualLayout, count: int) -> tuple[torch.Tensor, int]:
    """Separators (LLaVA-OV's newline) are kept first - the first `count` of them if the budget is smaller:
    returns (the separators kept, how many cell tokens the rest of `count` allows)."""
    separators = layout.is_separator.nonzero().squeeze(1)[:count]
    return separators, count - separators.numel()


def frame_grids(layout: VisualLayout, method: str) -> list[tuple[int, torch.Tensor]]:
    """(video, grid) per video that has cell tokens: `grid` (frames, tokens per frame) their indices, frame-major
    in raster order (whatever order the prompt holds a frame's tokens in: Ovis2.5's window order), over the frames
    that stand (an earlier stage may have dropped whole ones). A ValueError naming the fix where a frame holds only
    some of its cells: methods that read frames as grids need them whole."""
    grids = []
    for video, (_, height, width) in enumerate(layout.grids):
        members = ((layout.video == video) & ~layout.is_separator).nonzero().squeeze(1)
        if not len(members):
            continue
        frames = len(layout.frame[members].unique())
        if frames * height * width != len(members):
            raise PromptRefused(
                f"{method} needs every cell of each frame it sees, but some frames hold only part of theirs: an "
                "earlier stage dropped cells inside them (compose it only after methods that keep or drop whole "
                "frames: framededup, or earlytom's tower stage alone, earlytom@encoder - whole earlytom also prunes "
                "inside frames before the LLM), or the processor did (VideoLLaMA3's token compression: load its "
                "processor with use_token_compression=False), or the frame's views do not fill its grid (MiniCPM-V: "
                "a source and slices of different widths: process the video with slice_mode=False)"
            )
        grids.append((video, members[layout.raster_order(members)].view(frames, height * width)))
    return grids


def video_grids(layout: VisualLayout, cells: int, method: str) -> list[tuple[int, torch.Tensor, int]]:
    """`frame_grids` with each video's `quota`: its share of `cells`, in proportion to its tokens."""
    grids = frame_grids(layout, method)
    quotas = proportional_split(cells, [grid.numel() for _, grid in grids])
    return [(video, grid, quota) for (video, grid), quota in zip(grids, quotas)]


def frames_by_size(layout: VisualLayout, cells: int) -> list[tuple[torch.Tensor, list[int]]]:
    """Every frame's cell tokens, frames of one size batched together (one size, usually; several where a processor
    thinned frames): per size, (grid, quotas) with grid (frames, size) their indices, each frame's in raster order,
    and quotas each frame's share of `cells`, in proportion to its size."""
    tokens = (~layout.is_separator).nonzero().squeeze(1)
    tokens = tokens[layout.raster_order(tokens)]
    sizes = torch.bincount(layout.frame[tokens]).tolist()
    quotas = proportional_split(cells, sizes)
    firsts = list(itertools.accumulate(sizes, initial=0))
    batches = []
    for size in sorted(set(sizes) - {0}):
        frames = [frame for frame, count in enumerate(sizes) if count == size]
        starts = torch.tensor([firsts[frame] for frame in frames], device=tokens.device)
        grid = tokens[starts[:, None] + torch.arange(size, device=tokens.device)]
        batches.append((grid, [quotas[frame] for frame in frames]))
    return batches


def merge_destinations(layout: VisualLayout, count: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """For a pre-LLM method that merges: per token, where it goes (-1: dropped) with the separators kept first,
    and how many cell tokens the rest of `count` allows."""
    separators, cells = separators_first(layout, count)
    destination = torch.full((layout.num_tokens,), -1, dtype=torch.long, device=device)
    destination[separators] = separators
    return destination, cells


class FrameByFrame(Method):
    """A pre-LLM method that decides each frame on its own, from its tokens' features and the attention the vision
    tower paid them (visionzip, prumerge): separators are kept first, every frame gets a share of the rest of the
    count in proportion to its size, and `frame_destinations` folds the frames of one size all at once."""

    stages = (PRE_LLM,)

    def uses_tower_attention(self) -> bool:
        return True

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        saliency = tower_attention(layout, self.name)
        destination, cells = merge_destinations(layout, budget.tokens_before_llm(layout.num_tokens), features.device)
        for grid, quotas in frames_by_size(layout, cells):
            local = self.frame_destinations(features[grid], saliency[grid], quotas)
            destination[grid] = torch.where(local >= 0, grid.gather(1, local.clamp_min(0)), -1)
        return TokenReduction.from_destinations(destination)

    def frame_destinations(self, features: torch.Tensor, saliency: torch.Tensor, quotas: list[int]) -> torch.Tensor:
        """Per token of each frame (F, n), the index into its frame of the token it ends up in (-1: dropped):
        features (F, n, D), saliency (F, n), each frame's tokens in raster order; quotas: tokens each frame keeps."""
        raise NotImplementedError


def most_similar(features: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """(F, n) per token of each frame, the one of its frame's `slots` (F, k; indices into the frame, -1: an empty
    slot) whose features (F, n, D) are most similar to its own (cosine); -1 in a frame with no slot."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    chosen = unit.gather(1, slots.clamp_min(0)[..., None].expand(-1, -1, unit.shape[-1]))
    similarity = (unit @ chosen.transpose(1, 2)).masked_fill((slots < 0)[:, None, :], -torch.inf)
    return slots.gather(1, similarity.argmax(dim=2))


def tower_attention(layout: VisualLayout, method: str) -> torch.Tensor:
    """Each token's attention in the vision tower (methods whose `uses_tower_attention` is True get it)."""
    if layout.saliency is None:
        raise RuntimeError(f"{method} needs the vision tower's attention: patch the model with tokcompress.patch")
    return layout.saliency


def true_first(mask: torch.Tensor) -> torch.Tensor:
    """Indices of `mask`'s True entries, then its False ones, each in order: with the True count known,
    `mask.nonzero()` (or `~mask`'s) is a slice of it, without the host sync a boolean index takes."""
    return torch.sort((~mask).to(torch.int8), stable=True).indices


def top_tokens(scores: torch.Tensor, count: int, always: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices of the `count` highest-scoring tokens (none where `count` ≤ 0); tokens in `always` (bool) come
    first.

    Ties go to the earlier token, so results are deterministic.
    """
    priority = scores.float().clone()
    if always is not None:
        priority[always] = float("inf")
    order = torch.sort(priority, descending=True, stable=True).indices
    return torch.sort(order[: max(count, 0)]).values


def top_tokens_per_group(scores: torch.Tensor, group: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sorted indices of each group's `counts[g]` highest-scoring tokens (ties to the earlier token, as
    `top_tokens`), all groups at once: `group` (n,) each token's group id, `counts` (groups,)."""
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]  # by group, each best first
    sizes = torch.bincount(group, minlength=len(counts))
    rank = torch.arange(len(order), device=order.device) - (sizes.cumsum(0) - sizes)[group[order]]
    return torch.sort(order[rank < counts[group[order]]]).values


def area_blocks(height: int, width: int, rows: int, cols: int, device: torch.device | None = None) -> torch.Tensor:
    """(height · width,) per cell of a frame in raster order, its block when the frame is area-pooled to rows × cols:
    cell (r, c) lies in block (r · rows // height, c · cols // width), numbered in raster order."""
    row_block = torch.arange(height, device=device)[:, None] * rows // height
    col_block = torch.arange(width, device=device)[None, :] * cols // width
    return (row_block * cols + col_block).reshape(-1)


def block_heads(block: torch.Tensor, blocks: int) -> torch.Tensor:
    """Per cell, the first cell of its block (`block`: each cell's block id, of `blocks`): the token a pooled block
    folds into."""
    cells = torch.arange(len(block), device=block.device)
    first = torch.full((blocks,), len(block), device=block.device)
    return first.scatter_reduce(0, block, cells, reduce="amin")[block]


def proportional_split(total: int, sizes: list[int]) -> list[int]:
    """Split `total` into integers proportional to `sizes` (largest remainders), never above a size."""
    return apportion(total, sizes, sizes)


def apportion(total: int, weights: list[float], caps: list[int]) -> list[int]:
    """Split `total` into integers proportional to `weights`, none above its cap: what a capped entry cannot
    take goes to the others (by weight, then evenly); largest remainders round. Sums to min(total, Σ caps)."""
    total = min(total, sum(caps))
    shares = [0.0] * len(caps)
    remaining = float(total)
    while remaining > 1e-9:
        open_entries = [i for i, cap in enumerate(caps) if shares[i] < cap]
        weighted = [i for i in open_entries if weights[i] > 0] or open_entries
        weight_sum = sum(weights[i] for i in weighted) if any(weights[i] > 0 for i in weighted) else len(weighted)
        for i in weighted:
            shares[i] += remaining * (weights[i] if weights[i] > 0 else 1) / weight_sum
        remaining = sum(max(share - cap, 0.0) for share, cap in zip(shares, caps))
        shares = [min(share, cap) for share, cap in zip(shares, caps)]
    counts = [int(share + 1e-9) for share in shares]
    by_remainder = sorted((i for i in range(len(caps)) if counts[i] < caps[i]), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts
