"""`visionzip` (VisionZip, Yang et al., CVPR'25): per frame, the tokens the vision tower attends to most, plus a
few merged summaries of the rest."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from .base import (
    PRE_LLM,
    LayerBudget,
    Method,
    TokenReduction,
    merge_destinations,
    proportional_split,
    top_tokens,
    tower_attention,
)


@dataclass
class VisionZip(Method):
    """Keep each frame's dominant tokens - the ones the vision tower attends to most - and fold the rest into a
    few contextual tokens.

    As the paper and the official code: a token's dominance is the attention it gets in the tower layer the
    model takes its features from, averaged over heads, in the CLS token's row on CLIP-like towers (CLIP,
    InternViT) and averaged over every query on towers without CLS (SigLIP, Qwen-VL: HoliTom's port of
    VisionZip does the same). The frame keeps its top `dominant` tokens; of the others, in sequence order,
    every step-th (step = max(1, others // contextual)) is a contextual target and each remaining token joins
    the target it is most similar to (cosine).

    ratio: round(ratio · N) tokens kept before the LLM, split over frames by size; the default 0.38 is the
    official default (191 dominant + 30 contextual of 576). contextual_share: the part of each frame's count
    that is contextual (30 / 221, the official split).

    Departures:
    - Video: applied to every frame (a Qwen-VL temporal patch) of every video; the official code is per image.
    - The attention is computed from the tower layer's own q/k on the hidden states it was given (a recorded
      call), so the tower keeps its fused attention; on towers whose tokens are pooled or merged before the
      LLM (LLaVA-OV bilinear ½, LLaVA-NeXT-Video stride 2, Qwen 2×2 merge, InternVL pixel shuffle) the scores
      are pooled the same way, and each LLM token is ranked by them.
    - Similarity for the contextual assignment: the tokens' LLM-input features, not the tower layer's
      head-mean keys; a contextual token is the size-weighted mean of its target and the tokens that join it
      (official: the target plus the mean of the others).
    - Separators (LLaVA-OV's newline) are kept first.
    """

    ratio: float = 0.38
    contextual_share: float = 30 / 221

    name = "visionzip"
    stages = (PRE_LLM,)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.contextual_share < 1.0:
            raise ValueError(f"visionzip contextual_share must lie in [0, 1), got {self.contextual_share!r}")

    def uses_tower_attention(self) -> bool:
        return True

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        saliency = tower_attention(layout, self.name)
        destination, cells = merge_destinations(layout, budget.tokens_before_llm(layout.num_tokens), features.device)
        frames = torch.unique(layout.frame[~layout.is_separator]).tolist()
        members = [(layout.frame == frame).nonzero().squeeze(1) for frame in frames]
        for tokens, quota in zip(members, proportional_split(cells, [m.numel() for m in members])):
            if quota:
                local = self.frame_destinations(features[tokens], saliency[tokens], quota)
                destination[tokens] = torch.where(local >= 0, tokens[local.clamp_min(0)], -1)
        return TokenReduction.from_destinations(destination)

    def frame_destinations(self, features: torch.Tensor, saliency: torch.Tensor, quota: int) -> torch.Tensor:
        """Per token of one frame, the index (into the frame) of the token it ends up in; -1 when dropped."""
        count = features.shape[0]
        contextual = min(round(quota * self.contextual_share), quota - 1)
        dominant = top_tokens(saliency, quota - contextual)
        destination = torch.full((count,), -1, dtype=torch.long, device=features.device)
        destination[dominant] = dominant
        others = destination.eq(-1).nonzero().squeeze(1)
        if contextual and others.numel():
            targets = others[:: max(1, others.numel() // contextual)][:contextual]
            joining = others[~torch.isin(others, targets)]
            destination[targets] = targets
            if joining.numel():
                unit = torch.nn.functional.normalize(features.float(), dim=-1)
                destination[joining] = targets[(unit[joining] @ unit[targets].T).argmax(dim=1)]
        return destination
