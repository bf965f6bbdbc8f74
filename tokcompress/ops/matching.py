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


REFERENCE_CHUNK = 4096
"""A rows per matmul in the reference: the A×B score block stays at CHUNK × NB."""


def bipartite_match_reference(
    a: torch.Tensor, b: torch.Tensor, a_lengths: torch.Tensor, b_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain PyTorch a user would write: normalise, `a @ b.T` in the input dtype (the matmul accumulates
    in fp32), max - a chunk of A rows at a time so the score matrix never exceeds CHUNK × NB."""
    rows, na, nb = a.shape[0], a.shape[1], b.shape[1]
    score = torch.full((rows, na), float("-inf"), dtype=torch.float32, device=a.device)
    index = torch.full((rows, na), -1, dtype=torch.long, device=a.device)
    if na == 0 or nb == 0:
        return score, index
    a_unit = torch.nn.functional.normalize(a.float(), dim=-1, eps=1e-6).to(a.dtype)
    b_unit = torch.nn.functional.normalize(b.float(), dim=-1, eps=1e-6).to(b.dtype).transpose(1, 2)
    b_invalid = (torch.arange(nb, device=a.device)[None, :] >= b_lengths[:, None])[:, None, :]
    for start in range(0, na, REFERENCE_CHUNK):
        similarity = (a_unit[:, start : start + REFERENCE_CHUNK] @ b_unit).float().masked_fill(b_invalid, float("-inf"))
        score[:, start : start + REFERENCE_CHUNK], index[:, start : start + REFERENCE_CHUNK] = similarity.max(dim=-1)
    a_valid = (torch.arange(na, device=a.device)[None, :] < a_lengths[:, None]) & (b_lengths[:, None] > 0)
    return score.masked_fill(~a_valid, float("-inf")), index.masked_fill(~a_valid, -1)
