"""The contract between compression methods and the engine.

A method is a small dataclass of knobs. The engine hands it, per sample, the visual tokens of one stage
(features, their layout, the token budget and, on request, attention importance) and gets back a
`TokenReduction`: which tokens stay and how the others fold into them. Methods never see a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ..layout import VisualLayout
from .knobs import check_ratio, knob_annotations, knob_value

PRE_ENCODER, IN_ENCODER = "pre_encoder", "in_encoder"
PRE_LLM, IN_LLM, DECODE = "pre_llm", "in_llm", "decode"
"""The stages, in the order data flows: before and inside the vision tower, before the LLM, inside it, while
decoding."""


def keep_count(ratio: float, total: int) -> int:
    """round(ratio · total), the token count a pre-LLM method keeps."""
    return int(min(max(round(ratio * total), 0), total))


def kept_layer_average(num_layers: int, inner_cut: tuple[int, float] | None) -> float:
    """The layer average of the tokens that enter the LLM when `share` of them go before layer `layer`
    (inner_cut = (layer, share)): (layer + (L − layer) · (1 − share)) / L; 1 without a cut."""
    if inner_cut is None or num_layers <= 1:
        return 1.0
    layer, share = inner_cut
    return (layer + (num_layers - layer) * (1 - share)) / num_layers


class PromptRefused(ValueError):
    """A method cannot compress this prompt as it stands (e.g. it reads frames as full grids and a processor thinned
    them): the message names why and the way out. Other methods may still run on it."""


@dataclass(frozen=True)
class ModelSpec:
    """What a method may know about the model it runs on."""

    model_type: str
    num_layers: int
    mrope: bool = False  # positions are 3-D M-RoPE ids (Qwen-VL), which have no contiguous re-indexing


@dataclass(frozen=True)
class TokenReduction:
    """Per-sample result of a method: the surviving visual tokens and where the others go.

    keep: sorted indices (into the current visual tokens) of the tokens that survive.
    merge_into: optional, one entry per current visual token: the index *into keep* of the token it folds
        into (kept tokens point at themselves), or -1 for a token that is simply dropped. Folding is a
        size-weighted mean, so repeated merges stay unbiased averages.
    """

    keep: torch.Tensor
    merge_into: torch.Tensor | None = None

    @staticmethod
    def prune(keep: torch.Tensor) -> TokenReduction:
        return TokenReduction(torch.sort(keep.long()).values)

    def assignment(self, count: int) -> torch.Tensor:
        """Per current token, its index into `keep` (-1: dropped): `merge_into`, or a pruning's places."""
        if self.merge_into is not None:
            return self.merge_into
        slot = torch.full((count,), -1, dtype=torch.long, device=self.keep.device)
        slot[self.keep] = torch.arange(self.keep.numel(), device=self.keep.device)
        return slot

    def then(self, later: TokenReduction, count: int) -> TokenReduction:
        """This reduction of `count` tokens followed by `later`, a reduction of the tokens this one keeps."""
        first = self.assignment(count)
        second = later.assignment(self.keep.numel())
        merge_into = torch.where(first >= 0, second[first.clamp_min(0)], -1)
        return TokenReduction(self.keep[later.keep], merge_into)

    def keeping(self, index: int, count: int) -> TokenReduction:
        """This reduction of `count` tokens with token `index` surviving at its place: unfolded where it was folded
        into another (tokens folded into it stay)."""
        if self.merge_into is None:
            return TokenReduction.prune(torch.cat([self.keep, self.keep.new_tensor([index])]).unique())
        assignment = self.assignment(count)
        destination = torch.full_like(assignment, -1)
        folded = assignment >= 0  # (a reduction may keep none: nothing to index then)
        destination[folded] = self.keep[assignment[folded]]
        destination[index] = index
        return TokenReduction.from_destinations(destination)

    @staticmethod
    def from_destinations(destination: torch.Tensor) -> TokenReduction:
        """Build a merge from `destination[i]`: the token that token i folds into (itself when kept, -1 dropped)."""
        n = destination.numel()
        arange = torch.arange(n, device=destination.device)
        keep = arange[destination == arange]
        slot_of = torch.full((n,), -1, dtype=torch.long, device=destination.device)
        slot_of[keep] = torch.arange(keep.numel(), device=destination.device)
        merge_into = torch.where(destination >= 0, slot_of[destination.clamp_min(0)], -1)
        return TokenReduction(keep, merge_into)


@dataclass(frozen=True)
class TokenFolding:
    """Inside the tower, per frame (rows of F frames): which tokens fold together (`merge_in_encoder_tokens`).

    keep: (F, k) sorted indices of the tokens that stay, as many in every frame (a folded group takes its
        kept token's place); merge_into: (F, n) each token's index into keep (a kept token: its own);
        weight: (F, n) the factor on each token's size in its group's mean.
    """

    keep: torch.Tensor
    merge_into: torch.Tensor
    weight: torch.Tensor
    carry: torch.Tensor | None = None  # (F, k) per kept token, what the method gets back at its next merge layer

    @staticmethod
    def identity(
        frames: int, tokens: int, device: torch.device | str | None = None, carry: torch.Tensor | None = None
    ) -> TokenFolding:
        """Every token stays on its own."""
        index = torch.arange(tokens, device=device).expand(frames, tokens)
        return TokenFolding(index, index, torch.ones(frames, tokens, device=device), carry)


@dataclass
class TowerTokens:
    """A block of F frames (n tokens each) after vision-tower layer `layer` of the `depth` whose output the model
    takes, as a method folding tokens inside the tower sees it; what the layer's attention says of them is computed
    on request."""

    tokens: torch.Tensor  # (F, n, D) the layer's output
    sizes: torch.Tensor  # (F, n) how many original tokens each stands for
    layer: int
    depth: int
    fixed: int  # the first `fixed` tokens of every frame (a CLS; RADIO's class and register tokens) must stay
    grid_tokens: int  # tokens of a frame before anything folded (fixed ones included)
    carried: torch.Tensor | None  # (F, n) the `carry` of the method's last folding here (None before one)
    # () -> (F, n): Σ_j Ā_ij log Ā_ij of each token's head-mean attention row in that layer
    sharpness: Callable[[], torch.Tensor]
    # () -> (F, heads, n, d) each: the layer's queries, keys (rotary embedded where the tower rotates them) and
    # values, fp32, over each frame's tokens (in a windowed tower, whatever window a token attends in)
    heads: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LayerBudget:
    """The layer-averaged token budget of one sample, seen from the layer a reduction acts before.

    `ratio` is the retained fraction of visual tokens averaged over all LLM layers, so the whole budget is
    ratio · num_visual · num_layers token-layers; `spent` of it went to the layers before `layer`.
    """

    ratio: float
    num_visual: int
    num_layers: int
    layer: int = 0
    spent: int = 0

    def tokens_before_llm(self, available: int, inner_cut: tuple[int, float] | None = None) -> int:
        """round(ratio · num_visual), the count a pre-LLM reduction keeps, at most the `available` tokens (fewer
        than num_visual when an encoder-side stage already dropped some). A method that removes `share` of its
        tokens again before LLM layer `layer` (`inner_cut`) keeps as many more as that leaves room for in the
        layer average: round(ratio / kept_layer_average(...) · num_visual)."""
        share = min(self.ratio / kept_layer_average(self.num_layers, inner_cut), 1.0)
        return min(keep_count(share, self.num_visual), available)

    @property
    def remaining(self) -> float:
        return self.ratio * self.num_visual * self.num_layers - self.spent

    def tokens_per_layer(self) -> int:
        """Tokens to keep in every layer from this one on so that the budget is met (to within one token).

        Never 0 while at least half a token-layer of budget is left: a layer keeps one token rather than
        none, which overshoots the layer average by less than one token.
        """
        count = round(self.remaining / (self.num_layers - self.layer))
        if count <= 0 and self.remaining >= 0.5:
            count = 1
        return int(min(max(count, 0), self.num_visual))


@dataclass
class LayerSample:
    """One sample's visual tokens as seen before decoder layer `layer` during prefill."""

    layer: int
    features: torch.Tensor  # (n, D) current hidden states of the visual tokens
    layout: VisualLayout
    budget: LayerBudget
    memory: dict[str, Any]  # persists across the layers of one forward, for this sample only
    attention_to_visual: Callable[[int], torch.Tensor]  # num_queries -> (n,) head-mean attention of the last queries
    question: torch.Tensor | None = None  # (q, D) hidden states of the text after the last visual token, in order
    # rows of the question (None: all) -> (heads, rows, n) attention each row pays the visual tokens, per head
    question_attention: Callable[[torch.Tensor | None], torch.Tensor] | None = None
    # (last_and_visual=False) -> (queries (Hq, m, d), keys (Hkv, m, d), visual (n,)): the layer's own
    # rotary-embedded q/k of all m tokens of the sample in sequence order (AIM's full graph), or of its visual
    # tokens and its last token only, and where its visual tokens sit among them
    queries_and_keys: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    values: Callable[..., torch.Tensor] | None = None  # (last_and_visual=False) -> (Hkv, m, d): of the same tokens


@dataclass
class DecodeSample:
    """One sample's visual KV entries at one decoding step."""

    attention: torch.Tensor  # (n,) head-mean attention of the current query to each visual KV entry
    memory: dict[str, Any]  # persists across the decoding steps of one generation, for this sample only


@dataclass
class Method:
    """Base class: a compression method is a dataclass of knobs plus one reduce function per stage it acts at."""

    ratio: float = 1.0

    name: ClassVar[str] = ""
    stages: ClassVar[tuple[str, ...]] = ()
    in_encoder_unit: ClassVar[str] = "frame"  # what its in-encoder stage folds: whole frames, or tokens in each
    reads_whole_frames: ClassVar[bool] = False  # whether its LLM stage needs every cell of each frame it sees

    def __post_init__(self) -> None:
        for knob, annotation in knob_annotations(type(self)).items():
            setattr(self, knob, knob_value(self.name or type(self).__name__, knob, getattr(self, knob), annotation))
        self.ratio = check_ratio(self.ratio)

    @classmethod
    def knobs(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.init]

    def compresses(self) -> bool:
        """Whether it changes anything: ratio 1 (and a method with no stage) is the identity."""
        return bool(self.stages) and self.ratio < 1

    def ratio_note(self) -> str:
        """What stats print beside the ratio: nothing for one method; a composition names its other members' own
        ratios."""
        return ""

    def encoder_side(self) -> Method:
        """The method as its encoder-side stages run when they run alone (`EncoderOnly`): itself, unless what it
        does in the tower depends on its LLM-side stages."""
        return self

    def bind(self, spec: ModelSpec) -> Method:
        """The method as it runs on this model: knobs checked against it (ValueError naming the fix) and
        model-dependent defaults filled in, as a copy; `self` when nothing changes. Called by `patch`."""
        return self

    def reindexes_positions(self) -> bool:
        """Whether tokens kept before the LLM get contiguous positions instead of their original ones."""
        return False

    def uses_tower_attention(self) -> bool:
        """Whether its pre-LLM stage reads `layout.saliency`, the attention each token got in the vision tower."""
        return False

    def reads_every_prompt_token(self) -> bool:
        """Whether its in-LLM scores read every prompt token's queries and keys (AIM's attention graph) - which a
        prompt after cached tokens does not have for the cached ones."""
        return False

    def uses_proportional_attention(self) -> bool:
        """Whether a merged token's keys get log(size) added to their attention logits in every later layer."""
        return False

    def reduce_pre_encoder(self, signatures: torch.Tensor) -> torch.Tensor:
        """Sorted indices of the frame units of one video the vision tower encodes (the others are dropped).

        signatures: (units, n, D) the tower's patch embeddings of each frame unit (a frame; for Qwen-VL a
        temporal patch of two frames), a cheap stand-in for what the tower would see.
        """
        raise NotImplementedError(f"{type(self).__name__} does not act before the vision encoder")

    def encoder_merge_layers(self, depth: int) -> list[int]:
        """The vision-tower layers (of the `depth` whose output the model uses) after which `reduce_in_encoder`
        folds frames together."""
        raise NotImplementedError(f"{type(self).__name__} does not act inside the vision encoder")

    def reduce_in_encoder(
        self, frames: torch.Tensor, sizes: torch.Tensor, layer: int, depth: int
    ) -> TokenReduction | None:
        """Which frames of one video fold together after tower layer `layer`, so later layers encode fewer:
        a reduction over the frames, or None to leave them.

        frames: (F, n, D) the hidden states of the frames still in the tower; sizes: (F,) how many of the
        video's frames each stands for (merges are size-weighted means). For towers that can fold frames (a
        batch of images: the LLaVA families, Gemma 4; a packed sequence of temporal patches: Qwen-VL); elsewhere
        the tower encodes every frame.
        """
        raise NotImplementedError(f"{type(self).__name__} does not act inside the vision encoder")

    def merge_in_encoder_tokens(self, frames: TowerTokens) -> TokenFolding | None:
        """Inside every frame, which tokens fold together after tower layer `frames.layer` (`in_encoder_unit`
        "token"), or None to leave them (and drop what it carried)."""
        raise NotImplementedError(f"{type(self).__name__} does not fold tokens inside the vision encoder")

    def folds_with_mass(self) -> bool:
        """Whether tokens folded inside the tower carry their mass into the token they join, so that every later
        tower layer adds each token's log(size) to its keys' logits (proportional attention); a method whose
        folded tokens carry none (pruning) leaves the tower its own attention."""
        return True

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        raise NotImplementedError(f"{type(self).__name__} does not act before the LLM")

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        """Return a reduction to apply before `sample.layer`, or None to leave the tokens as they are."""
        raise NotImplementedError(f"{type(self).__name__} does not act inside the LLM")

    def in_llm_finished(self, sample: LayerSample) -> bool:
        """True once the method will not touch this sample again in this forward (lets the engine stop asking)."""
        return True

    def decode_start_layer(self, spec: ModelSpec) -> int:
        """First decoder layer whose decode-time attention reads only the selected visual KV entries."""
        raise NotImplementedError(f"{type(self).__name__} does not act while decoding")

    def select_decode_kv(self, sample: DecodeSample) -> torch.Tensor:
        """Sorted indices of the visual KV entries the current decoding step attends to."""
        raise NotImplementedError(f"{type(self).__name__} does not act while decoding")


class OnceInLLM(Method):
    """A method that reduces once inside the LLM, before decoder layer `layer` (a knob each declares, int or None:
    None means `preferred_layer`, or the deepest earlier layer that still leaves every later layer a visual
    token)."""

    stages = (IN_LLM,)
    preferred_layer: ClassVar[int] = 2

    def bind(self, spec: ModelSpec) -> Method:
        check_layer(self.name, self.layer, self.ratio, spec)
        return self

    def acting_layer(self, budget: LayerBudget) -> int:
        """K: the given `layer`, or the deepest layer ≤ `preferred_layer` after which every layer keeps a visual
        token."""
        return one_time_layer(self.layer, self.ratio, budget, self.preferred_layer)

    def in_llm_finished(self, sample: LayerSample) -> bool:
        return sample.layer >= self.acting_layer(sample.budget)


def check_layer(method: str, layer: int | None, ratio: float, spec: ModelSpec) -> None:
    """ValueError, naming the fix, where a method that prunes once before decoder `layer` (None: its default)
    cannot act there: past the model's layers, or so deep that the layers before it spend the whole budget."""
    if layer is None:
        return
    if layer >= spec.num_layers:
        raise ValueError(f"{method} layer={layer} but the model has {spec.num_layers} layers; pass a smaller layer")
    if layer >= ratio * spec.num_layers - 1e-9:
        raise ValueError(
            f"{method} at layer {layer} of {spec.num_layers} cannot average a ratio of {ratio:g}: the {layer} layers "
            f"before it see every token and spend the whole budget, so the ratio must be above "
            f"{layer / spec.num_layers:.3f}; lower `layer` (or leave it None) or raise `ratio`"
        )


def one_time_layer(layer: int | None, ratio: float, budget: LayerBudget, preferred: int) -> int:
    """Where a method that reduces once inside the LLM acts: the given `layer`, or else the deepest decoder layer
    ≤ `preferred` (and before the last) before which the reduction still leaves every later layer at least one
    visual token of the budget (0 if none does)."""
    if layer is not None:
        return layer
    for candidate in range(min(preferred, budget.num_layers - 1), 0, -1):
        spent_before = candidate * budget.num_visual
        if LayerBudget(ratio, budget.num_visual, budget.num_layers, candidate, spent_before).tokens_per_layer():
            return candidate
    return 0
