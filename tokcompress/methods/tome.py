"""`tome` (Bolya et al., ICLR'23) for video: bipartite token merging before the LLM, within and across neighbouring frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from ..ops import bipartite_match, weighted_merge
from .base import PRE_LLM, LayerBudget, Method, TokenReduction, check_int, keep_count


@dataclass
class ToMe(Method):
    """Merge the most similar token pairs until round(ratio · N) visual tokens remain.

    Each round orders the surviving tokens of every window of `window` neighbouring frames by (cell,
    frame) and splits them alternately into sets A and B - on a full window that is frame t against frame
    t+1; as tokens vanish the alternation shifts and tokens also meet others of their own frame. Every A
    token finds its most similar B token (cosine of the features, the fused `bipartite_match` kernel on
    GPU) and the best-scoring A tokens fold into their matches as size-weighted means - at most half of
    each window per round, as in ToMe. Rounds repeat until the budget is met; when windows are down to one
    token they double in length. Separators are kept. Unlike ToMe inside a ViT, this runs once on the
    projected features before the LLM and kept tokens keep their original positions.
    """

    ratio: float = 0.5
    window: int = 2

    name = "tome"
    stages = (PRE_LLM,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("tome", "window", self.window, 1)

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        count = keep_count(self.ratio, budget.num_visual)
        separators = layout.is_separator
        cells = ~separators
        target = max(count - int(separators.sum()), 0)
        owner = torch.arange(layout.num_tokens, device=features.device)  # original token -> its surviving token
        alive = cells.nonzero().squeeze(1)  # sorted original indices of the surviving cell tokens
        values, sizes = features[alive], torch.ones(alive.numel(), device=features.device)
        local_frame = layout.frame - _first_frames(layout)[layout.video]
        longest = max((t for t, _, _ in layout.grids), default=1)
        window, span_all = self.window, False
        while alive.numel() > max(target, 1):
            window_id = torch.zeros_like(alive) if span_all else layout.video[alive] * longest + local_frame[alive] // window
            # inside a window, order by (cell, frame) before alternating: round one is frame t against frame t+1
            order = (window_id * (layout.spatial.max() + 2) + layout.spatial[alive] + 1) * (longest + 1) + local_frame[alive]
            source, destination, score = _match_within_windows(values, window_id, order)
            merges = min(alive.numel() - target, source.numel())
            if merges == 0:  # every window is down to one token: widen them, finally across videos
                span_all = window >= longest
                window *= 2
                continue
            best = torch.topk(score, merges).indices
            merge_into = torch.arange(alive.numel(), device=alive.device)
            merge_into[source[best]] = destination[best]
            survives = merge_into == torch.arange(alive.numel(), device=alive.device)
            slot = torch.cumsum(survives, 0) - 1
            values, sizes = weighted_merge(values, sizes, slot[merge_into], int(survives.sum()))
            owner[cells] = alive[merge_into[torch.searchsorted(alive, owner[cells])]]
            alive = alive[survives]
        if target == 0:
            owner[cells] = -1
        owner[separators.nonzero().squeeze(1)[count:]] = -1  # a budget below the separators keeps the first ones
        return TokenReduction.from_destinations(owner)


def _first_frames(layout: VisualLayout) -> torch.Tensor:
    frames = torch.tensor([t for t, _, _ in layout.grids] or [0], device=layout.frame.device)
    return torch.cat([frames.new_zeros(1), frames.cumsum(0)[:-1]])


def _match_within_windows(values: torch.Tensor, window_id: torch.Tensor, sort_key: torch.Tensor):
    """Alternate each window's tokens (in `sort_key` order) into A / B and match A to B.

    Returns (source, destination, score): every A token, its best B token, and their cosine.
    """
    windows, members = torch.unique(window_id, return_inverse=True)
    order = torch.argsort(sort_key, stable=True)
    counts = torch.bincount(members, minlength=windows.numel())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - starts[members[order]]
    is_a = rank % 2 == 0
    a_lengths, b_lengths = (counts + 1) // 2, counts // 2
    rows, dim = windows.numel(), values.shape[-1]
    a_index = torch.full((rows, int(a_lengths.max())), -1, dtype=torch.long, device=values.device)
    b_index = torch.full((rows, max(int(b_lengths.max()), 1)), -1, dtype=torch.long, device=values.device)
    token = torch.arange(values.shape[0], device=values.device)
    a_index[members[is_a], rank[is_a] // 2] = token[is_a]
    b_index[members[~is_a], rank[~is_a] // 2] = token[~is_a]
    a = values[a_index.clamp_min(0)].reshape(rows, -1, dim)
    b = values[b_index.clamp_min(0)].reshape(rows, -1, dim)
    score, match = bipartite_match(a, b, a_lengths, b_lengths)
    valid = match >= 0
    source = a_index[valid]
    destination = b_index.gather(1, match.clamp_min(0))[valid]
    return source, destination, score[valid]
