"""`uniform`: evenly spaced spatio-temporal subsampling before the LLM (a baseline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from .base import PRE_LLM, LayerBudget, Method, TokenReduction, proportional_split, separators_first

GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass
class UniformSample(Method):
    """Keep round(ratio · N) tokens spread evenly over time and space.

    Separators are kept; the rest of the budget is split over frames in proportion to their size, and each
    frame keeps evenly spaced cells in raster order. The starting offset shifts by the golden ratio from
    frame to frame, so consecutive frames cover different cells instead of the same columns.

    Departures: none - a baseline with no published decision rule.
    """

    ratio: float = 0.5

    name = "uniform"
    stages = (PRE_LLM,)

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        separators, cells = separators_first(layout, budget.tokens_before_llm(layout.num_tokens))
        frames = torch.unique(layout.frame[~layout.is_separator])
        members = [(layout.frame == f).nonzero().squeeze(1) for f in frames.tolist()]
        quotas = proportional_split(cells, [m.numel() for m in members])
        kept = [separators]
        for frame, tokens, quota in zip(frames.tolist(), members, quotas):
            if quota:
                phase = (frame * GOLDEN) % 1.0
                picks = ((torch.arange(quota, dtype=torch.float64) + phase) * tokens.numel() / quota).long()
                kept.append(tokens[picks.to(tokens.device)])
        return TokenReduction.prune(torch.cat(kept))

