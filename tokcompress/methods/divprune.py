"""`divprune` (Alvar et al., CVPR'25): keep the most diverse visual tokens, by greedy max-min distance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from .base import PRE_LLM, LayerBudget, Method, TokenReduction
from .selection import separators_first

CHUNK = 4096  # rows of the similarity matrix computed at a time


@dataclass
class DivPrune(Method):
    """Diversity pruning before the LLM, as a max-min subset selection (from the paper).

    With distance D = 1 − cosine between the projected visual tokens, the first token kept is the one whose
    nearest neighbour is farthest; then, repeatedly, the token farthest from everything kept so far (the
    largest minimum distance) joins, until round(ratio · N) tokens are kept, in their original order. No
    attention is needed, so any attention backend works.

    ratio: 0.098 (the official default: 9.8 % kept).

    Departures:
    - From the paper only (the official code's license is non-commercial): nothing of it was read.
    - Separators (LLaVA-OV's newline) are kept first and count toward the budget.
    - Kept tokens keep their original positions; the official code re-indexes them.
    - Each sample of a batch is pruned on its own, with every video of a sample in one pool.
    """

    ratio: float = 0.098

    name = "divprune"
    stages = (PRE_LLM,)

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        separators, budget_cells = separators_first(layout, budget.tokens_before_llm(layout.num_tokens))
        cells = (~layout.is_separator).nonzero().squeeze(1)
        picks = max_min_diverse(features[cells], budget_cells)
        return TokenReduction.prune(torch.cat([separators, cells[picks]]))


def max_min_diverse(features: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of `count` tokens chosen greedily by max-min cosine distance (the first: farthest nearest neighbour)."""
    n = features.shape[0]
    if count <= 0 or n == 0:
        return torch.zeros(0, dtype=torch.long, device=features.device)
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    nearest = torch.empty(n, device=features.device)
    for start in range(0, n, CHUNK):
        similarity = unit[start : start + CHUNK] @ unit.T
        rows = torch.arange(similarity.shape[0], device=features.device)
        similarity[rows, start + rows] = float("-inf")  # not its own neighbour
        nearest[start : start + CHUNK] = 1 - similarity.max(dim=1).values
    picks = torch.empty(min(count, n), dtype=torch.long, device=features.device)  # on the device: no sync a pick
    pick = nearest.argmax().view(1)
    closest = torch.full_like(nearest, float("inf"))  # each token's distance to the nearest kept one
    for i in range(len(picks)):
        picks[i] = pick[0]
        closest = torch.minimum(closest, 1 - unit @ unit[pick][0]).index_fill_(0, pick, float("-inf"))
        pick = closest.argmax().view(1)  # kept tokens stay at -inf: never picked twice
    return picks
