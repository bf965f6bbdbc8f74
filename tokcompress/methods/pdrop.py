"""`pdrop` (PyramidDrop, Xing et al., CVPR'25): drop visual tokens in stages, a fixed fraction at each stage
boundary."""

from __future__ import annotations

from dataclasses import dataclass

from .base import IN_LLM, LayerBudget, LayerSample, Method, ModelSpec, TokenReduction, one_time_layer
from .knobs import check_int
from .selection import top_tokens

PAPER_RATIO = (1 + 0.5 + 0.25 + 0.125) / 4  # λ = 0.5 over four equal stages: the official 8/16/24 of 32 layers


@dataclass
class PDrop(Method):
    """Pyramid-shaped pruning inside the LLM: the LLM is cut into `num_stages` equal runs of layers; before each
    run but the first, the visual tokens are cut to λ^s of the original count, ranked by the attention the
    last instruction token pays them at that layer (its own q/k, as the official code computes it).

    `ratio` sets λ: the layer average of (1, λ, λ², …) is the ratio (the paper's λ = 0.5 with four stages is
    ratio 0.469). λ is solved again at each boundary from the tokens there and the budget left, so the ratio is
    met also where an earlier stage (frame dedup before the tower) left the LLM fewer tokens than the prompt
    held; the last stage absorbs rounding so the layer average meets the ratio within one token.

    ratio: 0.469 (the paper's λ = 0.5); num_stages: 4; num_queries: 1 (the last instruction token).

    Departures:
    - Stage boundaries at multiples of L / num_stages of the model's real depth (the official list is
      [8, 16, 24] for 32 layers), the first moved earlier when the ratio needs it, and λ derived from `ratio`.
    - No stage drops to zero tokens where the budget leaves every layer one (on a few tokens, rounding would).
    - Kept tokens keep their original positions; the official code re-indexes them (and shifts decode
      positions). Left or right padding, any batch size (the official code right-pads).
    """

    ratio: float = PAPER_RATIO
    num_stages: int = 4
    num_queries: int = 1

    name = "pdrop"
    stages = (IN_LLM,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("pdrop", "num_stages", self.num_stages, 2)
        check_int("pdrop", "num_queries", self.num_queries, 1)

    def bind(self, spec: ModelSpec) -> PDrop:
        if self.num_stages > spec.num_layers:
            raise ValueError(
                f"pdrop num_stages={self.num_stages} but the model has {spec.num_layers} layers; pass fewer stages"
            )
        return self

    def boundaries(self, budget: LayerBudget) -> list[int]:
        """The layers before which tokens are dropped: the first run of layers is L / num_stages long, or as much
        shorter as the budget needs (down to dropping before layer 0); the other runs split the rest evenly."""
        num_layers, stages = budget.num_layers, self.num_stages
        first = one_time_layer(None, self.ratio, budget, round(num_layers / stages))
        rest = [first + round(s * (num_layers - first) / (stages - 1)) for s in range(stages - 1)]
        return sorted(set(b for b in rest if b < num_layers))

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        budget = sample.budget
        boundaries = self.boundaries(budget)
        if sample.layer not in boundaries:
            return None
        stage = boundaries.index(sample.layer) + 1
        count = stage_count(budget, sample.features.shape[0], boundaries, stage)
        importance = sample.attention_to_visual(self.num_queries)
        return TokenReduction.prune(top_tokens(importance, count))

    def in_llm_finished(self, sample: LayerSample) -> bool:
        return sample.layer >= self.boundaries(sample.budget)[-1]


def stage_count(budget: LayerBudget, current: int, boundaries: list[int], stage: int) -> int:
    """How many of the `current` tokens a pyramid keeps before `boundaries[stage - 1]`: at the last boundary what
    the budget has left per layer; before that current · λ, where keeping current · (λ, λ², …) over the runs of
    layers from here on spends what is left (the paper's λ^s of the original count on a full prompt)."""
    if current == 0:
        return 0
    if stage == len(boundaries):
        count = budget.tokens_per_layer()
    else:
        runs = [end - start for start, end in zip(boundaries[stage - 1 :], [*boundaries[stage:], budget.num_layers])]
        count = round(current * stage_fraction(budget.remaining / current, runs))
        # no more than leaves every later layer a token (a few tokens' rounding could spend it all)
        count = max(min(count, int((budget.remaining - sum(runs[1:])) // runs[0])), 1)
    return min(count, current)


def stage_fraction(layers_per_token: float, runs: list[int]) -> float:
    """λ in [0, 1] such that runs of layers keeping λ, λ², … of the tokens spend `layers_per_token` token-layers
    per token (bisection; 1 where even keeping every token cannot spend it)."""

    def spent(fraction: float) -> float:
        return sum(length * fraction ** (s + 1) for s, length in enumerate(runs))

    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) < layers_per_token else (low, middle)
    return (low + high) / 2
