"""`dycoke` (Tao et al., CVPR'25): temporal token pruning before the LLM, dynamic visual-KV selection while decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from ..ops import aligned_cosine
from .base import DECODE, PRE_LLM, DecodeSample, LayerBudget, Method, ModelSpec, TokenReduction, keep_count
from .knobs import check_choice, check_int, check_interval
from .selection import proportional_split, separators_first, top_tokens, top_tokens_per_group

POSITIONS = ("original", "contiguous")
GROUP = 4  # frames per temporal group: one anchor and three frames pruned against it
PAPER_DECODE_LAYER = 3


@dataclass
class DyCoke(Method):
    """Temporal token merging (TTM) before the LLM plus dynamic KV selection at decode time.

    TTM, as in the paper: frames form groups of four; frame 0 of a group is its anchor and stays whole;
    frames 1 and 3 are compared (cosine, same cell) with frames 0 and 2, frame 2 with frame 0, and each
    keeps only its least similar - most novel - tokens. `ratio` sets how many: round(ratio · N) visual
    tokens survive and every layer sees them (pre-LLM). Below the share of the anchors alone, the anchors
    are thinned the same way against the previous anchor, the first anchor of a video going first. Like
    the official code, this "merging" drops tokens.

    Decoding: from layer `decode_layer` on, each step attends to the `decode_keep` fraction of visual KV
    entries that the current query attends to most (head-mean attention at that layer). The selection is
    recomputed when the attention pattern moved (cosine with the previous step's below
    `reselect_threshold`) and reused otherwise, as the paper describes; attention really reads only the
    selected entries. `ratio` counts prefill only; `stats` reports the decode-time read fraction.

    ratio: 0.5
    decode_keep: 0.2 (the official P = 0.8 drops 80 %)
    decode_layer: L = 3
    reselect_threshold: 0.9
    positions: "original" (kept tokens keep their positions) or "contiguous" (the official LLaVA code's
        re-indexing, 1-D positions only)

    Departures:
    - Budget: one count, round(ratio · N), split over the pruned frames in proportion to their size, where
      the official code keeps int((1 − K) · P) tokens of every pruned frame (they can differ by a token);
      decode keeps round(decode_keep · n) entries where the official code keeps int(n · (1 − P)).
    - The last group is pruned too and an odd last frame is kept (the official code leaves the last group's
      third frame whole and drops an odd last frame); kept tokens stay in spatial order.
    - Positions: by default kept tokens keep their original positions; the official LLaVA code rebuilds the
      sequence, so its kept tokens get contiguous positions (positions="contiguous").
    - Decode attention comes from the selecting layer's own query (the official code uses layer L−1's
      attention output); on stable steps the previous selection is reused, where the official code falls
      back to the full cache; no state crosses samples or generations.
    """

    ratio: float = 0.5
    decode_keep: float = 0.2
    decode_layer: int | None = None
    reselect_threshold: float = 0.9
    positions: str = "original"

    name = "dycoke"
    stages = (PRE_LLM, DECODE)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_interval("dycoke", "decode_keep", self.decode_keep, "(0, 1]")
        check_int("dycoke", "decode_layer", self.decode_layer, 0, optional=True)
        check_interval("dycoke", "reselect_threshold", self.reselect_threshold, "[-1, 1]")
        check_choice("dycoke", "positions", self.positions, POSITIONS)

    def reindexes_positions(self) -> bool:
        return self.positions == "contiguous"

    def bind(self, spec: ModelSpec) -> DyCoke:
        if self.decode_layer is not None and self.decode_layer >= spec.num_layers:
            raise ValueError(
                f"dycoke decode_layer={self.decode_layer} but the model has {spec.num_layers} layers; "
                "pass a smaller decode_layer (or None)"
            )
        if self.reindexes_positions() and spec.mrope:
            raise ValueError(
                f"dycoke positions='contiguous' re-indexes 1-D positions (the official LLaVA code); {spec.model_type} "
                "takes 3-D M-RoPE positions, which keep their original values: pass positions='original'"
            )
        return self

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        reference, is_anchor = group_references(layout)
        novelty = -aligned_cosine(features, reference)
        separators, cells = separators_first(layout, budget.tokens_before_llm(layout.num_tokens))
        anchor_tokens = is_anchor.nonzero().squeeze(1)
        if cells < len(anchor_tokens):  # only anchors fit: keep their most novel tokens, the first anchor first
            kept = anchor_tokens[top_tokens(novelty[anchor_tokens], cells)]
            return TokenReduction.prune(torch.cat([separators, kept]))
        pruned = (~layout.is_separator & ~is_anchor).nonzero().squeeze(1)  # the frames pruned, each by its quota
        sizes = torch.bincount(layout.frame[pruned], minlength=int(layout.frame.max()) + 1)
        quotas = torch.tensor(proportional_split(cells - len(anchor_tokens), sizes.tolist()), device=sizes.device)
        kept = pruned[top_tokens_per_group(novelty[pruned], layout.frame[pruned], quotas)]
        return TokenReduction.prune(torch.cat([separators, anchor_tokens, kept]))

    def decode_start_layer(self, spec: ModelSpec) -> int:
        return min(PAPER_DECODE_LAYER, spec.num_layers - 1) if self.decode_layer is None else self.decode_layer

    def select_decode_kv(self, sample: DecodeSample) -> torch.Tensor:
        memory, attention = sample.memory, sample.attention
        previous, selection = memory.get("attention"), memory.get("selection")
        memory["attention"] = attention
        fresh = top_tokens(attention, keep_count(self.decode_keep, attention.numel()))
        if selection is not None and previous is not None and previous.shape == attention.shape:  # on the device
            stable = torch.nn.functional.cosine_similarity(previous, attention, dim=0) >= self.reselect_threshold
            fresh = torch.where(stable, selection, fresh)
        memory["selection"] = fresh
        return fresh


def group_references(layout: VisualLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the same cell in the frame it is compared with (-1: none), and whether it is an anchor.

    Inside each video, frame f (counted from the video's first frame) with f % 4 == 0 is an anchor, compared
    with the previous anchor (only used when the budget thins anchors); 1 → 0, 2 → 0, 3 → 2.
    """
    device = layout.frame.device
    cells = ~layout.is_separator
    first_frame = torch.zeros(len(layout.grids), dtype=torch.long, device=device)
    first_frame[1:] = torch.tensor([t for t, _, _ in layout.grids], device=device).cumsum(0)[:-1]
    local = layout.frame - first_frame[layout.video]
    step_back = torch.tensor([GROUP, 1, 2, 1], device=device)[local % GROUP]
    reference_local = local - step_back
    has_reference = cells & (reference_local >= 0)
    reference_frame = (reference_local + first_frame[layout.video]).clamp_min(0)
    lookup = torch.full(
        (int(layout.frame.max()) + 1, int(layout.spatial.max()) + 1), -1, dtype=torch.long, device=device
    )
    lookup[layout.frame[cells], layout.spatial[cells]] = torch.nonzero(cells).squeeze(1)
    reference = torch.where(has_reference, lookup[reference_frame, layout.spatial.clamp_min(0)], -1)
    return reference, cells & (local % GROUP == 0)
