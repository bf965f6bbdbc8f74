"""`framefusion` (Fu et al., ICCV'25): merge temporally redundant tokens in the first layers, then prune."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..ops import aligned_cosine
from .base import IN_LLM, LayerSample, Method, ModelSpec, TokenReduction
from .knobs import check_int, check_interval
from .selection import top_tokens

# The official code's per-family settings: S_th 0.5 and the last 4 queries for Qwen2-VL, 0.6 and 1 elsewhere.
FAMILY_DEFAULTS = {"qwen2_vl": (0.5, 4), "qwen2_5_vl": (0.5, 4)}
DEFAULTS = (0.6, 1)


@dataclass
class FrameFusion(Method):
    """Cascaded temporal merging inside the LLM, then importance pruning to meet the layer-averaged ratio.

    Before each of the first layers, every visual token is compared (cosine) with the closest earlier
    surviving token at the same spatial cell; tokens at or above `similarity_threshold` fold into that
    predecessor (runs of similar tokens collapse onto the first dissimilar one, so the first frame is never
    merged away). Merging stops at the first layer that merges less than `min_merge_ratio` of the tokens;
    the next layer prunes the rest of the budget by the attention of the last `num_queries` tokens. Kept
    tokens keep their original positions. The budget is the paper's cost model with the model's real
    layer count: a layer never merges more than the budget allows, and if merging alone meets it no
    pruning follows.

    ratio: float = 0.3 (the paper's cost)
    similarity_threshold: S_th; None (default) takes the official per-family value, 0.5 for Qwen2-VL and
        Qwen2.5-VL, 0.6 elsewhere.
    min_merge_ratio: 0.1
    num_queries: last queries whose attention rows rank tokens; None (default) takes the official value,
        4 for Qwen2-VL and Qwen2.5-VL, 1 elsewhere.

    Departures:
    - Where it acts: between decoder layers, on each layer's output. The official code merges between
      attention and MLP (post-attention states; layer 0 also before its attention) and prunes inside the
      next layer after its attention. Here the layer that scores runs its attention on the pruned tokens
      too, and similarity is measured one MLP later; the scores themselves are that layer's attention of
      the last queries, as in the official code.
    - Merges are size-weighted means (sizes tracked across layers); the official code averages unweighted
      and re-merges anchors as if they were single tokens.
    - The cost model uses the model's real layer count (the official code hard-codes 28).
    - Rounding: a layer merges at most count − round(budget per layer) tokens, where the official bound is
      int(upper ratio · count) (they can differ by one token).
    - A shallow model that cannot wait a layer prunes in the same step instead of raising "cost is too
      small"; any batch size and padding.
    """

    ratio: float = 0.3
    similarity_threshold: float | None = None
    min_merge_ratio: float = 0.1
    num_queries: int | None = None

    name = "framefusion"
    stages = (IN_LLM,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_interval("framefusion", "similarity_threshold", self.similarity_threshold, "[-1, 1]", optional=True)
        check_interval("framefusion", "min_merge_ratio", self.min_merge_ratio, "[0, 1]")
        check_int("framefusion", "num_queries", self.num_queries, 1, optional=True)

    def bind(self, spec: ModelSpec) -> FrameFusion:
        threshold, num_queries = FAMILY_DEFAULTS.get(spec.model_type, DEFAULTS)
        return dataclasses.replace(
            self,
            similarity_threshold=threshold if self.similarity_threshold is None else self.similarity_threshold,
            num_queries=num_queries if self.num_queries is None else self.num_queries,
        )

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        memory, budget = sample.memory, sample.budget
        count = sample.features.shape[0]
        target = budget.tokens_per_layer()  # tokens every layer from here on keeps if we stopped now
        destination = torch.arange(count, device=sample.features.device)
        prune = memory.pop("prune_next", False)
        if not memory.get("merging_done"):
            predecessor = sample.layout.temporal_predecessor()
            similarity = aligned_cosine(sample.features, predecessor)
            similar = similarity >= self.similarity_threshold
            allowed = count - target  # merging more would undershoot the budget
            if int(similar.sum()) < allowed:
                marked = similar
                memory["merging_done"] = bool(similar.sum() < self.min_merge_ratio * count)
                memory["prune_next"] = memory["merging_done"]
            else:
                marked = torch.zeros_like(similar)
                marked[top_tokens(similarity, allowed)] = True
                memory["merging_done"] = memory["finished"] = True
            destination = fold_into_unmarked_predecessor(marked, predecessor)
        survivors = count - int((destination != torch.arange(count, device=destination.device)).sum())
        last_layer = budget.layer == budget.num_layers - 1
        if not memory.get("finished") and (prune or last_layer or survivors > budget.remaining):
            importance = sample.attention_to_visual(self.num_queries)
            group_importance = torch.zeros_like(importance).index_add_(0, destination, importance)
            anchors = (destination == torch.arange(count, device=destination.device)).nonzero().squeeze(1)
            kept = anchors[top_tokens(group_importance[anchors], min(target, anchors.numel()))]
            survives = torch.zeros(count, dtype=torch.bool, device=destination.device)
            survives[kept] = True
            destination = torch.where(survives[destination], destination, -1)
            memory["finished"] = True
            memory.pop("prune_next", None)
        if bool((destination == torch.arange(count, device=destination.device)).all()):
            return None
        return TokenReduction.from_destinations(destination)

    def in_llm_finished(self, sample: LayerSample) -> bool:
        return bool(sample.memory.get("finished"))


def fold_into_unmarked_predecessor(marked: torch.Tensor, predecessor: torch.Tensor) -> torch.Tensor:
    """destination[i]: i itself if unmarked, else the nearest unmarked token up its predecessor chain (-1: none).
    Pointer doubling - each round a token takes its target's target - so a chain of L marked frames takes
    log2(L) rounds, not L."""
    destination = torch.arange(marked.numel(), device=marked.device)
    destination = torch.where(marked, predecessor, destination)
    while True:
        pending = (destination >= 0) & marked[destination.clamp_min(0)]  # still points at a marked token
        if not bool(pending.any()):
            return destination
        destination = torch.where(pending, destination[destination.clamp_min(0)], destination)
