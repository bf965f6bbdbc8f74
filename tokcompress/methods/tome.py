"""`tome` (Bolya et al., ICLR'23) for video: bipartite token merging before the LLM, between neighbouring frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from ..ops import bipartite_match, weighted_merge
from .base import PRE_LLM, LayerBudget, Method, TokenReduction
from .knobs import check_int

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

    def tokens_into_llm(self, budget: LayerBudget, available: int) -> int:
        """How many of the `available` tokens its rounds leave (a method adding a step inside the LLM leaves more)."""
        return budget.tokens_before_llm(available)

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        count = self.tokens_into_llm(budget, layout.num_tokens)
        separators = layout.is_separator
        cells = (~separators).nonzero().squeeze(1)  # sorted original indices of the cell tokens
        target = max(count - (layout.num_tokens - cells.numel()), 0)
        owner = torch.arange(layout.num_tokens, device=features.device)  # original token -> its surviving token
        alive = cells  # the surviving cell tokens
        values, sizes = features[alive], torch.ones(alive.numel(), device=features.device)
        level = _TEMPORAL
        while alive.numel() > max(target, 1):  # two host reads a round (in match_within_windows)
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


@dataclass
class ToMeAfterTower(ToMe):
    """ToMe's stage before the LLM for methods that fold tokens inside the vision tower and expand its output back
    to the grid: first each frame's repeats (tokens equal to an earlier one of their frame to 1e-5 - a folded
    token read where it was, or a pooled window of them) fold into their first copy, as many as the budget lets,
    so the LLM gets distinct tokens; then `tome` meets the budget (its rounds pair neighbouring frames first, and
    would reach repeats inside one frame only once the pairs run out)."""

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        count = layout.num_tokens
        repeats = TokenReduction.from_destinations(
            first_copies(features, layout, count - self.tokens_into_llm(budget, count))
        )
        rest = super().reduce_pre_llm(features[repeats.keep], layout.select(repeats.keep), budget)
        return repeats.then(rest, count)


def first_copies(features: torch.Tensor, layout: VisualLayout, limit: int, tolerance: float = 1e-5) -> torch.Tensor:
    """Per token, the earliest token of its frame it equals (‖a − b‖ ≤ tolerance · ‖b‖; itself when none, and for
    separators), for at most `limit` repeats - the first ones in sequence order. All frames at once.

    Each frame's tokens, less its mean, are sorted by their projection on a fixed random direction (a second one
    orders exact ties), so copies sit side by side - a distinct token would have to project between copies that
    differ by rounding to come between them - and each is compared with its neighbour in that order only: n log n
    a frame, not every pair. Projections are elementwise sums, so a token's never depends on its row.
    """
    token = torch.arange(layout.num_tokens, device=features.device)
    cells = token[~layout.is_separator]
    if not len(cells):
        return token
    member = _runs(layout.frame[cells])  # each cell's frame, 0 … F − 1 (frames come in order)
    every = torch.ones_like(cells, dtype=torch.bool)
    lengths, rank = _ranks_in_runs(member, every)
    frames, width = torch.stack([member[-1] + 1, lengths.max()]).tolist()
    grid = _padded(member, every, rank, frames, width)  # (F, width): each frame's cells in order, -1 past its end
    grid = torch.where(grid >= 0, cells[grid.clamp_min(0)], -1)
    values = features[grid.clamp_min(0)].float()
    real = grid >= 0
    centred = values - (values * real[..., None]).sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True)[..., None]
    directions = torch.randn(2, values.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    order = torch.arange(width, device=values.device).expand(frames, width)
    for direction in directions.to(values.device).flip(0):  # the second direction, then the first: lexicographic
        projection = torch.where(real, (centred * direction).sum(dim=-1), torch.inf).gather(1, order)
        order = order.gather(1, torch.sort(projection, dim=1, stable=True).indices)
    ordered = values.gather(1, order[..., None].expand_as(values))
    gap = (ordered[:, 1:] - ordered[:, :-1]).norm(dim=-1)
    close = (gap <= tolerance * ordered[:, :-1].norm(dim=-1)) & real.gather(1, order)[:, 1:]
    run = torch.cat([close.new_zeros(frames, 1), ~close], dim=1).cumsum(dim=1)  # copies share a run
    earliest = torch.full_like(order, width).scatter_reduce_(1, run, order, "amin")  # the run's first column
    first = torch.empty_like(order).scatter_(1, order, earliest.gather(1, run))
    destination = token.clone()
    destination[cells] = grid.gather(1, first)[member, rank]
    repeat = destination != token
    return torch.where(repeat & (torch.cumsum(repeat, 0) > limit), token, destination)


def merge_round(values, sizes, owner, alive, source, destination):
    """One merging round: token `source[i]` (an index into `alive`, the surviving original tokens, whose
    features and sizes are `values`, `sizes`) folds into `destination[i]` (a token that stays) as a size-weighted
    mean; no token is a source twice. `owner` maps original tokens to the surviving one they live in. Returns the
    four after the round, without reading anything back to the host."""
    token = torch.arange(alive.numel(), device=alive.device)
    merge_into = token.clone()
    merge_into[source] = destination
    survives = merge_into == token
    slot = torch.cumsum(survives, 0) - 1
    kept = alive.numel() - source.numel()
    values, sizes = weighted_merge(values, sizes, slot[merge_into], kept)
    owner = alive[merge_into[torch.searchsorted(alive, owner)]]
    return values, sizes, owner, alive[torch.argsort((~survives).to(torch.int8), stable=True)[:kept]]


def _runs(values: torch.Tensor) -> torch.Tensor:
    """Per entry of a sequence in runs of equal values, its run's index (0, 0, 1, 2, 2, ...)."""
    changes = values[1:] != values[:-1]
    return torch.cat([changes.new_zeros(1), changes]).cumsum(0)


def _ranks_in_runs(members: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For tokens in runs (`members`: each one's run, non-decreasing): per run, how many `chosen` tokens it holds
    (padded to the token count), and per token, its rank among its run's chosen ones."""
    lengths = torch.zeros_like(members).scatter_add_(0, members, chosen.long())
    return lengths, torch.cumsum(chosen, 0) - 1 - (torch.cumsum(lengths, 0) - lengths)[members]


def _padded(members: torch.Tensor, chosen: torch.Tensor, rank: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """(rows, width): each run's chosen tokens (their indices) in order, -1 past its end - filled by index, no host
    read."""
    index = torch.full((rows, width + 1), -1, dtype=torch.long, device=members.device)  # the last: the others
    token = torch.arange(len(members), device=members.device)
    index[members, torch.where(chosen, rank, width)] = torch.where(chosen, token, -1)
    return index[:, :width]


def _split(layout: VisualLayout, alive: torch.Tensor, level: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per surviving token (in sequence order), its window - consecutive windows, non-decreasing ids - and whether
    it is in set A, at one level of the merging schedule."""
    video, frame = layout.video[alive], layout.frame[alive]
    if level == _TEMPORAL:  # frames come in order, a video's after the previous video's
        frame_index = _runs(frame)
        first_of_video = frame_index[torch.searchsorted(video, video)]
        rank = frame_index - first_of_video  # of each token's frame among the surviving frames of its video
        return video * (layout.frame.numel() + 1) + rank // window, rank % 2 == 0
    window_id = video if level == _SPATIAL else torch.zeros_like(video)
    raster = layout.raster_order(alive)  # windows (videos, or all) keep their order: frames are global, in order
    rank = torch.empty_like(raster)  # in raster order, whatever order the prompt holds a frame's tokens in
    rank[raster] = torch.arange(alive.numel(), device=alive.device) - torch.searchsorted(window_id, window_id)
    return window_id, rank % 2 == 0


def match_within_windows(values: torch.Tensor, window_id: torch.Tensor, is_a: torch.Tensor):
    """Match every A token to its most similar B token of the same window; at most half a window may merge.
    window_id: per token, non-decreasing (each window's tokens consecutive).

    Returns (source, destination, score) for the A tokens allowed to merge this round: each one, its best B
    token and their cosine. Two host reads: the windows' sizes, and how many may merge.
    """
    count, dim, device = values.shape[0], values.shape[-1], values.device
    if count == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros(0, device=device)
    members = _runs(window_id)
    (a_lengths, a_rank), (b_lengths, b_rank) = _ranks_in_runs(members, is_a), _ranks_in_runs(members, ~is_a)
    rows, a_width, b_width = torch.stack([members[-1] + 1, a_lengths.max(), b_lengths.max()]).tolist()
    a_index = _padded(members, is_a, a_rank, rows, max(a_width, 1))
    b_index = _padded(members, ~is_a, b_rank, rows, max(b_width, 1))
    a_lengths, b_lengths = a_lengths[:rows], b_lengths[:rows]
    a = values[a_index.clamp_min(0)].reshape(rows, -1, dim)
    b = values[b_index.clamp_min(0)].reshape(rows, -1, dim)
    score, match = bipartite_match(a, b, a_lengths, b_lengths)
    # at most half of each window merges per round: its best-scoring A tokens
    cap = (a_lengths + b_lengths) // 2
    order = torch.argsort(score, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=device).expand_as(order))
    picked = ((match >= 0) & (rank < cap[:, None])).nonzero(as_tuple=True)
    return a_index[picked], b_index.gather(1, match.clamp_min(0))[picked], score[picked]
