"""Density-peak clustering with k nearest neighbours (DPC-KNN), as PruneVid, SparseVLM, FastVID and HoliTom use it:
many groups of tokens at once (one call, no host sync), so a method clusters every window or frame together."""

from __future__ import annotations

import torch


def grouped_density_peaks(
    features: list[torch.Tensor], clusters: list[int], neighbours: int | list[int] = 7, fill: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each group of (n_g, D) tokens around `clusters[g]` density peaks, every group in one batch.

    Distances are Euclidean / √D. A token's density is exp(−mean squared distance to its `neighbours` nearest
    tokens (one count, or one per group), itself included); δ is its distance to the nearest denser token (the
    densest: its largest distance); the centres are the tokens with the largest δ · density - at most
    `clusters[g]`, at least one, and only tokens with a positive score (a duplicate of a denser token never
    leads), unless `fill`: then exactly min(clusters[g], n_g), as a top-k of the scores - and every token joins
    its nearest centre. Deterministic: ties in density go to the earlier token (the published code breaks
    them with noise). Returns, padded to the longest group, (assignment (G, N): each token's cluster in
    [0, count_g), -1 past n_g; centres (G, min(max(clusters), N)): the centres' token positions in score
    order, -1 past count_g).
    """
    lengths = [len(f) for f in features]
    groups, width, device = len(features), max(lengths), features[0].device
    if width == 0:
        empty = torch.zeros(groups, 0, dtype=torch.long, device=device)
        return empty, empty
    x = torch.nn.utils.rnn.pad_sequence([f.float() for f in features], batch_first=True)  # (G, N, D)
    n = torch.tensor(lengths, device=device)
    valid = torch.arange(width, device=device) < n[:, None]
    pair = valid[:, :, None] & valid[:, None, :]
    distance = (torch.cdist(x, x) / x.shape[-1] ** 0.5).masked_fill(~pair, float("inf"))
    counts = neighbours if isinstance(neighbours, list) else [neighbours] * groups
    nearest_count = torch.minimum(n, torch.tensor(counts, device=device))
    nearest = distance.topk(min(max(counts), width), dim=2, largest=False).values
    nearest = nearest.masked_fill(torch.arange(nearest.shape[2], device=device) >= nearest_count[:, None, None], 0)
    density = torch.exp(-(nearest**2).sum(dim=2) / nearest_count.clamp_min(1)[:, None]).masked_fill(~valid, -1)
    rank = torch.empty_like(valid, dtype=torch.long)
    rank.scatter_(1, torch.sort(density, dim=1, descending=True, stable=True).indices,
                  torch.arange(width, device=device).expand(groups, width))
    denser = rank[:, None, :] < rank[:, :, None]  # [g, i, j]: j is denser than i
    delta = distance.masked_fill(~denser, float("inf")).amin(dim=2)
    farthest = distance.masked_fill(~pair, float("-inf")).amax(dim=2)
    delta = torch.where(delta.isinf(), farthest, delta)  # the densest token of each group
    score = (delta * density).masked_fill(~valid, float("-inf"))
    wanted = torch.tensor(clusters, device=device).clamp_min(1)
    count = torch.minimum(wanted, n)
    count = count if fill else torch.minimum(count, (score > 0).sum(dim=1).clamp_min(1))
    slots = min(max(max(clusters), 1), width)
    centres = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :slots]
    is_centre = torch.arange(slots, device=device) < count[:, None]
    to_centre = distance.gather(2, centres[:, None, :].expand(groups, width, slots))
    assignment = to_centre.masked_fill(~is_centre[:, None, :], float("inf")).argmin(dim=2)
    own = torch.where(is_centre, torch.arange(slots, device=device), assignment.gather(1, centres))
    assignment = assignment.scatter(1, centres, own).masked_fill(~valid, -1)  # a centre leads its own cluster
    return assignment, centres.masked_fill(~is_centre, -1)


def density_peak_clusters(
    features: torch.Tensor, clusters: int, neighbours: int = 7
) -> tuple[torch.Tensor, torch.Tensor]:
    """`grouped_density_peaks` of one group of (n, D) tokens: (assignment (n,) in [0, count), centres (count,)
    token indices in score order)."""
    assignment, centres = grouped_density_peaks([features], [min(clusters, len(features))], neighbours)
    return assignment[0], centres[0][centres[0] >= 0]


def fold_clusters(
    destination: torch.Tensor, features: torch.Tensor, groups: list[torch.Tensor], clusters: list[int],
    neighbours: int = 7, exact: bool = False,
) -> None:
    """Fold every token of each group ((rows, n) token indices; column j is one unit, e.g. a static cell over a
    window's frames) into one of its `clusters[g]` density-peak clusters of the units (their mean over the
    rows), each cluster landing on its earliest token (DPC-KNN with k = `neighbours`). Every unit is its own
    cluster when `clusters[g]` ≥ n. `exact`: k = min(neighbours, clusters[g]) and exactly `clusters[g]` centres
    (duplicates too: `grouped_density_peaks`' fill), as HoliTom's code clusters. All groups at once, without a
    host sync."""
    groups = [(tokens, count) for tokens, count in zip(groups, clusters) if tokens.shape[1]]
    if not groups:
        return
    clustered = [g for g, (tokens, count) in enumerate(groups) if count < tokens.shape[1]]  # others: one per unit
    found = None
    if clustered:
        units = [features[groups[g][0]].float().mean(dim=0) for g in clustered]
        wanted = [groups[g][1] for g in clustered]
        k = [min(neighbours, count) for count in wanted] if exact else neighbours
        found, _ = grouped_density_peaks(units, wanted, k, fill=exact)
    row_of = {g: row for row, g in enumerate(clustered)}
    width = max(tokens.shape[1] for tokens, _ in groups)
    cluster_of = []  # per token of every group, its cluster, numbered apart for each group
    for g, (tokens, _) in enumerate(groups):
        count = tokens.shape[1]
        cluster = found[row_of[g], :count] if g in row_of else torch.arange(count, device=features.device)
        cluster_of.append(cluster.repeat(tokens.shape[0]) + g * width)
    cluster_of = torch.cat(cluster_of)
    everything = torch.cat([tokens.reshape(-1) for tokens, _ in groups])
    earliest = torch.full((len(groups) * width,), len(destination), device=features.device)
    earliest = earliest.scatter_reduce(0, cluster_of, everything, reduce="amin")
    destination[everything] = earliest[cluster_of]
