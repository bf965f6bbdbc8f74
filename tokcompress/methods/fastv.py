"""`fastv` (Chen et al., ECCV'24): after the first few layers, drop the visual tokens the last query ignores."""

from __future__ import annotations

from dataclasses import dataclass

from .base import LayerSample, OnceInLLM, TokenReduction
from .knobs import check_choice, check_int
from .selection import top_tokens

PAPER_LAYER = 2
SCORINGS = ("previous_layer", "same_layer")


@dataclass
class FastV(OnceInLLM):
    """Prune visual tokens once, before decoder layer K, by the attention the last query pays them.

    As in the paper and its official code: importance = attention of the last token over the visual tokens
    at layer K−1 (mean over heads), computed from that layer's own q/k on its input; the top tokens are kept
    in their original order with their original positions; layers before K see every token.

    ratio: 0.5
    layer: K, the decoder layer before which tokens are dropped. None (default) means the paper's K = 2, or
        the deepest earlier layer that still leaves every later layer at least one visual token.
    num_queries: how many last tokens' attention rows to average (1 in the paper).
    scoring: "previous_layer" (the official code: layer K−1's attention) or "same_layer" (layer K's own, as
        PyramidDrop scores). At K = 0 both use layer 0.

    Departures:
    - The attention row comes from the scoring layer's q/k for just the rows needed, beside sdpa/flash
      attention: no eager layer, no duplicated KV, any batch size and padding.
    - The kept count comes from the layer-averaged `ratio` (layers < K keep N, so layers ≥ K keep
      (ratio·L − K)·N / (L − K)) instead of a fixed rank R, and never rounds to zero while budget is left.
    - With the KV cache, pruning happens once at prefill (the official HF fork's cached behaviour).
    """

    ratio: float = 0.5
    layer: int | None = None
    num_queries: int = 1
    scoring: str = "previous_layer"

    name = "fastv"
    preferred_layer = PAPER_LAYER

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("fastv", "layer", self.layer, 0, optional=True)
        check_int("fastv", "num_queries", self.num_queries, 1)
        check_choice("fastv", "scoring", self.scoring, SCORINGS)

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        layer = self.acting_layer(sample.budget)
        scoring_layer = max(layer - 1, 0) if self.scoring == "previous_layer" else layer
        if sample.layer == scoring_layer:
            sample.memory["importance"] = sample.attention_to_visual(self.num_queries)
        if sample.layer != layer:
            return None
        importance = sample.memory.pop("importance")
        return TokenReduction.prune(top_tokens(importance, sample.budget.tokens_per_layer()))
