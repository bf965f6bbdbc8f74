"""Size-weighted folding of tokens into destinations (the merge half of every merging method)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dispatch import kernel_for


def weighted_merge(
    tokens: torch.Tensor | Sequence[torch.Tensor], sizes: torch.Tensor, merge_into: torch.Tensor, num_destinations: int
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
    """Fold each token into destination `merge_into[i]` as a size-weighted mean; -1 drops the token.

    tokens: (N, D), or a sequence of (N, D_k) tensors that share the assignment (e.g. hidden states and
    keys), merged in one pass; sizes: (N,) how many original tokens each one already stands for.
    Returns the merged (M, D) tokens (a list for a sequence) in the input dtype and their (M,) sizes,
    M = num_destinations. Accumulates in fp32 so that bf16/fp16 merges of many tokens stay accurate.
    """
    if not isinstance(tokens, torch.Tensor):
        widths = [t.shape[-1] for t in tokens]
        merged, new_sizes = weighted_merge(torch.cat(list(tokens), dim=-1), sizes, merge_into, num_destinations)
        return [part.to(t.dtype) for part, t in zip(merged.split(widths, dim=-1), tokens)], new_sizes
    kernel = kernel_for("weighted_merge", tokens, tokens.shape[0])
    if kernel:
        return kernel(tokens, sizes, merge_into, num_destinations)
    return weighted_merge_reference(tokens, sizes, merge_into, num_destinations)


def weighted_merge_reference(
    tokens: torch.Tensor, sizes: torch.Tensor, merge_into: torch.Tensor, num_destinations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    used = merge_into >= 0
    destination = merge_into[used]
    weight = sizes[used].float()
    total = torch.zeros(num_destinations, tokens.shape[-1], dtype=torch.float32, device=tokens.device)
    total.index_add_(0, destination, tokens[used].float() * weight[:, None])
    new_sizes = torch.zeros(num_destinations, dtype=torch.float32, device=tokens.device)
    new_sizes.index_add_(0, destination, weight)
    merged = total / new_sizes.clamp_min(1e-12)[:, None]
    return merged.to(tokens.dtype), new_sizes
