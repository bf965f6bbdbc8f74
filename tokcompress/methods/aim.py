"""`aim` (AIM, Zhong et al., ICCV'25): merge similar tokens inside each frame before the LLM, then prune
progressively inside it by a PageRank over each layer's attention graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from ..ops import attention_pagerank
from .base import IN_LLM, PRE_LLM, LayerBudget, LayerSample, Method, TokenReduction
from .knobs import check_int
from .selection import merge_destinations, proportional_split, top_tokens
from .tome import match_within_windows, merge_round

PAPER_DEPTH, PAPER_START, PAPER_SPAN = 28, 14, 8  # full up to layer 14 of 28, then 1/8 fewer per layer
PAPER_MERGE = 0.25  # two rounds of merging half of every frame


def pruning_schedule(num_layers: int) -> list[float]:
    """AIM's share of the LLM's visual input entering each layer: all of it up to layer L/2, then 1/span less
    per layer down to none (the official 14 and 8 of 28 layers, scaled to the model's depth)."""
    start = round(PAPER_START / PAPER_DEPTH * num_layers)
    span = max(round(PAPER_SPAN / PAPER_DEPTH * num_layers), 1)
    return [1.0 if layer <= start else max(0.0, 1 - (layer - start) / span) for layer in range(num_layers)]


PAPER_RATIO = PAPER_MERGE * sum(pruning_schedule(PAPER_DEPTH)) / PAPER_DEPTH


@dataclass
class AIM(Method):
    """Adaptive inference of video LLMs: merge, then prune layer by layer.

    Before the LLM, every frame merges on its own as in ToMe: its tokens split into even and odd ranks
    (raster order), each even token finds its most similar odd one (cosine) and the best-matched even tokens
    fold into their partners, round after round (half a frame per round), until the frame is down to its
    share. Inside the LLM, from the middle layer on, the visual tokens entering each layer shrink linearly to
    none; the ones kept are the most important in the previous layer by PageRank over its attention graph:
    per head, a distribution over all tokens starts uniform and takes `iterations` steps through
    softmax(causal logits / `temperature`), importance √(mean over heads of dist²) - computed from the
    layer's own q/k, chunk by chunk, so the model's attention stays sdpa / flash.

    `ratio` sets the merge share over the schedule's layer average (the paper's 25 % per frame gives 0.165);
    above the schedule's average nothing merges and the schedule is scaled to stop short of none.

    ratio: 0.165 (the official 25 % merge and 28-layer schedule); temperature: 0.1 (tau_imp); iterations: 5.

    Departures:
    - The schedule's start (layer 14 of 28) and slope (8 layers) scale with the model's depth; the last
      pruning layer takes whatever the budget has left, so the layer average meets the ratio within one token.
    - Pruned tokens are removed from the sequence and the KV cache (the official code masks them and keeps
      computing them, which saves no time); later layers attend exactly as under its mask.
    - A merge is a size-weighted mean (official: equal weights of the merged tokens), kept at the odd
      partner's original position; the survivors of a round re-split in raster order (official: the unmerged
      even tokens first, in score order). The last round merges only what the frame's share needs (as the
      official Qwen2-VL path's extra merge).
    - PageRank reads every query row as the paper does, but the rows are computed in chunks from the layer's
      q/k beside the model's fused attention (official: eager attention with full fp32 logits in every layer).
      It costs `iterations` q·kᵀ products per pruning layer. Any batch size and padding.
    """

    ratio: float = PAPER_RATIO
    temperature: float = 0.1
    iterations: int = 5

    name = "aim"
    stages = (PRE_LLM, IN_LLM)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("aim", "iterations", self.iterations, 1)
        if not self.temperature > 0:
            raise ValueError(f"aim temperature must be above 0, got {self.temperature!r}")

    def shares(self, num_layers: int) -> tuple[float, list[float]]:
        """(share of the visual tokens kept by the merge, share of the LLM's visual input entering each layer),
        whose product averages the ratio over the layers."""
        schedule = pruning_schedule(num_layers)
        average = sum(schedule) / num_layers
        if self.ratio <= average:
            return self.ratio / average, schedule
        strength = (1 - self.ratio) / (1 - average)
        return 1.0, [1 - strength * (1 - share) for share in schedule]

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        merge, _ = self.shares(budget.num_layers)
        count = min(round(merge * budget.num_visual), layout.num_tokens)
        destination, cells = merge_destinations(layout, count, features.device)
        tokens = (~layout.is_separator).nonzero().squeeze(1)
        tokens = tokens[layout.raster_order(tokens)]
        if tokens.numel():
            frame_of = torch.unique(layout.frame[tokens], return_inverse=True)[1]
            targets = proportional_split(cells, torch.bincount(frame_of).tolist())
            owner = merge_within_frames(features[tokens], frame_of, torch.tensor(targets, device=features.device))
            destination[tokens] = torch.where(owner >= 0, tokens[owner.clamp_min(0)], -1)
        return TokenReduction.from_destinations(destination)

    def reads_every_prompt_token(self) -> bool:
        return True

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        memory, layer, num_layers = sample.memory, sample.layer, sample.budget.num_layers
        memory.setdefault("entering", sample.features.shape[0])  # first called before layer 0
        count = sample.features.shape[0]
        _, schedule = self.shares(num_layers)
        drops = [j for j in range(1, num_layers) if schedule[j] < schedule[j - 1]]
        kept = torch.arange(count, device=sample.features.device)
        if layer in drops:
            last = layer == drops[-1]  # takes what the budget has left
            keep = sample.budget.tokens_per_layer() if last else round(memory["entering"] * schedule[layer])
            kept = top_tokens(memory.pop("importance"), keep) if keep < count else kept
        if layer + 1 in drops:  # this layer's attention graph, over the tokens it keeps, ranks them for the next
            queries, keys, visual = sample.queries_and_keys()
            present = torch.ones(queries.shape[1], dtype=torch.bool, device=queries.device)
            present[visual] = False
            present[visual[kept]] = True
            rank = attention_pagerank(queries[:, present], keys[:, present], self.temperature, self.iterations)
            memory["importance"] = rank[(torch.cumsum(present, 0) - 1)[visual[kept]]]
        return TokenReduction.prune(kept) if kept.numel() < count else None

    def in_llm_finished(self, sample: LayerSample) -> bool:
        _, schedule = self.shares(sample.budget.num_layers)
        return all(schedule[j] >= schedule[j - 1] for j in range(sample.layer + 1, len(schedule)))


def merge_within_frames(values: torch.Tensor, frame_of: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per token, the index of the token it ends up folded into (itself when it stays, -1 when its frame keeps
    nothing): rounds of even-against-odd bipartite merging inside every frame until each frame is down to
    its target. values: (n, D) in sequence order; frame_of: (n,) non-decreasing frame index; targets: per frame."""
    count, device = values.shape[0], values.device
    owner = torch.arange(count, device=device)
    alive = torch.arange(count, device=device)
    sizes = torch.ones(count, device=device)
    while True:
        frame = frame_of[alive]
        excess = torch.bincount(frame, minlength=targets.numel()) - targets
        rank = torch.arange(alive.numel(), device=device) - torch.searchsorted(frame, frame)
        source, destination, score = match_within_windows(values, frame, rank % 2 == 0)
        by_frame = torch.argsort(score, descending=True, stable=True)
        by_frame = by_frame[torch.argsort(frame[source[by_frame]], stable=True)]  # each frame's edges, best first
        edge_frame = frame[source[by_frame]]
        place = torch.arange(by_frame.numel(), device=device) - torch.searchsorted(edge_frame, edge_frame)
        chosen = by_frame[place < excess[edge_frame]]
        if not chosen.numel():
            break
        values, sizes, owner, alive = merge_round(values, sizes, owner, alive, source[chosen], destination[chosen])
    return torch.where(targets[frame_of] > 0, owner, -1)
