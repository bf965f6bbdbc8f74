"""`prumerge` (LLaVA-PruMerge / PruMerge+, Shang et al., ICCV'25): per frame, the tokens the vision tower attends to
unusually much, plus spatially uniform samples, each absorbing the pruned tokens closest to it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .selection import FrameByFrame, most_similar

PLUS_RATIO = 0.25  # PruMerge+ keeps about a quarter of LLaVA-1.5's 576 tokens
IQR_FENCE = 1.5  # Tukey's fence: a score above Q3 + 1.5 · IQR is an outlier


@dataclass
class PruMerge(FrameByFrame):
    """Keep each frame's attention outliers - the tokens the vision tower attends to unusually much - and, in
    PruMerge+, tokens spread evenly over the frame; every other token folds into the kept token closest to it.

    As the paper and its official code: a token's attention is what it gets in the tower (the CLS token's row
    on CLIP-like towers; the mean over every query on towers without CLS, as `visionzip`); the outliers are the
    tokens above Q3 + 1.5 · IQR of the frame's attention (Tukey's fence, linear-interpolated quartiles as numpy's
    percentile). PruMerge+ (`plus`, the official default) adds spatially uniform tokens the outliers missed.

    ratio: round(ratio · N) tokens kept before the LLM, split over frames by size; the default 0.25 is
    PruMerge+'s (about a quarter of LLaVA-1.5's 576 tokens). plus: True for PruMerge+, False for PruMerge.

    Departures:
    - Budget: the official outlier count is the budget itself (adaptive, about 5.5 % of the tokens in PruMerge)
      and PruMerge+ adds a fixed stride of uniform samples; here `ratio` sets each frame's count. The outliers
      come first (the most attended of them where there are more), and the rest of the count goes to the frame's
      other cells spread evenly in raster order (the ⌊(j + ½) · m / r⌋-th of its m other cells for j < r), or in
      PruMerge (`plus=False`) to the next most attended tokens.
    - Merging: every pruned token folds into the kept token most similar to it (cosine of the LLM-input
      features), a size-weighted mean, so each token counts once. Official: each kept token adds its 32 nearest
      tokens by the tower layer's keys (of all tokens, so one can count for several), weighted by their
      attention and unnormalised, and one more token sums every pruned one - not added here, so the count stays
      the budget.
    - The attention is the one `visionzip` reads: the layer the model takes its features from, from its own q/k on
      its recorded input, averaged over heads and pooled as the model pools its features. Official: the next
      layer's (CLIP's last, on the penultimate layer's output that LLaVA-1.5 takes as features), one softmax over
      all heads joined (scale C^-1/2, C = 1024), so the fence falls on another distribution.
    - Kept tokens stay in raster order at their original positions (official: in attention order, positions
      re-indexed).
    - Video: applied to every frame (a Qwen-VL temporal patch) of every video; the official code is per image.
      Separators (LLaVA-OV's newline) are kept first.
    """

    ratio: float = PLUS_RATIO
    plus: bool = True

    name = "prumerge"

    def kept_tokens(self, saliency: torch.Tensor, quotas: list[int]) -> torch.Tensor:
        """(F, n) which tokens of each frame stay: its outliers, then uniform samples (or the next most attended)
        up to its quota; saliency (F, n) in raster order."""
        frames, count = saliency.shape
        device = saliency.device
        scores = saliency.float()
        quota = torch.tensor(quotas, device=device)[:, None]
        lower, upper = torch.quantile(scores, torch.tensor([0.25, 0.75], device=device), dim=1)
        outliers = (scores > (upper + IQR_FENCE * (upper - lower))[:, None]).sum(dim=1, keepdim=True)
        ranked = torch.sort(scores, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(ranked).scatter_(1, ranked, torch.arange(count, device=device).expand(frames, count))
        attended = torch.minimum(outliers, quota) if self.plus else quota
        kept = rank < attended
        if self.plus:  # the rest of the quota over the other cells, evenly: the ⌊(j + ½) · m / r⌋-th of them
            others, wanted = count - attended, quota - attended
            sample = torch.arange(count, device=device)[None, :]
            spot = torch.where(sample < wanted, (2 * sample + 1) * others // (2 * wanted).clamp_min(1), count)
            chosen = torch.zeros(frames, count + 1, dtype=torch.bool, device=device).scatter_(1, spot, True)
            other = ~kept
            kept |= other & chosen.gather(1, (other.long().cumsum(dim=1) - 1).clamp_min(0))
        return kept

    def frame_destinations(self, features: torch.Tensor, saliency: torch.Tensor, quotas: list[int]) -> torch.Tensor:
        """The kept tokens stay; every other token of a frame with a quota folds into the most similar of its kept."""
        frames, count = saliency.shape
        kept = self.kept_tokens(saliency, quotas)
        position = torch.arange(count, device=saliency.device).expand(frames, count)
        most = max(quotas)
        if not most:
            return torch.full((frames, count), -1, dtype=torch.long, device=saliency.device)
        slots = torch.sort(kept.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :most]  # kept first
        open_slot = torch.arange(most, device=saliency.device)[None, :] < kept.sum(dim=1, keepdim=True)
        return torch.where(kept, position, most_similar(features, torch.where(open_slot, slots, -1)))
