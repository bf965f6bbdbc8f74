"""Cosine similarity between tokens and their aligned partners (same cell, another frame)."""

from __future__ import annotations

import torch

from .dispatch import kernel_for

NO_PARTNER = -2.0
"""Similarity reported for tokens without a partner; below any real cosine."""


def aligned_cosine(tokens: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """cos(tokens[i], tokens[partner[i]]) for every i, in fp32; NO_PARTNER where partner[i] < 0.

    tokens: (N, D); partner: (N,) long. Used with `VisualLayout.temporal_predecessor()` (FrameFusion) or
    with fixed frame pairings (DyCoke).
    """
    kernel = kernel_for("aligned_cosine", tokens, tokens.shape[0])
    return kernel(tokens, partner) if kernel else aligned_cosine_reference(tokens, partner)


def aligned_cosine_reference(tokens: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    has_partner = partner >= 0
    a = tokens.float()
    b = a[partner.clamp_min(0)]
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-6)
    return torch.where(has_partner, cosine, torch.full_like(cosine, NO_PARTNER))
