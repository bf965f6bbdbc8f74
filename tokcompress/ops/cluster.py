"""Density-peak clustering with k nearest neighbours (DPC-KNN), as PruneVid, SparseVLM, FastVID and HoliTom use it."""

from __future__ import annotations

import torch


def density_peak_clusters(features: torch.Tensor, clusters: int, neighbours: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster (n, D) tokens around `clusters` density peaks.

    Distances are Euclidean / √D. A token's density is exp(−mean squared distance to its `neighbours` nearest
    tokens, itself included); δ is its distance to the nearest denser token (the densest: its largest
    distance); the centres are the tokens with the largest δ · density, and every token joins its nearest
    centre. Returns (assignment (n,) in [0, clusters), centres (clusters,) token indices, in score order).
    Deterministic: ties in density go to the earlier token (the published code breaks them with noise).
    """
    n = features.shape[0]
    clusters = max(min(clusters, n), 1)
    x = features.float()
    distance = torch.cdist(x, x) / x.shape[1] ** 0.5
    nearest = distance.topk(min(neighbours, n), dim=1, largest=False).values
    density = torch.exp(-(nearest**2).mean(dim=1))
    rank = torch.empty(n, dtype=torch.long, device=x.device)
    rank[torch.sort(density, descending=True, stable=True).indices] = torch.arange(n, device=x.device)
    denser = rank[None, :] < rank[:, None]  # [i, j]: j is denser than i
    delta = distance.masked_fill(~denser, float("inf")).min(dim=1).values
    peak = delta.isinf()
    delta[peak] = distance[peak].max(dim=1).values
    score = delta * density
    clusters = min(clusters, max(int((score > 0).sum()), 1))  # duplicates of a denser token never lead a cluster
    centres = torch.sort(score, descending=True, stable=True).indices[:clusters]
    assignment = distance[:, centres].argmin(dim=1)
    assignment[centres] = torch.arange(clusters, device=x.device)
    return assignment, centres


def fold_clusters(
    destination: torch.Tensor, features: torch.Tensor, groups: torch.Tensor, clusters: int, neighbours: int = 7
) -> None:
    """Fold every token of `groups` ((rows, n) token indices; column j is one unit, e.g. a static cell over a
    window's frames) into one of `clusters` density-peak clusters of the units (their mean over the rows),
    each cluster landing on its earliest token (DPC-KNN with k = `neighbours`). Every unit is its own cluster
    when `clusters` ≥ n."""
    n = groups.shape[1]
    if n == 0:
        return
    if clusters < n:
        assignment = density_peak_clusters(features[groups].float().mean(dim=0), clusters, neighbours)[0]
    else:
        assignment = torch.arange(n, device=features.device)
    everything = groups.reshape(-1)
    cluster_of = assignment.repeat(groups.shape[0])
    earliest = torch.full((int(assignment.max()) + 1,), int(everything.max()) + 1, device=features.device)
    earliest = earliest.scatter_reduce(0, cluster_of, everything, reduce="amin")
    destination[everything] = earliest[cluster_of]
