"""Fidelity, continued: HoliTom, AIM and TS-LLaVA against plain transcriptions of their published rules
(`shared/reference/methods.md` §7 and §9, `methods-2.md` §18), written as loops."""

from __future__ import annotations

import math

import pytest
import torch

import tokcompress
from tokcompress.adapters import adapter_for
from tokcompress.layout import VisualLayout
from tokcompress.methods import AIM, HoliTom, LayerBudget, TSLLaVA
from tokcompress.methods.aim import merge_within_frames, pruning_schedule
from tokcompress.methods.base import LayerSample
from tokcompress.methods.holitom import holistic_windows
from tokcompress.ops import attention_pagerank

from .conftest import TOWERED, generate, inputs_for, model_for
from .test_fidelity import destinations, features

# ---------------------------------------------------------------------------------------------- HoliTom


def holitom_published_windows(similarity: list[list[float]], tau: float) -> tuple[int, list[tuple[int, int]]]:
    """HoliTom's DP: the windows [s, e) maximising Σ (W − 1) · #cells static over the window (all consecutive
    cosines above tau); the last window's lengths are tried upward and a strictly better one taken, so ties keep the
    shortest."""
    frames, cells = len(similarity) + 1, len(similarity[0]) if similarity else 0

    def saved(start: int, end: int) -> int:
        static = sum(all(similarity[t][p] > tau for t in range(start, end - 1)) for p in range(cells))
        return (end - start - 1) * static if end - start > 1 else 0

    best, cut = [0] + [-1] * frames, [0] * (frames + 1)
    for end in range(1, frames + 1):
        for start in reversed(range(end)):
            if best[start] + saved(start, end) > best[end]:
                best[end], cut[end] = best[start] + saved(start, end), start
    windows, end = [], frames
    while end > 0:
        windows.insert(0, (cut[end], end))
        end = cut[end]
    return best[frames], windows


@pytest.mark.parametrize("seed", range(4))
def test_holitom_windows_are_the_published_dynamic_programme(seed):
    generator = torch.Generator().manual_seed(seed)
    # blocks of calm frames (high cosines) between cuts, so that windows matter
    similarity = 0.6 + 0.4 * torch.rand(11, 6, generator=generator)
    similarity[[3, 7]] -= 0.5
    windows = holistic_windows(similarity, 0.8, 1024)
    value, published = holitom_published_windows(similarity.tolist(), 0.8)
    assert windows == published
    assert value > 0


def test_holitom_window_ties_keep_the_shortest_last_window():
    """Cell 0 still over frames 0-1, cell 1 over frames 1-2: one window of all three saves as much as two of two
    and one frames; the published search keeps the shorter last window, so cell 0 folds (token 2 into 0)."""
    assert holistic_windows(torch.tensor([[0.99, 0.10], [0.10, 0.99]]), 0.8, 1024) == [(0, 2), (2, 3)]
    a, b, c, d = features(4, 1, 8, seed=3)[:, 0]
    layout = VisualLayout.from_videos([0], [(3, 1, 2)]).with_saliency(torch.ones(6))
    method = HoliTom(ratio=5 / 6, inner_merge=0.0)
    reduction = method.reduce_pre_llm(torch.stack([a, b, a, c, d, c]), layout, LayerBudget(method.ratio, 6, 4))
    assert reduction.keep.tolist() == [0, 1, 3, 4, 5]


def published_static_clusters(units: torch.Tensor, count: int, neighbours: int = 7) -> list[list[int]]:
    """HoliTom's clustering of a window's static cells: DPC-KNN with k = min(7, count) and the top `count` scores
    as centres (duplicates too), each cell joining its nearest centre."""
    k = min(neighbours, count)
    distance = torch.cdist(units, units) / units.shape[-1] ** 0.5
    density = (-(distance.topk(k, largest=False).values ** 2).mean(-1)).exp()
    denser = (density[None, :] > density[:, None]).float()
    delta = (distance * denser + distance.max() * (1 - denser)).min(-1).values
    centres = (delta * density).topk(count).indices.sort().values
    joined = distance[:, centres].argmin(-1)
    joined[centres] = torch.arange(count)
    return sorted(sorted(torch.nonzero(joined == c).squeeze(1).tolist()) for c in range(count))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("duplicates", [0, 8])
def test_holitom_clusters_static_cells_as_published(seed, duplicates):
    """A still video: its 16 cells are static over the window, clustered into 3 (k = 3 neighbours, not 7) - and where
    half the cells are one flat background (9 distinct), into 12 all the same (zero scores make the count, as a
    top-k; the published code breaks those ties with noise, so only the count is compared there)."""
    frames, cells, count = 2, 16, 12 if duplicates else 3
    frame = features(1, cells, 8, seed=seed)[0]
    frame[:duplicates] = frame[0]
    layout = VisualLayout.from_videos([0], [(frames, 4, 4)]).with_saliency(torch.ones(frames * cells))
    method = HoliTom(ratio=count / (frames * cells), inner_merge=0.0)
    reduction = method.reduce_pre_llm(frame.repeat(frames, 1), layout, LayerBudget(method.ratio, frames * cells, 4))
    assert reduction.keep.numel() == count
    if duplicates:
        return
    joined = reduction.keep[reduction.merge_into[:cells]]  # the first frame's cells: their cluster's token
    clusters = sorted(sorted(torch.nonzero(joined == token).squeeze(1).tolist()) for token in joined.unique())
    assert clusters == published_static_clusters(frame, 3)


def test_holitom_folds_static_cells_over_the_window_and_keeps_each_frames_most_attended_moving_tokens():
    frames, cells = 4, 9
    tokens = features(frames, cells, 16, seed=1)
    tokens[:, :3] = tokens[:1, :3]  # cells 0-2 never move: static over the whole video
    saliency = torch.rand(frames * cells, generator=torch.Generator().manual_seed(2))
    layout = VisualLayout.from_videos([0], [(frames, 3, 3)]).with_saliency(saliency)
    # 3 static units + 6 moving tokens per frame = 27 units; 9 kept is a third of each: 1 cluster, 2 per frame
    method = HoliTom(ratio=9 / 36, inner_merge=0.0)
    reduction = method.reduce_pre_llm(tokens.reshape(-1, 16), layout, LayerBudget(method.ratio, 36, 4))
    destination = destinations(reduction, 36)
    assert [destination[t * cells + cell] for t in range(frames) for cell in range(3)] == [0] * 12
    for t in range(frames):
        moving = list(range(t * cells + 3, (t + 1) * cells))
        expected = sorted(sorted(moving, key=lambda i: -float(saliency[i]))[:2])
        assert [i for i in moving if destination[i] == i] == expected
        assert all(destination[i] in (i, -1) for i in moving)


def test_holitom_raises_tau_rather_than_end_below_the_budget():
    tokens = features(1, 9, 16, seed=3).expand(4, -1, -1).reshape(-1, 16)  # four identical frames
    layout = VisualLayout.from_videos([0], [(4, 3, 3)]).with_saliency(torch.ones(36))
    for ratio, kept in ((9 / 36, 9), (0.5, 18)):  # one frame's worth folds; more than that cannot
        method = HoliTom(ratio=ratio, inner_merge=0.0)
        assert len(method.reduce_pre_llm(tokens, layout, LayerBudget(ratio, 36, 4)).keep) == kept


@pytest.mark.parametrize("family", TOWERED)
def test_holitom_identical_frames_collapse_to_one_token_per_cell(family, clip):
    model = model_for(family)
    inputs = inputs_for(family, clip[:1].expand(8, -1, -1, -1).contiguous(), "What is in the picture?")
    (layout,) = adapter_for(model).visual_layouts(inputs)
    visual, separators = layout.positions.tolist(), layout.positions[layout.is_separator].tolist()
    per_frame = layout.grids[0][1] * layout.grids[0][2]
    ratio = (per_frame + len(separators)) / len(visual)
    with tokcompress.compress(model, HoliTom(ratio=ratio, inner_merge=0.0)) as handle:
        generate(model, inputs, max_new_tokens=2)
        kept = [visual.index(p) for p in handle.stats.samples[0].kept_positions if p not in separators]
    assert sorted(layout.spatial[kept].tolist()) == list(range(per_frame))


def test_holitom_inner_merge_folds_the_least_attended_into_their_most_similar_kept_token():
    tokens = features(8, 6, seed=4)
    attention = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.05, 0.6, 0.3])
    memory, method = {}, HoliTom(ratio=0.75, inner_layer=1, inner_merge=0.5)
    layout = VisualLayout.from_videos([0], [(1, 2, 4)])
    scoring = LayerSample(0, tokens, layout, LayerBudget(0.75, 8, 2, 0, 0), memory, lambda q: attention)
    assert method.reduce_in_llm(scoring) is None
    merging = LayerSample(1, tokens, layout, LayerBudget(0.75, 8, 2, 1, 8), memory, lambda q: attention)
    destination = destinations(method.reduce_in_llm(merging), 8)
    kept = [0, 2, 4, 6]  # the top half by the last token's attention at the layer before
    assert [i for i in range(8) if destination[i] == i] == kept
    for i in (1, 3, 5, 7):
        assert destination[i] == max(kept, key=lambda k: float(torch.cosine_similarity(tokens[i], tokens[k], dim=0)))


@pytest.mark.parametrize("attention", [
    torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.05, 0.6, 0.3]),  # each video keeps two
    torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.05, 0.3]),  # the second keeps none
])
def test_holitom_inner_merge_never_folds_a_token_into_another_videos(attention):
    """Two videos of one frame: the second's tokens are copies of the first's, so the most similar kept token is
    the other video's twin; each folds into its own video's closest kept token instead, or where its video kept
    none, is dropped."""
    tokens = features(4, 6, seed=4).repeat(2, 1)
    memory, method = {}, HoliTom(ratio=0.75, inner_layer=1, inner_merge=0.5)
    layout = VisualLayout.from_videos([0, 4], [(1, 2, 2), (1, 2, 2)])
    scoring = LayerSample(0, tokens, layout, LayerBudget(0.75, 8, 2, 0, 0), memory, lambda q: attention)
    assert method.reduce_in_llm(scoring) is None
    merging = LayerSample(1, tokens, layout, LayerBudget(0.75, 8, 2, 1, 8), memory, lambda q: attention)
    destination = destinations(method.reduce_in_llm(merging), 8)
    kept = [i for i in range(8) if destination[i] == i]
    for i in set(range(8)) - set(kept):
        own = [k for k in kept if k // 4 == i // 4]
        expected = max(own, key=lambda k: float(torch.cosine_similarity(tokens[i], tokens[k], dim=0))) if own else -1
        assert destination[i] == expected


# ---------------------------------------------------------------------------------------------- AIM


def aim_published_importance(queries, keys, temperature: float, iterations: int) -> torch.Tensor:
    """AIM's PageRank, per head: dist ← dist · softmax(S / τ) from uniform, S the causal-masked logits."""
    heads, count, dim = queries.shape
    group = heads // keys.shape[0]
    distributions = []
    for head in range(heads):
        logits = queries[head] @ keys[head // group].T / math.sqrt(dim)
        logits = logits.masked_fill(torch.ones(count, count, dtype=torch.bool).triu(1), float("-inf"))
        transition = torch.softmax(logits / temperature, dim=-1)
        distribution = torch.full((count,), 1.0 / count)
        for _ in range(iterations):
            distribution = distribution @ transition
        distributions.append(distribution)
    return torch.stack(distributions).pow(2).mean(dim=0).sqrt()


@pytest.mark.parametrize(("heads", "kv_heads", "chunk"), [(4, 4, 256), (8, 2, 5)])
@pytest.mark.parametrize("cache_elements", [0, 2**27], ids=["recomputed", "cached"])
def test_aim_pagerank_is_the_published_iteration(heads, kv_heads, chunk, cache_elements):
    queries, keys = features(heads, 23, 8, seed=5), features(kv_heads, 23, 8, seed=6)
    expected = aim_published_importance(queries, keys, 0.1, 5)
    importance = attention_pagerank(queries, keys, 0.1, 5, chunk, cache_elements)
    torch.testing.assert_close(importance, expected, rtol=1e-5, atol=1e-7)


def aim_published_merge_round(frame: torch.Tensor) -> dict[int, int]:
    """One official round with r = t / 2: every even token merges into its most similar odd token."""
    unit = torch.nn.functional.normalize(frame, dim=-1)
    return {a: 2 * int((unit[1::2] @ unit[a]).argmax()) + 1 for a in range(0, len(frame), 2)}


def test_aim_merge_halves_each_frame_as_the_published_bipartite_round():
    tokens = features(3 * 8, 12, seed=7)
    frame_of = torch.arange(3).repeat_interleave(8)
    owner = merge_within_frames(tokens, frame_of, torch.tensor([4, 4, 4])).tolist()
    for frame in range(3):
        expected = aim_published_merge_round(tokens[frame * 8 : (frame + 1) * 8])
        for a, b in expected.items():
            assert owner[frame * 8 + a] == frame * 8 + b
        assert all(owner[frame * 8 + b] == frame * 8 + b for b in range(1, 8, 2))


def test_aim_schedule_and_default_ratio_are_the_official_28_layer_ones():
    # official retain_rate after layer l: 1 below 14, then 1 - (l - 13) / 8; here the share entering layer l + 1
    official = [1.0 if layer < 14 else max(0.0, 1 - (layer - 13) * 0.125) for layer in range(27)]
    assert pruning_schedule(28) == [1.0, *official]
    assert AIM().ratio == pytest.approx(0.25 * sum(pruning_schedule(28)) / 28)
    merge, schedule = AIM(ratio=0.9).shares(28)
    assert merge == 1.0 and sum(schedule) / 28 == pytest.approx(0.9)


def test_aim_keeps_the_visual_tokens_the_previous_layers_pagerank_ranks_highest():
    queries, keys, visual = features(4, 10, 8, seed=8), features(2, 10, 8, seed=9), torch.arange(2, 8)
    layout, memory, method = VisualLayout.from_videos([2], [(1, 2, 3)]), {}, AIM(ratio=0.5)  # 4 layers: drop before 3
    scoring = LayerSample(2, torch.zeros(6, 4), layout, LayerBudget(0.875, 6, 4, 2, 12), memory, None,
                          queries_and_keys=lambda: (queries, keys, visual))
    assert method.reduce_in_llm(scoring) is None
    pruning = LayerSample(3, torch.zeros(6, 4), layout, LayerBudget(0.875, 6, 4, 3, 18), memory, None)
    kept = method.reduce_in_llm(pruning).keep.tolist()  # the budget leaves 3 tokens for the last layer
    ranked = torch.sort(attention_pagerank(queries, keys)[visual], descending=True).indices
    assert kept == sorted(ranked[:3].tolist())


def test_aim_layers_keep_fewer_visual_tokens_as_they_go(family, clip):
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is the man doing?")
    with tokcompress.compress(model, AIM(ratio=0.6)) as handle:
        generate(model, inputs, max_new_tokens=2)
        per_layer = handle.stats.samples[0].visual_per_layer
    assert per_layer == sorted(per_layer, reverse=True) and per_layer[-1] < per_layer[0]


# ---------------------------------------------------------------------------------------------- TS-LLaVA


def test_tsllava_keeps_the_published_v2_thumbnail_and_sampled_tokens():
    frames, side = 50, 24
    layout = VisualLayout.from_videos([0], [(frames, side, side)])
    count = frames * side * side
    reduction = TSLLaVA().reduce_pre_llm(torch.zeros(count, 2), layout, LayerBudget(TSLLaVA().ratio, count, 4))
    destination = destinations(reduction, count)
    assert len(reduction.keep) == 2880 + 576
    thumbnail = [round(x) for x in torch.linspace(0, 49, 6).tolist()]
    assert thumbnail == [0, 10, 20, 29, 39, 49]
    for frame in thumbnail:  # 3 rows × 2 cols of tiles: each frame pooled to 8 × 12, blocks of 3 × 2 cells
        for row in range(side):
            for col in range(side):
                anchor = frame * 576 + (row // 3 * 3) * side + col // 2 * 2
                assert destination[frame * 576 + row * side + col] == anchor
    rest = [t for f in range(frames) if f not in thumbnail for t in range(f * 576, (f + 1) * 576)]
    sampled = [rest[round(x)] for x in torch.linspace(0, len(rest) - 1, 2880, dtype=torch.float64).tolist()]
    assert [t for t in rest if destination[t] == t] == sampled


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.9])
def test_tsllava_meets_the_budget_with_a_smaller_or_no_thumbnail(ratio):
    layout = VisualLayout.from_videos([0], [(8, 3, 3)])
    reduction = TSLLaVA(ratio=ratio).reduce_pre_llm(torch.zeros(72, 2), layout, LayerBudget(ratio, 72, 4))
    assert len(reduction.keep) == round(ratio * 72)
