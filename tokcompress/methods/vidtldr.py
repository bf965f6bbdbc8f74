"""`vidtldr` (vid-TLDR, Choi et al., CVPR'24): saliency-aware token merging in the vision tower's first layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import IN_ENCODER, PRE_LLM, TokenFolding, TowerTokens
from .knobs import listed
from .tome import ToMeAfterTower

PAPER_SCHEDULE = "0.255,0.114"  # MSRVTT-QA / MSVD-QA, UMT-B/16: 600 then 200 of 2,352 tokens, blocks 0 and 1


@dataclass
class VidTLDR(ToMeAfterTower):
    """Inside the vision tower (where it can fold: the LLaVA families' and Gemma 4's batch of images, Qwen-VL's packed
    sequence of temporal patches), after each of its first layers every frame merges r of its tokens, r from
    `merge_schedule` (a fraction of the frame's current tokens, or a count when ≥ 1; at most half): a token's saliency
    is the sharpness of where it looks (Σ_j Ā_ij log Ā_ij over its row of the layer's head-mean attention), min-max
    normalised; tokens below the mean are background (saliency 0), the others centred and scaled to (0, 1]. As in ToMe,
    even tokens find their most similar odd token (cosine of the layer's output) and the r best-matched even tokens
    merge into their partners, each weighted by size × saliency - background ones vanish without mass. Every later tower
    layer adds log(size) to each key's attention logits. The tower's output is expanded back to the full grid (each
    token reading the one it merged into), so the merged groups reach the LLM as repeated features; before the LLM each
    frame's repeats fold first, then `tome` meets the budget.

    ratio: 0.5 (as `tome`); merge_schedule: "0.255,0.114" (the README's MSRVTT-QA schedule for UMT-B/16,
    600 and 200 of 2,352 tokens); window, proportional_attention: as `tome`.

    Departures:
    - Frames merge on their own (SigLIP / CLIP encode frames independently; UMT attends across them), the
      schedule's fractions applying per frame; a CLS token never merges.
    - Merging happens after the block's MLP (official: after attention, before the MLP), from the block's
      attention recomputed from the q/k its own attention projected, beside the fused attention; kept tokens
      stay in their order (official: unmerged A tokens first, then B) - a ViT's position embeddings were added
      at its input.
    - vid-TLDR has no LLM: its output tokens go to UMT's pooled heads. Here they are expanded back for the
      model's own projector and pooling, then repeats fold and `tome` meets the LLM budget.
    - Qwen-VL: a frame is a temporal patch and its tokens are in the tower's window order (the even / odd
      alternation follows it); a folded group keeps its kept token's rotary row and window. Its attention
      runs through ours (the fused varlen kernel, log(size) riding in an extra head dimension, or one sdpa call
      per window). InternVL's tower encodes before the prompt is read: there only `tome`'s stage runs.
      Proportional attention in a batched tower needs sdpa or eager there (a float mask).
    """

    merge_schedule: str = PAPER_SCHEDULE

    name = "vidtldr"
    stages = (IN_ENCODER, PRE_LLM)
    in_encoder_unit = "token"

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            schedule = self.schedule()
        except ValueError:
            schedule = [-1.0]
        if not schedule or min(schedule) < 0:
            raise ValueError(
                f"vidtldr merge_schedule must be fractions (< 1) or counts (≥ 1) per tower layer parted by commas or "
                "semicolons, "
                f"e.g. '0.255,0.114', got {self.merge_schedule!r}"
            )

    def schedule(self) -> list[float]:
        return [float(value) for value in listed(self.merge_schedule)]

    def encoder_merge_layers(self, depth: int) -> list[int]:
        return [layer for layer, value in enumerate(self.schedule()[:depth]) if value > 0]

    def merge_in_encoder_tokens(self, frames: TowerTokens) -> TokenFolding | None:
        tokens, fixed = frames.tokens, frames.fixed
        rows, count, _ = tokens.shape
        value, free = self.schedule()[frames.layer], count - fixed
        merges = min(round(value * count) if value < 1 else int(value), free // 2)
        if merges <= 0:
            return None
        saliency = foreground_saliency(frames.sharpness()[:, fixed:])
        unit = torch.nn.functional.normalize(tokens[:, fixed:].float(), dim=-1)
        score, partner = (unit[:, 0::2] @ unit[:, 1::2].transpose(1, 2)).max(dim=-1)  # each even token's best odd
        sources = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :merges]  # even-token ranks
        row = torch.arange(rows, device=tokens.device)[:, None]
        is_source = torch.zeros(rows, count, dtype=torch.bool, device=tokens.device)
        is_source[row, fixed + 2 * sources] = True
        kept = torch.cumsum(~is_source, dim=1) - 1  # each kept token's index among its frame's kept ones
        destination = torch.arange(count, device=tokens.device).repeat(rows, 1)
        destination[row, fixed + 2 * sources] = fixed + 2 * partner.gather(1, sources) + 1
        weight = torch.ones(rows, count, device=tokens.device)
        weight[:, fixed:] = torch.where(is_source[:, fixed:], saliency, 1.0)
        keep = (~is_source).nonzero()[:, 1].view(rows, -1)
        return TokenFolding(keep, kept.gather(1, destination), weight)


def foreground_saliency(sharpness: torch.Tensor) -> torch.Tensor:
    """vid-TLDR's background removal and sharpening per row: min-max normalise, zero what is below the mean,
    centre the rest and scale it to (0, 1]."""
    low, high = sharpness.min(dim=1, keepdim=True).values, sharpness.max(dim=1, keepdim=True).values
    normalised = (sharpness - low) / (high - low).clamp_min(1e-12)
    mean = normalised.mean(dim=1, keepdim=True)
    centred = normalised - mean
    scaled = centred / centred.max(dim=1, keepdim=True).values.clamp_min(1e-12)
    return torch.where(normalised < mean, 0.0, scaled)
