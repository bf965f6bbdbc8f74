"""Ops against plain references written out in the test."""

from __future__ import annotations

import math

import pytest
import torch

from tokcompress.layout import VisualLayout
from tokcompress.methods.framefusion import fold_into_unmarked_predecessor
from tokcompress.methods.selection import top_tokens, top_tokens_per_group
from tokcompress.ops import (
    NO_PARTNER,
    aligned_cosine,
    attention_row_sharpness,
    density_peak_clusters,
    few_query_attention,
    fold_clusters,
    grouped_density_peaks,
    weighted_merge,
)

TOLERANCE = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_aligned_cosine_matches_pairwise_loop(dtype):
    torch.manual_seed(0)
    tokens = torch.randn(37, 96).to(dtype)
    partner = torch.randint(-1, 37, (37,))
    result = aligned_cosine(tokens, partner)
    for i in range(37):
        if partner[i] < 0:
            assert result[i] == NO_PARTNER
        else:
            a, b = tokens[i].double(), tokens[partner[i]].double()
            torch.testing.assert_close(result[i].double(), a @ b / (a.norm() * b.norm()), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_weighted_merge_is_a_size_weighted_mean(dtype):
    torch.manual_seed(0)
    tokens = torch.randn(10, 8).to(dtype)
    sizes = torch.tensor([1.0, 2, 1, 3, 1, 1, 4, 1, 1, 2])
    merge_into = torch.tensor([0, 0, 1, 1, 1, -1, 2, 2, -1, 0])
    merged, new_sizes = weighted_merge(tokens, sizes, merge_into, 3)
    assert merged.dtype == dtype
    for destination in range(3):
        members = (merge_into == destination).nonzero().squeeze(1)
        weights = sizes[members]
        expected = (tokens[members].double() * weights[:, None]).sum(0) / weights.sum()
        torch.testing.assert_close(merged[destination].double(), expected, **TOLERANCE[dtype])
        assert new_sizes[destination] == weights.sum()


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(4, 4, 64), (8, 2, 80), (14, 2, 128)])
def test_few_query_attention_matches_full_softmax_rows(dtype, heads, kv_heads, head_dim):
    torch.manual_seed(0)
    length, rows = 53, 3
    queries = torch.randn(heads, length, head_dim).to(dtype)
    keys = torch.randn(kv_heads, length, head_dim).to(dtype)
    causal = torch.ones(length, length).tril().bool()
    expanded = keys.double().repeat_interleave(heads // kv_heads, dim=0)
    full = (queries.double() @ expanded.transpose(-1, -2) / head_dim**0.5).masked_fill(~causal, float("-inf"))
    expected = full.softmax(-1).mean(0)[-rows:]
    result = few_query_attention(queries[:, -rows:], keys, causal[-rows:])
    torch.testing.assert_close(result.double(), expected, **TOLERANCE[dtype])


def test_temporal_predecessor_on_the_grid_and_after_removal():
    layout = VisualLayout.from_videos([5, 40], [(3, 2, 2), (2, 1, 2)], separators_per_video=1)
    predecessor = layout.temporal_predecessor()
    # video 0: 12 cells + newline at 12; video 1: 4 cells (13..16) + newline at 17
    assert predecessor[:12].tolist() == [-1] * 4 + list(range(0, 8))
    assert predecessor[12] == -1 and predecessor[17] == -1
    assert predecessor[13:17].tolist() == [-1, -1, 13, 14]  # never across videos
    survivors = layout.select(torch.tensor([0, 1, 2, 3, 5, 8, 9]))  # frame 1 lost cells 0, 2, 3
    assert survivors.temporal_predecessor().tolist() == [-1, -1, -1, -1, 1, 0, 4]


def test_weighted_merge_of_several_tensors_shares_one_assignment():
    torch.manual_seed(0)
    hidden, keys = torch.randn(9, 12), torch.randn(9, 4).to(torch.bfloat16)
    sizes = torch.tensor([1.0, 2, 1, 1, 3, 1, 1, 1, 2])
    merge_into = torch.tensor([0, 0, 1, 2, 2, -1, 1, 0, 2])
    (merged_hidden, merged_keys), sizes_out = weighted_merge([hidden, keys], sizes, merge_into, 3)
    alone_hidden, alone_sizes = weighted_merge(hidden, sizes, merge_into, 3)
    torch.testing.assert_close(merged_hidden, alone_hidden)
    torch.testing.assert_close(merged_keys, weighted_merge(keys.float(), sizes, merge_into, 3)[0].to(torch.bfloat16))
    assert merged_keys.dtype == torch.bfloat16 and torch.equal(sizes_out, alone_sizes)


@pytest.mark.parametrize("max_entries", [1, 2 * 7 * 3, 2 * 7 * 7 * 2, 2**26])  # a row, 3 rows, 2 sequences, all
def test_attention_row_sharpness_is_the_negative_entropy_of_each_head_mean_row(max_entries):
    generator = torch.Generator().manual_seed(3)
    queries, keys = torch.randn(3, 2, 7, 4, generator=generator), torch.randn(3, 2, 7, 4, generator=generator)
    expected = torch.zeros(3, 7)
    for image in range(3):
        rows = torch.stack([torch.softmax(queries[image, h] @ keys[image, h].T / 2, dim=-1) for h in range(2)]).mean(0)
        expected[image] = torch.tensor([sum(p * torch.log(p) for p in row).item() for row in rows])
    torch.testing.assert_close(attention_row_sharpness(queries, keys, max_entries), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_top_tokens_per_group_is_top_tokens_in_every_group(seed):
    """The vectorised per-frame choice is the loop over groups it replaces, ties to the earlier token included."""
    generator = torch.Generator().manual_seed(seed)
    group = torch.randint(0, 5, (40,), generator=generator)
    scores = torch.randint(0, 4, (40,), generator=generator).float()  # many ties
    counts = torch.randint(0, 9, (6,), generator=generator)  # group 5 has no tokens
    expected = [
        members[top_tokens(scores[members], int(counts[g]))]
        for g in range(5)
        for members in [(group == g).nonzero().squeeze(1)]
    ]
    assert top_tokens_per_group(scores, group, counts).tolist() == torch.sort(torch.cat(expected)).values.tolist()


@pytest.mark.parametrize("seed", range(3))
def test_framefusion_folds_each_marked_token_into_the_nearest_unmarked_one_up_its_chain(seed):
    """Pointer doubling gives what walking each chain one link at a time gives."""
    generator = torch.Generator().manual_seed(seed)
    frames, cells = 12, 5
    predecessor = torch.arange(frames * cells) - cells  # the same cell one frame earlier; -1 in the first frame
    predecessor[:cells] = -1
    marked = torch.rand(frames * cells, generator=generator) < 0.7
    expected = []
    for token in range(frames * cells):
        while token >= 0 and marked[token]:
            token = int(predecessor[token])
        expected.append(token)
    assert fold_into_unmarked_predecessor(marked, predecessor).tolist() == expected


def density_peaks_published(features: torch.Tensor, clusters: int, neighbours: int) -> tuple[list[int], list[int]]:
    """DPC-KNN on one group, token by token (methods.md: PruneVid / FastVID's clustering), ties to the earlier
    token: (each token's cluster, the centres in score order)."""
    n, dim = features.shape
    x = features.double()
    distance = [[float((x[i] - x[j]).norm()) / dim**0.5 for j in range(n)] for i in range(n)]
    nearest = min(neighbours, n)
    density = [math.exp(-sum(d * d for d in sorted(row)[:nearest]) / nearest) for row in distance]
    rank = sorted(range(n), key=lambda i: (-density[i], i))
    delta = []
    for i in range(n):
        denser = [distance[i][j] for j in rank[: rank.index(i)]]
        delta.append(min(denser) if denser else max(distance[i]))
    score = [delta[i] * density[i] for i in range(n)]
    count = min(max(min(clusters, n), 1), max(sum(s > 0 for s in score), 1))
    centres = sorted(range(n), key=lambda i: (-score[i], i))[:count]
    assignment = [min(range(count), key=lambda c: (distance[i][centres[c]], c)) for i in range(n)]
    for c, centre in enumerate(centres):
        assignment[centre] = c
    return assignment, centres


@pytest.mark.parametrize("seed", range(3))
def test_grouped_density_peaks_cluster_every_group_as_one_alone(seed):
    """Groups of 1 to 20 tokens (fewer than the neighbours too; duplicates that never lead) in one call."""
    generator = torch.Generator().manual_seed(seed)
    groups = [torch.randn(n, 6, generator=generator) for n in (20, 1, 5, 13)]
    groups[3][7:10] = groups[3][2]  # three copies of a token
    clusters = [4, 3, 9, 6]
    assignment, centres = grouped_density_peaks(groups, clusters, neighbours=7)
    assert assignment.shape == (4, 20) and centres.shape == (4, 9)
    for g, (features, count) in enumerate(zip(groups, clusters)):
        expected_assignment, expected_centres = density_peaks_published(features, count, 7)
        n = len(features)
        assert assignment[g, :n].tolist() == expected_assignment and (assignment[g, n:] == -1).all()
        assert [c for c in centres[g].tolist() if c >= 0] == expected_centres
        assert (centres[g, len(expected_centres):] == -1).all()
        single = density_peak_clusters(features, count, neighbours=7)
        assert single[0].tolist() == expected_assignment and single[1].tolist() == expected_centres


def test_fold_clusters_folds_every_group_into_its_clusters_earliest_tokens():
    """Two groups at once - static cells over 3 frames clustered, one frame's tokens each their own - as each alone."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 6, generator=generator)
    cells = torch.arange(30).view(3, 10)  # 3 frames × 10 cells
    alone = torch.arange(30, 36)[None]  # 6 tokens, 6 clusters: each its own
    destination = torch.full((40,), -1)
    empty = torch.zeros(1, 0, dtype=torch.long)  # (a window whose cells are all static: no moving token)
    fold_clusters(destination, features, [empty, cells, empty, alone, empty], [0, 4, 0, 6, 2])
    assignment, _ = density_peaks_published(features[cells].mean(dim=0), 4, 7)
    for cell, cluster in enumerate(assignment):
        earliest = min(int(cells[0, c]) for c, other in enumerate(assignment) if other == cluster)
        assert destination[cells[:, cell]].tolist() == [earliest] * 3
    assert destination[30:36].tolist() == list(range(30, 36)) and (destination[36:] == -1).all()
    fold_clusters(destination, features, [torch.arange(36, 39)[None]], [5])  # more clusters than units: each its own
    assert destination[36:].tolist() == [36, 37, 38, -1]
    assignment, centres = grouped_density_peaks([features[:3]], [5])
    assert centres.shape == (1, 3) and (assignment >= 0).all()
