"""`uniform`: evenly spaced spatio-temporal subsampling before the LLM (a baseline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from .base import PRE_LLM, LayerBudget, Method, TokenReduction
from .selection import proportional_split, separators_first

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
        tokens = (~layout.is_separator).nonzero().squeeze(1)
        tokens = tokens[torch.sort(layout.frame[tokens], stable=True).indices]  # frame by frame, in order
        sizes = torch.bincount(layout.frame[tokens])
        quotas = torch.tensor(proportional_split(cells, sizes.tolist()), device=tokens.device)
        frame = torch.repeat_interleave(torch.arange(len(sizes), device=tokens.device), quotas)  # of each pick
        pick = torch.arange(len(frame), device=tokens.device) - (quotas.cumsum(0) - quotas)[frame]
        phase = (frame.double() * GOLDEN) % 1.0
        offset = ((pick + phase) * sizes[frame] / quotas[frame]).long()  # `quota` evenly spaced, phase-shifted
        return TokenReduction.prune(torch.cat([separators, tokens[(sizes.cumsum(0) - sizes)[frame] + offset]]))

