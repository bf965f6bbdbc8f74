"""`flowcut` (FlowCut, Tong et al., NeurIPS'25): progressive pruning inside the vision tower, ranked by how
information flows to each token, and once more after the LLM's layer 1, ranked by the flow to the last token."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..ops import global_query_attention
from .base import (
    IN_ENCODER,
    IN_LLM,
    PRE_LLM,
    LayerBudget,
    LayerSample,
    ModelSpec,
    TokenFolding,
    TokenReduction,
    TowerTokens,
    kept_layer_average,
)
from .knobs import check_int, check_interval
from .selection import top_tokens
from .tome import ToMeAfterTower

PAPER_INNER_LAYER = 2  # the LLaVA-NeXT and Qwen variants prune after LLM layer 1


@dataclass
class FlowCut(ToMeAfterTower):
    """Inside the vision tower (where it can fold: the LLaVA families' and Gemma 4's batch of images, Qwen-VL's
    packed sequence of temporal patches), every frame drops tokens step by step, so that each later layer runs on
    fewer. After every other layer, ending with the one before the last the model reads, a token's score is its
    share of the attention of the frame's global query (its CLS row; without a CLS, the mean of its queries) - plus,
    with a CLS, its share of softmax(v_CLS · v_j) - times ‖mean over heads of v_j‖₁; the scores flow through the
    layers as cum ← (cum + score) / 2, and the frame keeps its best tokens by cum. A step r layers before the last
    pruning layer drops (n − T) / √r of the n tokens left, T = round(tower_ratio · the frame's tokens); the last one
    leaves T exactly. The tower's output is expanded back to the full grid (each dropped token reads its most
    similar kept one, cosine of the layer's output, and adds no weight to it), so the model's own pooling and merger
    run unchanged; before the LLM each frame's repeats fold first, then `tome` meets the count. Inside the LLM (its
    LLaVA-NeXT and Qwen variants), layer `inner_layer` − 1 scores the visual tokens by the last token's flow - its
    share of softmax(q · k_j / √d) plus its share of softmax(v · v_j / √d), head means, times
    ‖mean over heads of v_j‖₁, from that layer's own projections - and those with the lowest scores are dropped
    before layer `inner_layer`, down to what the layer budget leaves (about 1 − `inner_prune` of them stay). The
    count before the LLM (and by default the tower's) is what that leaves room for in the layer average, so from a
    ratio of about kept_layer_average(L, (2, inner_prune)) (0.54 on 28 layers) the tower keeps every token.

    ratio: 0.3; tower_ratio: the share of each frame's tower tokens left after the last pruning layer (None: the
    share the LLM gets before its inner step; the ratio when inner_prune is 0 or as `flowcut@encoder`);
    inner_layer: 2 (after layer 1, as published; the last layer on shallower ones, none on a one-layer LLM);
    inner_prune: 0.5 (the Qwen variant's tower keeps twice the final count; 0 turns the step off); window,
    proportional_attention (default off: a dropped token carries no weight): as `tome`.

    Departures:
    - The paper scales every step by (1 − e²), e the normalised entropy of the global query's attention, and takes
      the largest count over the batch. Here a batched tower holds the frames of every sample, so that count would
      let batch mates change a sample's tokens: every step drops (n − T) / √r - the schedule at e = 0, which
      drops earlier and saves more of the tower.
    - Scores are read at the pruning layers only (the paper: every layer), from the queries, keys and values the
      layer's own attention projected; cum flows over those.
    - The last step follows the layer before the last the model reads (CLIP's as published; the Qwen2-VL variant
      prunes after its last block), so that one layer runs on the kept tokens. Towers without a CLS (SigLIP, the
      Qwen-VL family) take the Qwen variant's score (relation × ‖v‖₁); in Qwen2.5-VL's windowed layers the global
      query still looks at its whole frame unit.
    - The paper hands the LLM the survivors (LLaVA-1.5) or concatenates any four of them (the Qwen variant's
      merger); here the tower's output keeps its grid (above) and `tome` meets the count before the LLM.
    - The LLM step adds the normalised relation and semantic shares as the LLaVA-NeXT variant does (the Qwen
      variant adds the raw ones); counts follow the layer-averaged `ratio`, not a fixed target_num.
    - InternVL's tower encodes before the prompt is read, and SmolVLM's and Gemma 4's encode each frame without
      folding: there only `tome`'s stage and the LLM step run.
    """

    ratio: float = 0.3
    tower_ratio: float | None = None
    inner_layer: int | None = None
    inner_prune: float = 0.5
    proportional_attention: bool = False
    _llm_layers: int | None = dataclasses.field(default=None, init=False, repr=False, compare=False)  # from bind

    name = "flowcut"
    stages = (IN_ENCODER, PRE_LLM, IN_LLM)
    in_encoder_unit = "token"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_interval("flowcut", "tower_ratio", self.tower_ratio, "(0, 1]", optional=True)
        check_int("flowcut", "inner_layer", self.inner_layer, 1, optional=True)
        check_interval("flowcut", "inner_prune", self.inner_prune, "[0, 1)")

    def encoder_side(self) -> FlowCut:
        """Alone in the tower its frames keep `tower_ratio`, else the ratio: no LLM step to leave room for."""
        return dataclasses.replace(self, inner_prune=0.0)

    def bind(self, spec: ModelSpec) -> FlowCut:
        """A copy that knows the LLM's depth, for the tower's default share; the knobs stay as given, so a new
        ratio (`handle.ratio = ...`, which binds again) moves that share with it."""
        if self.inner_layer is not None and self.inner_layer >= spec.num_layers:
            raise ValueError(
                f"flowcut inner_layer={self.inner_layer} but the model has {spec.num_layers} layers; pass a smaller one"
            )
        bound = dataclasses.replace(self)
        bound._llm_layers = spec.num_layers
        return bound

    def tower_share(self) -> float:
        """The share of each frame's tower tokens the last pruning layer leaves: `tower_ratio`, or what the LLM
        gets before its inner step (the ratio where there is none, or before `bind` told it the LLM's depth)."""
        if self.tower_ratio is not None:
            return self.tower_ratio
        if self._llm_layers is None:
            return self.ratio
        return min(self.ratio / kept_layer_average(self._llm_layers, self._inner_cut(self._llm_layers)), 1.0)

    def _inner_cut(self, num_layers: int) -> tuple[int, float] | None:
        """(layer, share): its LLM step drops `inner_prune` of the visual tokens before `inner_layer` (2, after
        layer 1 as published; the last layer on shallower models); None when off or the LLM has one layer."""
        if not self.inner_prune or num_layers < 2:
            return None
        layer = self.inner_layer if self.inner_layer is not None else min(PAPER_INNER_LAYER, num_layers - 1)
        return layer, self.inner_prune

    def tokens_into_llm(self, budget: LayerBudget, available: int) -> int:
        return budget.tokens_before_llm(available, self._inner_cut(budget.num_layers))

    def folds_with_mass(self) -> bool:
        return False

    def encoder_merge_layers(self, depth: int) -> list[int]:
        """Every other layer, ending with the one before the last that the model reads (layer 0 for a 2-layer one)."""
        return list(range(depth - 2, -1, -2))[::-1]

    def merge_in_encoder_tokens(self, frames: TowerTokens) -> TokenFolding | None:
        tokens, fixed = frames.tokens, frames.fixed
        rows, count, _ = tokens.shape
        free = count - fixed
        target = max(round(self.tower_share() * (frames.grid_tokens - fixed)), 1)
        if free <= target:
            return None
        flow = torch.zeros(rows, count, device=tokens.device)
        flow[:, fixed:] = information_flow(*frames.heads(), fixed)
        if frames.carried is not None:
            flow = (frames.carried + flow) / 2
        layers_left = frames.depth - 2 - frames.layer  # to the last pruning layer
        drops = free - target if layers_left == 0 else round((free - target) / math.sqrt(layers_left))
        if drops <= 0:
            return TokenFolding.identity(rows, count, tokens.device, carry=flow)
        ranked = torch.sort(flow[:, fixed:], dim=1, descending=True, stable=True).indices + fixed
        kept, dropped = ranked[:, : free - drops].sort(dim=1).values, ranked[:, free - drops :]
        keep = torch.cat([torch.arange(fixed, device=tokens.device).expand(rows, fixed), kept], dim=1)
        is_kept = torch.zeros(rows, count, dtype=torch.bool, device=tokens.device).scatter_(1, keep, True)
        unit = torch.nn.functional.normalize(tokens.float(), dim=-1)
        dropped_units, kept_units = (
            unit.gather(1, index[..., None].expand(-1, -1, unit.shape[-1])) for index in (dropped, keep)
        )
        similarity = dropped_units @ kept_units.transpose(1, 2)  # (F, drops, kept)
        similarity[..., :fixed] = -torch.inf  # a dropped token never reads the CLS
        merge_into = (torch.cumsum(is_kept, dim=1) - 1).scatter_(1, dropped, similarity.argmax(dim=-1))
        return TokenFolding(keep, merge_into, is_kept.float(), carry=flow.gather(1, keep))


    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        cut = self._inner_cut(sample.budget.num_layers)
        if cut is None:
            return None
        if sample.layer == cut[0] - 1:  # the layer before scores, as published: the last token's q and v
            queries, keys, visual = sample.queries_and_keys(last_and_visual=True)
            values = sample.values(last_and_visual=True)
            sample.memory["flow"] = instruction_flow(queries[:, -1], keys[:, visual], values[:, -1], values[:, visual])
            return None
        if sample.layer != cut[0]:
            return None
        flow = sample.memory.pop("flow")
        count = sample.features.shape[0]
        keep = min(sample.budget.tokens_per_layer(), count)
        return TokenReduction.prune(top_tokens(flow, keep)) if keep < count else None

    def in_llm_finished(self, sample: LayerSample) -> bool:
        cut = self._inner_cut(sample.budget.num_layers)
        return cut is None or sample.layer >= cut[0]


def instruction_flow(
    query: torch.Tensor, keys: torch.Tensor, query_value: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """FlowCut's LLM-side score of each visual token: its share of the last token's attention over the visual
    tokens, softmax(q · k_j / √d), plus its share of softmax(v · v_j / √d) - each a head mean - times ‖mean over
    heads of v_j‖₁.

    query: (Hq, d); keys: (Hkv, n, d); query_value: (Hkv, d); values: (Hkv, n, d), grouped-query aware → (n,) fp32.
    """
    keys = keys.repeat_interleave(query.shape[0] // keys.shape[0], dim=0)
    relation = global_query_attention(query[None, :, None], keys[None], from_first=True)[0]
    values = values.float()
    semantic = (query_value.float()[:, None] @ values.transpose(-1, -2) * values.shape[-1] ** -0.5).softmax(dim=-1)
    semantic = semantic[:, 0].mean(dim=0)
    share = relation / relation.sum().clamp_min(1e-30) + semantic / semantic.sum().clamp_min(1e-30)
    return share * values.mean(dim=0).abs().sum(dim=-1)


def information_flow(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, fixed: int) -> torch.Tensor:
    """FlowCut's score of each token after the first `fixed` (a CLS) in one layer: its share of the global query's
    attention - plus, with a CLS, its share of softmax(v_CLS · v_j) - times ‖mean over heads of v_j‖₁.

    queries, keys, values: (F, heads, n, d) → (F, n − fixed) fp32.
    """
    values = values.float()
    relation = global_query_attention(queries, keys, from_first=fixed > 0)[:, fixed:]
    score = relation / relation.sum(dim=1, keepdim=True).clamp_min(1e-30)
    if fixed:
        semantic = (values[:, :, :1] @ values.transpose(-1, -2)).softmax(dim=-1)[:, :, 0].mean(dim=1)[:, fixed:]
        score = score + semantic / semantic.sum(dim=1, keepdim=True).clamp_min(1e-30)
    return score * values.mean(dim=1)[:, fixed:].abs().sum(dim=-1)
