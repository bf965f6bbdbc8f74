"""`fastv` (Chen et al., ECCV'24): after the first few layers, drop the visual tokens the last query ignores."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import IN_LLM, LayerSample, Method, ModelSpec, TokenReduction, check_int, top_tokens

PAPER_LAYER = 2


@dataclass
class FastV(Method):
    """Prune visual tokens once, before decoder layer `layer`, by the attention the last query pays them.

    Follows the paper: importance = attention of the last token (mean over heads) over the visual tokens,
    top tokens kept in their original order with their original positions; layers before `layer` see all
    tokens. Departures from the official code: the attention row is computed from layer `layer`'s own q/k
    on its input (as PyramidDrop does), for just the rows needed, beside sdpa/flash attention - no eager
    layer, no duplicated KV; batches of any size and padding; the kept count is set by the layer-averaged
    `ratio` (layers < k keep N, so layers ≥ k keep (ratio·L − k)·N / (L − k)) instead of a fixed rank.

    ratio: float = 0.5
    layer: decoder layer before which tokens are dropped. None (default) means the paper's K = 2, or the
        deepest earlier layer that can still meet the ratio on shallow models.
    num_queries: how many last tokens' attention rows to average (1 in the paper).
    """

    layer: int | None = None
    num_queries: int = 1

    name = "fastv"
    stages = (IN_LLM,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("fastv", "layer", self.layer, 0, optional=True)
        check_int("fastv", "num_queries", self.num_queries, 1)

    def prune_layer(self, num_layers: int) -> int:
        """The layer FastV acts before on a model of `num_layers` layers."""
        deepest = math.floor(self.ratio * num_layers + 1e-9)
        return min(PAPER_LAYER, deepest, num_layers - 1) if self.layer is None else self.layer

    def bind(self, spec: ModelSpec) -> None:
        if self.layer is None:
            return
        if self.layer >= spec.num_layers:
            raise ValueError(f"fastv layer={self.layer} but the model has {spec.num_layers} layers; pass a smaller layer")
        if self.layer > self.ratio * spec.num_layers + 1e-9:
            raise ValueError(
                f"fastv at layer {self.layer} of {spec.num_layers} cannot average a ratio of {self.ratio:g}: "
                f"layers before it see every token, so the ratio must be at least {self.layer / spec.num_layers:.3f}; "
                "lower `layer` (or leave it None) or raise `ratio`"
            )

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        if sample.layer != self.prune_layer(sample.budget.num_layers):
            return None
        importance = sample.attention_to_visual(self.num_queries)
        return TokenReduction.prune(top_tokens(importance, sample.budget.tokens_per_layer()))

    def in_llm_finished(self, sample: LayerSample) -> bool:
        return sample.layer >= self.prune_layer(sample.budget.num_layers)
