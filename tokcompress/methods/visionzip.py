"""`visionzip` (VisionZip, Yang et al., CVPR'25): per frame, the tokens the vision tower attends to most, plus a
few merged summaries of the rest."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .knobs import check_interval
from .selection import FrameByFrame, most_similar, top_tokens_per_group


@dataclass
class VisionZip(FrameByFrame):
    """Keep each frame's dominant tokens - the ones the vision tower attends to most - and fold the rest into a
    few contextual tokens.

    As the paper and the official code: a token's dominance is the attention it gets in the tower layer the
    model takes its features from, averaged over heads, in the CLS token's row on CLIP-like towers (CLIP,
    InternViT) and averaged over every query on towers without CLS (SigLIP, Qwen-VL: HoliTom's port of
    VisionZip does the same). The frame keeps its top `dominant` tokens; of the others, in raster order (the
    image's token order; Ovis2.5's prompt holds them in window order), every step-th (step = max(1, others //
    contextual)) is a contextual target and each remaining token joins the target it is most similar to (cosine).

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

    def __post_init__(self) -> None:
        super().__post_init__()
        check_interval("visionzip", "contextual_share", self.contextual_share, "[0, 1)")

    def frame_destinations(self, features: torch.Tensor, saliency: torch.Tensor, quotas: list[int]) -> torch.Tensor:
        """The dominant tokens stay, then the contextual targets, which the other tokens join."""
        frames, count = saliency.shape
        device = saliency.device
        contextual = [min(round(quota * self.contextual_share), quota - 1) if quota else 0 for quota in quotas]
        dominant = torch.tensor([quota - c for quota, c in zip(quotas, contextual)], device=device)
        row = torch.arange(frames, device=device)[:, None].expand(frames, count)
        position = torch.arange(count, device=device).expand(frames, count)
        kept = top_tokens_per_group(saliency.flatten(), row.flatten(), dominant)
        destination = torch.full((frames, count), -1, dtype=torch.long, device=device)
        destination.view(-1)[kept] = position.flatten()[kept]
        # of the others, in order, every step-th (step = max(1, others // contextual)) is a contextual target
        other = destination < 0
        rank = other.long().cumsum(dim=1) - 1
        targets = torch.tensor(contextual, device=device)[:, None]
        step = ((count - dominant)[:, None] // targets.clamp_min(1)).clamp_min(1)
        is_target = other & (rank % step == 0) & (rank // step < targets)
        destination = torch.where(is_target, position, destination)
        joining = other & ~is_target & (targets > 0)
        if not bool(joining.any()):
            return destination
        target_of_slot = torch.full((frames, max(contextual)), -1, dtype=torch.long, device=device)
        target_of_slot[row[is_target], (rank // step).expand(frames, count)[is_target]] = position[is_target]
        return torch.where(joining, most_similar(features, target_of_slot), destination)
