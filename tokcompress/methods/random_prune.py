"""`random`: keep a seeded random subset of visual tokens before the LLM (a baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from .base import PRE_LLM, LayerBudget, Method, TokenReduction
from .selection import top_tokens


@dataclass
class RandomPrune(Method):
    """Keep round(ratio · N) visual tokens chosen uniformly at random (separators always kept).

    Each sample draws from its own generator seeded with `seed`, so a sample keeps the same tokens
    whatever its batch mates, and runs are reproducible.

    Departures: none - a baseline with no published decision rule.
    """

    ratio: float = 0.5
    seed: int = 0

    name = "random"
    stages = (PRE_LLM,)

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        generator = torch.Generator().manual_seed(self.seed)
        scores = torch.rand(layout.num_tokens, generator=generator).to(features.device)
        count = budget.tokens_before_llm(layout.num_tokens)
        return TokenReduction.prune(top_tokens(scores, count, layout.is_separator))
