"""Composition: methods that act at different stages run as one, in the order data flows; `EncoderOnly` keeps
a method's encoder-side stages alone, so that one acting in the tower and before the LLM composes too."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from .base import (
    DECODE,
    IN_ENCODER,
    IN_LLM,
    PRE_ENCODER,
    PRE_LLM,
    DecodeSample,
    LayerBudget,
    LayerSample,
    Method,
    ModelSpec,
    TokenFolding,
    TokenReduction,
    TowerTokens,
)
from .knobs import check_ratio

ENCODER_STAGES = (PRE_ENCODER, IN_ENCODER)
ENCODER_SUFFIX = "@encoder"  # "earlytom@encoder": EncoderOnly(EarlyTom()), in names and in `build_method`
LLM_STAGES = (PRE_LLM, IN_LLM, DECODE)


@dataclass
class Compose(Method):
    """Several methods, each acting at its own stage: e.g. frame dedup before the vision tower, then FrameFusion.

    `tokcompress.patch(model, method=[FrameDedup(), FrameFusion(ratio=0.3)])` builds one. Every stage is handled
    by the one member that acts at it. `ratio` is the LLM budget with its usual meaning - the layer-averaged
    fraction of the original visual tokens, whatever an encoder-side member already removed - and belongs to
    the member that acts last in the prefill (inside the LLM, else before it): reading or setting it reads or
    sets that member's. A member acting before the LLM beside another pruning inside it keeps its own ratio's
    share of the tokens (more than the budget: refused otherwise), and the in-LLM member meets the budget
    from there, whatever the order they are listed in.

    Departures: none - it only delegates.
    """

    ratio: float | None = None
    methods: tuple[Method, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.ratio, (list, tuple)):  # Compose([A(), B()]) or Compose([A(), B()], 0.3): the natural call
            self.ratio, self.methods = (self.methods or None), self.ratio
        members = tuple(self.methods)
        if len(members) < 2 or not all(isinstance(m, Method) and not isinstance(m, Compose) for m in members):
            raise TypeError(f"Compose takes two or more tokcompress methods (not compositions), got {members!r}")
        for stage in (*ENCODER_STAGES, *LLM_STAGES):
            acting = [m for m in members if stage in m.stages]
            if len(acting) > 1:
                encoder_side = [m.name for m in acting if set(m.stages) & set(ENCODER_STAGES)]
                hint = f" (or keep {encoder_side[0]}'s tower stage alone: {encoder_side[0]}{ENCODER_SUFFIX})" if (
                    encoder_side and stage in LLM_STAGES) else ""
                raise ValueError(
                    f"{' and '.join(m.name for m in acting)} both act at the {stage} stage; compose methods of "
                    f"different stages{hint}"
                )
        budget_holder = self._budget_holder(members)
        if self.ratio is not None:
            ratio = check_ratio(self.ratio)
            members = tuple(dataclasses.replace(m, ratio=ratio) if m is budget_holder else m for m in members)
            budget_holder = self._budget_holder(members)
        self.methods = members
        self.ratio = budget_holder.ratio
        for member in members:  # a frame-dropping member keeps at most its share; nothing adds tokens back after it
            if PRE_ENCODER in member.stages and member is not budget_holder and member.ratio < self.ratio < 1:
                raise ValueError(
                    f"{member.name} keeps at most {member.ratio:g} of the frames before the vision tower, below the "
                    f"budget {self.ratio:g} that {budget_holder.name} is to meet after it: give {member.name} a ratio "
                    f"of at least {self.ratio:g} (e.g. {type(member).__name__}(ratio={self.ratio:g}), spelt "
                    f"{member.name}:ratio={self.ratio:g}), or ask a ratio of at most {member.ratio:g}"
                )
        before = self._pre_llm_share()
        if before is None:
            return
        tower_stage = f"{before.name}{ENCODER_SUFFIX}" if set(before.stages) & set(ENCODER_STAGES) else None
        if before.ratio < 1 and self._at(IN_LLM).reads_whole_frames:
            alone = f", or {before.name}'s tower stage alone: {tower_stage}" if tower_stage else ""
            raise ValueError(
                f"{self._at(IN_LLM).name} needs every cell of each frame it sees, and {before.name} drops cells "
                f"inside frames before the LLM: compose it after a method that keeps or drops whole frames "
                f"(framededup{alone})"
            )
        if before.ratio <= self.ratio < 1:
            wider = min(2 * self.ratio, 1.0)
            alone = f", or keep its encoder stage alone ({tower_stage})" if tower_stage else ""
            raise ValueError(
                f"{before.name} keeps {before.ratio:g} of the visual tokens before the LLM, no more than the budget "
                f"{self.ratio:g} that {budget_holder.name} is to meet inside it, which then has nothing to prune: "
                f"give {before.name} a ratio above {self.ratio:g} (e.g. {type(before).__name__}(ratio={wider:g}), "
                f"spelt {before.name}:ratio={wider:g}){alone}"
            )

    @staticmethod
    def _budget_holder(members: tuple[Method, ...]) -> Method:
        """The member acting last in the prefill: in the LLM, else before it, else the last one listed."""
        for stage in (IN_LLM, PRE_LLM, DECODE):
            acting = [m for m in members if stage in m.stages]
            if acting:
                return acting[0]
        return members[-1]

    def _pre_llm_share(self) -> Method | None:
        """The member that acts before the LLM when another one prunes inside it: it keeps its own ratio's share,
        so that the in-LLM member has the rest of the budget to meet (else None)."""
        if PRE_LLM not in self.stages or IN_LLM not in self.stages or self._at(PRE_LLM) is self._at(IN_LLM):
            return None
        return self._at(PRE_LLM)

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.methods)

    def ratio_note(self) -> str:
        """The members other than the budget's holder, each with its own ratio: "framededup at 0.5"."""
        holder = self._budget_holder(self.methods)
        return ", ".join(f"{m.name} at {m.ratio:g}" for m in self.methods if m is not holder)

    @property
    def stages(self) -> tuple[str, ...]:
        stages = (*ENCODER_STAGES, *LLM_STAGES)
        return tuple(stage for stage in stages if any(stage in m.stages for m in self.methods))

    def _at(self, stage: str) -> Method:
        return next(m for m in self.methods if stage in m.stages)

    def compresses(self) -> bool:
        return any(m.compresses() for m in self.methods)

    def bind(self, spec: ModelSpec) -> Compose:
        return Compose(methods=tuple(m.bind(spec) for m in self.methods))

    def uses_proportional_attention(self) -> bool:
        return any(m.uses_proportional_attention() for m in self.methods)

    def reindexes_positions(self) -> bool:
        return any(m.reindexes_positions() for m in self.methods)

    def uses_tower_attention(self) -> bool:
        return any(m.uses_tower_attention() for m in self.methods)

    def reads_every_prompt_token(self) -> bool:
        return any(m.reads_every_prompt_token() for m in self.methods)

    def reduce_pre_encoder(self, signatures: torch.Tensor) -> torch.Tensor:
        return self._at(PRE_ENCODER).reduce_pre_encoder(signatures)

    def encoder_merge_layers(self, depth: int) -> list[int]:
        return self._at(IN_ENCODER).encoder_merge_layers(depth)

    def reduce_in_encoder(
        self, frames: torch.Tensor, sizes: torch.Tensor, layer: int, depth: int
    ) -> TokenReduction | None:
        return self._at(IN_ENCODER).reduce_in_encoder(frames, sizes, layer, depth)

    @property
    def in_encoder_unit(self) -> str:
        return self._at(IN_ENCODER).in_encoder_unit if IN_ENCODER in self.stages else "frame"

    def merge_in_encoder_tokens(self, frames: TowerTokens) -> TokenFolding | None:
        return self._at(IN_ENCODER).merge_in_encoder_tokens(frames)

    def folds_with_mass(self) -> bool:
        return self._at(IN_ENCODER).folds_with_mass() if IN_ENCODER in self.stages else True

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        before = self._pre_llm_share()
        if before is not None:
            budget = dataclasses.replace(budget, ratio=before.ratio)
        return self._at(PRE_LLM).reduce_pre_llm(features, layout, budget)

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        return self._at(IN_LLM).reduce_in_llm(sample)

    def in_llm_finished(self, sample: LayerSample) -> bool:
        return self._at(IN_LLM).in_llm_finished(sample)

    def decode_start_layer(self, spec: ModelSpec) -> int:
        return self._at(DECODE).decode_start_layer(spec)

    def select_decode_kv(self, sample: DecodeSample) -> torch.Tensor:
        return self._at(DECODE).select_decode_kv(sample)


@dataclass(init=False)
class EncoderOnly(Method):
    """Only the encoder-side stages (pre-encoder, in-encoder) of a method that also acts in the LLM, so that it
    composes with any LLM-side method: `[EncoderOnly(EarlyTom(ratio=0.3)), FrameFusion(ratio=0.3)]` folds
    frames inside the vision tower, then FrameFusion runs on the frames that stood. `ratio` is the inner
    method's (its own cap on what the encoder side removes); alone, the LLM gets the frames that stood.

    Departures: none - it only delegates.
    """

    ratio: float | None = None
    method: Method | None = None

    def __init__(self, method: Method, ratio: float | None = None):
        self.method, self.ratio = method, ratio
        self.__post_init__()

    def __post_init__(self) -> None:
        inner = self.method
        if not isinstance(inner, Method) or isinstance(inner, (Compose, EncoderOnly)):
            raise TypeError(f"EncoderOnly takes one tokcompress method (not a composition), got {inner!r}")
        if not set(inner.stages) & set(ENCODER_STAGES):
            raise ValueError(
                f"{inner.name} acts at no encoder stage ({', '.join(inner.stages) or 'none'}); use it as it is"
            )
        if self.ratio is not None:
            inner = dataclasses.replace(inner, ratio=check_ratio(self.ratio))
        inner = inner.encoder_side()
        self.method, self.ratio = inner, inner.ratio

    @property
    def name(self) -> str:
        return f"{self.method.name}{ENCODER_SUFFIX}"

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(stage for stage in ENCODER_STAGES if stage in self.method.stages)

    @property
    def in_encoder_unit(self) -> str:
        return self.method.in_encoder_unit

    def compresses(self) -> bool:
        return self.method.compresses()

    def bind(self, spec: ModelSpec) -> EncoderOnly:
        return EncoderOnly(method=self.method.bind(spec))

    def reduce_pre_encoder(self, signatures: torch.Tensor) -> torch.Tensor:
        return self.method.reduce_pre_encoder(signatures)

    def encoder_merge_layers(self, depth: int) -> list[int]:
        return self.method.encoder_merge_layers(depth)

    def reduce_in_encoder(
        self, frames: torch.Tensor, sizes: torch.Tensor, layer: int, depth: int
    ) -> TokenReduction | None:
        return self.method.reduce_in_encoder(frames, sizes, layer, depth)

    def merge_in_encoder_tokens(self, frames: TowerTokens) -> TokenFolding | None:
        return self.method.merge_in_encoder_tokens(frames)

    def folds_with_mass(self) -> bool:
        return self.method.folds_with_mass()
