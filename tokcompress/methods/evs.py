"""`evs` (Bagrov et al., NVIDIA 2025, "Efficient Video Sampling"): prune the tokens that did not change since the
previous frame, before the LLM."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from ..ops import aligned_cosine
from .base import PRE_LLM, LayerBudget, Method, TokenReduction
from .selection import proportional_split, separators_first, top_tokens_per_group


@dataclass
class EVS(Method):
    """Efficient Video Sampling: temporally static tokens are pruned, the first frame is kept whole.

    A token's novelty is 1 − cos(token, the token at its cell in the previous frame unit), on the projected
    features. Every token of a video's first frame is kept as the temporal anchor; of the others, each video
    keeps the most novel, as many as its share of the budget (in proportion to its tokens) allows, at their
    original positions. No attention is needed: any backend, any batch.

    ratio: 0.25 (the paper's example pruning rate q = 0.75).

    Departures:
    - Novelty in the embedding space, as NVIDIA's serving code runs it for its Nemotron VL models; the paper
      also describes an L1 distance between RGB patches.
    - `ratio` is met exactly: the published count never falls below one frame (the anchor); where the budget
      holds fewer tokens than the first frame, its tokens compete by how much their cell changes in the next (a
      one-frame video's, having none, by how much each differs from its frame's mean).
    - A cell's first token that stands is its anchor: after framededup dropped frames, novelty is measured
      against the previous frame that stands; a cell that earlier frames lack (frames of several sizes) starts
      with an anchor of its own.
    - Separators (LLaVA-OV's newline) are kept first and count toward the budget. Each sample of a batch is
      pruned on its own.
    """

    ratio: float = 0.25

    name = "evs"
    stages = (PRE_LLM,)

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        separators, budget_cells = separators_first(layout, budget.tokens_before_llm(layout.num_tokens))
        cells = (~layout.is_separator).nonzero().squeeze(1)
        cell_layout = layout.select(cells)
        predecessor = cell_layout.temporal_predecessor()
        has_predecessor = predecessor >= 0
        novelty = 1 - aligned_cosine(features[cells], predecessor)  # in [0, 2] where a predecessor exists
        next_novelty = distinctiveness(features[cells], cell_layout.frame)  # a cell with no next token: its own
        next_novelty[predecessor[has_predecessor]] = novelty[has_predecessor]  # of the token after it at its cell
        priority = torch.where(has_predecessor, novelty, 3 + next_novelty)  # anchors first
        sizes = torch.bincount(cell_layout.video, minlength=len(layout.grids)).tolist()
        quotas = torch.tensor(proportional_split(budget_cells, sizes), device=cells.device)
        kept = top_tokens_per_group(priority, cell_layout.video, quotas)
        return TokenReduction.prune(torch.cat([separators, cells[kept]]))


def distinctiveness(features: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """(N,) 1 − cos(token, the mean of its frame's tokens), in [0, 2]."""
    frames, index = torch.unique(frame, return_inverse=True)
    means = torch.zeros(len(frames), features.shape[-1], device=features.device).index_add_(0, index, features.float())
    return 1 - torch.nn.functional.cosine_similarity(features.float(), means[index], dim=-1)
