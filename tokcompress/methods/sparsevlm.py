"""`sparsevlm` (Zhang et al., ICML'25): the question's relevant words rate the visual tokens, pruned in stages."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import density_peak_clusters
from .base import IN_LLM, LayerBudget, LayerSample, Method, TokenReduction, one_time_layer
from .pdrop import stage_count
from .selection import proportional_split

PAPER_LAYERS, PAPER_DEPTH = (2, 6, 15), 32  # LLaVA-1.5's pruning layers
RECYCLE_SHARE = 0.3  # of the pruned tokens, the best-rated 30 % (+1) are recycled


@dataclass
class SparseVLM(Method):
    """Text-guided progressive sparsification inside the LLM (the paper's v1.5 code path).

    At the LLM input the question picks its raters: with V the visual and T the question embeddings,
    m = mean over visual tokens of softmax over question tokens of V·Tᵀ, and the raters are the question
    tokens with m above its mean. Before each pruning layer (2, 6 and 15 of 32, scaled to the model's
    depth) a visual token's score is the raters' attention to it (mean over heads and raters, from the
    layer's own q/k) and the best-scored tokens stay. With `recycle`, the best-rated 30 % (+1) of the pruned
    tokens are clustered (density peaks, n / 10 + 1 clusters) and each cluster is kept as one merged token.

    ratio: 0.333 (the default RETAIN_TOKN 192 of LLaVA-1.5's 576); recycle: True.

    Departures:
    - Stage counts: λ, λ², λ³ of the visual tokens with λ set by `ratio`, as `pdrop` sets them (the official
      counts are a fixed table per budget, e.g. 300 / 200 / 110 of 576 for 192, roughly that shape); the last
      stage absorbs rounding so the layer average meets the ratio within one token. The first pruning layer
      moves earlier where a low ratio cannot keep every token until it (down to before layer 0). Recycled
      clusters take places inside that count (the official code adds them on top), so the recycled tokens are
      drawn from those ranked below the full count.
    - A recycled cluster is a size-weighted merge placed at its earliest member's original position (the
      official code appends cluster means after the kept tokens and re-indexes positions); positions stay
      original (as in its v2.0).
    - The v2.0 "attention gravity" correction and head selection are not applied; clustering is
      deterministic (no random tie noise); any batch size and padding.
    - With several videos in a prompt, clusters form inside one video each (the clusters shared out in
      proportion to each video's candidates); the official code reads one image.
    """

    ratio: float = 192 / 576
    recycle: bool = True

    name = "sparsevlm"
    stages = (IN_LLM,)

    def pruning_layers(self, budget: LayerBudget) -> list[int]:
        """The paper's layers scaled to the model's depth, the first moved earlier where the budget cannot hold
        every token until then (a low ratio)."""
        layers = [min(round(layer * budget.num_layers / PAPER_DEPTH), budget.num_layers - 1) for layer in PAPER_LAYERS]
        return sorted({one_time_layer(None, self.ratio, budget, layers[0]), *layers[1:]})

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        memory, budget = sample.memory, sample.budget
        if "raters" not in memory:  # the LLM input: embeddings of the visual tokens and of the question
            memory["raters"] = raters(sample.features, sample.question)
        layers = self.pruning_layers(budget)
        if sample.layer not in layers:
            return None
        keep = stage_count(budget, sample.features.shape[0], layers, layers.index(sample.layer) + 1)
        if memory["raters"] is not None:
            score = sample.question_attention(memory["raters"]).mean(dim=(0, 1))
        else:  # no question: the last token rates
            score = sample.attention_to_visual(1)
        return recycled_reduction(sample.features, score, keep, self.recycle, sample.layout.video)

    def in_llm_finished(self, sample: LayerSample) -> bool:
        return sample.layer >= self.pruning_layers(sample.budget)[-1]


def raters(visual: torch.Tensor, question: torch.Tensor | None) -> torch.Tensor | None:
    """Indices of the question tokens whose relevance to the visual tokens is above the question's mean."""
    if question is None or not len(question):
        return None
    relevance = torch.softmax(visual.float() @ question.float().T, dim=-1).mean(dim=0)  # (question tokens,)
    chosen = (relevance > relevance.mean()).nonzero().squeeze(1)
    return chosen if len(chosen) else relevance.argmax()[None]


def recycled_reduction(
    features: torch.Tensor, score: torch.Tensor, keep: int, recycle: bool, video: torch.Tensor
) -> TokenReduction:
    """Keep `keep` tokens: the best-scored ones and, with `recycle`, clusters of the best-rated tokens beyond
    the budget (30 % of them, + 1), each cluster merged onto its earliest member and taking one place. A cluster
    forms inside one video (`video`: each token's): the clusters are shared out among the videos' candidates."""
    count = features.shape[0]
    destination = torch.full((count,), -1, dtype=torch.long, device=features.device)
    ranked = torch.sort(score.float(), descending=True, stable=True).indices
    clusters = 0
    if recycle and 1 < keep < count:
        candidates = ranked[keep : keep + int((count - keep) * RECYCLE_SHARE) + 1]
        videos = video[candidates]
        groups = [candidates[videos == v] for v in videos.unique().tolist()]
        wanted = proportional_split(min(len(candidates) // 10 + 1, keep - 1), [len(group) for group in groups])
        for group, clusters_here in zip(groups, wanted):
            if not clusters_here:
                continue
            assignment, centres = density_peak_clusters(features[group], clusters_here)
            earliest = torch.full((len(centres),), count, device=features.device)
            destination[group] = earliest.scatter_reduce(0, assignment, group, reduce="amin")[assignment]
            clusters += len(centres)
    top = ranked[: keep - clusters]
    destination[top] = top
    return TokenReduction.from_destinations(destination)
