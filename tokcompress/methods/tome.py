"""`tome` (Bolya et al., ICLR'23) for video: bipartite token merging before the LLM, between neighbouring frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from ..ops import bipartite_match, weighted_merge
from .base import PRE_LLM, LayerBudget, Method, TokenReduction, check_int

_TEMPORAL, _SPATIAL, _ACROSS_VIDEOS = range(3)


@dataclass
class ToMe(Method):
    """Merge the most similar token pairs, round after round, until round(ratio · N) visual tokens remain.

    Each round groups every video's surviving frames into windows of `window` consecutive surviving frames;
    set A holds a window's even-ranked frames, set B its odd-ranked ones (with the default window of 2:
    frame t against frame t+1, then, once A frames have merged away, 1 against 3, 5 against 7, ...). Every A
    token finds its most similar B token (cosine of the features; the fused `bipartite_match` kernel on GPU)
    and the best-scoring edges merge, A into B, as size-weighted means - at most half of each window per
    round, as in ToMe. So identical frames collapse onto one frame, one token per cell. Once every video is
    down to one frame, rounds merge inside it (ToMe's alternating split in raster order), and then across
    videos. Separators are kept. With `proportional_attention` (ToMe's default) every layer adds log(size)
    to the attention logits of a merged key, so a token that stands for k keeps the weight of k.

    Departures:
    - Runs once on the projected features before the LLM, not inside a ViT; kept tokens keep their original
      positions (the position of the B token they merged into).
    - Windows pair neighbouring frames (temporal bipartite split) where ToMe alternates tokens of one image;
      the spatial split is used only once a video has a single frame left.
    - The number of merges is set by the budget (all rounds together), not a fixed r per layer.
    - Proportional attention goes through a float attention mask (sdpa/eager); flash attention cannot take
      one, so it is refused there (pass proportional_attention=False).
    """

    ratio: float = 0.5
    window: int = 2
    proportional_attention: bool = True

    name = "tome"
    stages = (PRE_LLM,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("tome", "window", self.window, 2)

    def uses_proportional_attention(self) -> bool:
        return self.proportional_attention

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        count = budget.tokens_before_llm(layout.num_tokens)
        separators = layout.is_separator
        cells = ~separators
        target = max(count - int(separators.sum()), 0)
        owner = torch.arange(layout.num_tokens, device=features.device)  # original token -> its surviving token
        alive = cells.nonzero().squeeze(1)  # sorted original indices of the surviving cell tokens
        values, sizes = features[alive], torch.ones(alive.numel(), device=features.device)
        level = _TEMPORAL
        while alive.numel() > max(target, 1):
            window_id, is_a = _split(layout, alive, level, self.window)
            source, destination, score = match_within_windows(values, window_id, is_a)
            merges = min(alive.numel() - target, source.numel())
            if merges == 0:  # no window holds both sets at this level: widen
                level += 1
                continue
            best = torch.topk(score, merges).indices
            values, sizes, owner[cells], alive = merge_round(
                values, sizes, owner[cells], alive, source[best], destination[best]
            )
        if target == 0:
            owner[cells] = -1
        owner[separators.nonzero().squeeze(1)[count:]] = -1  # a budget below the separators keeps the first ones
        return TokenReduction.from_destinations(owner)


def merge_round(values, sizes, owner, alive, source, destination):
    """One merging round: token `source[i]` (an index into `alive`, the surviving original tokens, whose
    features and sizes are `values`, `sizes`) folds into `destination[i]` as a size-weighted mean. `owner`
    maps original tokens to the surviving one they live in. Returns the four after the round."""
    merge_into = torch.arange(alive.numel(), device=alive.device)
    merge_into[source] = destination
    survives = merge_into == torch.arange(alive.numel(), device=alive.device)
    slot = torch.cumsum(survives, 0) - 1
    values, sizes = weighted_merge(values, sizes, slot[merge_into], int(survives.sum()))
    owner = alive[merge_into[torch.searchsorted(alive, owner)]]
    return values, sizes, owner, alive[survives]


def _split(layout: VisualLayout, alive: torch.Tensor, level: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per surviving token, its window and whether it is in set A, at one level of the merging schedule."""
    video, frame = layout.video[alive], layout.frame[alive]
    if level == _TEMPORAL:
        # rank of each token's frame among the surviving frames of its video (frames are global, so sorted by video)
        surviving_frames, frame_index = torch.unique(frame, return_inverse=True)
        frame_video = torch.zeros_like(surviving_frames).scatter_(0, frame_index, video)
        first_of_video = torch.searchsorted(frame_video, frame_video)  # index of the video's first surviving frame
        rank = (torch.arange(surviving_frames.numel(), device=alive.device) - first_of_video)[frame_index]
        return video * (layout.frame.numel() + 1) + rank // window, rank % 2 == 0
    window_id = video if level == _SPATIAL else torch.zeros_like(video)
    rank = torch.arange(alive.numel(), device=alive.device) - torch.searchsorted(window_id, window_id)
    return window_id, rank % 2 == 0


def match_within_windows(values: torch.Tensor, window_id: torch.Tensor, is_a: torch.Tensor):
    """Match every A token to its most similar B token of the same window; at most half a window may merge.

    Returns (source, destination, score) for the A tokens allowed to merge this round: each one, its best B
    token and their cosine.
    """
    windows, members = torch.unique(window_id, return_inverse=True)
    rows, dim, device = windows.numel(), values.shape[-1], values.device
    side_rank = torch.zeros_like(members)  # rank of a token among its window's tokens of the same set
    token = torch.arange(values.shape[0], device=device)
    a_lengths = torch.bincount(members[is_a], minlength=rows)
    b_lengths = torch.bincount(members[~is_a], minlength=rows)
    for side, lengths in ((is_a, a_lengths), (~is_a, b_lengths)):
        starts = torch.cumsum(lengths, 0) - lengths
        side_rank[side] = torch.arange(int(side.sum()), device=device) - starts[members[side]]
    a_index = torch.full((rows, max(int(a_lengths.max()), 1)), -1, dtype=torch.long, device=device)
    b_index = torch.full((rows, max(int(b_lengths.max()), 1)), -1, dtype=torch.long, device=device)
    a_index[members[is_a], side_rank[is_a]] = token[is_a]
    b_index[members[~is_a], side_rank[~is_a]] = token[~is_a]
    a = values[a_index.clamp_min(0)].reshape(rows, -1, dim)
    b = values[b_index.clamp_min(0)].reshape(rows, -1, dim)
    score, match = bipartite_match(a, b, a_lengths, b_lengths)
    # at most half of each window merges per round: its best-scoring A tokens
    cap = (a_lengths + b_lengths) // 2
    order = torch.argsort(score, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=device).expand_as(order))
    allowed = (match >= 0) & (rank < cap[:, None])
    return a_index[allowed], b_index.gather(1, match.clamp_min(0))[allowed], score[allowed]
