"""Bipartite soft matching (ToMe): each token of set A finds its most similar token of set B."""

from __future__ import annotations

import torch

from .dispatch import kernel_for


def bipartite_match(
    a: torch.Tensor, b: torch.Tensor, a_lengths: torch.Tensor | None = None, b_lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best cosine match in B for every token of A, per batch row, with ragged valid lengths.

    a: (R, NA, D), b: (R, NB, D); a_lengths / b_lengths: (R,) valid counts (default: all).
    Returns (score, index), each (R, NA): the best cosine (fp32) and the index into B; padded A rows, and
    rows with no valid B, get score -inf and index -1. The fused kernel never writes the A×B matrix.
    """
    rows, na, nb = a.shape[0], a.shape[1], b.shape[1]
    a_lengths = torch.full((rows,), na, device=a.device) if a_lengths is None else a_lengths
    b_lengths = torch.full((rows,), nb, device=a.device) if b_lengths is None else b_lengths
    kernel = kernel_for("bipartite_match", a, na * nb)
    if kernel:
        return kernel(a, b, a_lengths, b_lengths)
    return bipartite_match_reference(a, b, a_lengths, b_lengths)


def bipartite_match_reference(
    a: torch.Tensor, b: torch.Tensor, a_lengths: torch.Tensor, b_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    na, nb = a.shape[1], b.shape[1]
    a_unit = torch.nn.functional.normalize(a.float(), dim=-1, eps=1e-6)
    b_unit = torch.nn.functional.normalize(b.float(), dim=-1, eps=1e-6)
    similarity = a_unit @ b_unit.transpose(1, 2)
    b_valid = torch.arange(nb, device=a.device)[None, :] < b_lengths[:, None]
    similarity = similarity.masked_fill(~b_valid[:, None, :], float("-inf"))
    score, index = similarity.max(dim=-1) if nb else (similarity.new_full(a.shape[:2], float("-inf")), None)
    a_valid = (torch.arange(na, device=a.device)[None, :] < a_lengths[:, None]) & (b_lengths[:, None] > 0)
    index = index if index is not None else torch.zeros(a.shape[:2], dtype=torch.long, device=a.device)
    return score.masked_fill(~a_valid, float("-inf")), index.masked_fill(~a_valid, -1)
