"""Fidelity of the pruning methods (DivPrune, VidCom², PyramidDrop, PruneVid, SparseVLM): each one's decisions agree
with a plain transcription of its published rule (as test_fidelity.py does for the others)."""

from __future__ import annotations

import math

import pytest
import torch

from tokcompress.layout import VisualLayout
from tokcompress.methods import DivPrune, LayerBudget, PDrop, PruneVid, SparseVLM, VidCom2
from tokcompress.methods.base import LayerSample

from .test_fidelity import cosine, features

# ---------------------------------------------------------------------------------------------- DivPrune


def divprune_published(tokens: torch.Tensor, count: int) -> list[int]:
    """DivPrune (methods.md §12): D = 1 − cosine; first the token whose nearest neighbour is farthest, then
    repeatedly the token with the largest distance to its nearest kept token."""
    n = len(tokens)
    distance = [[1 - cosine(tokens[i], tokens[j]) for j in range(n)] for i in range(n)]
    nearest = [min(distance[i][j] for i in range(n) if i != j) for j in range(n)]
    kept = [max(range(n), key=lambda j: nearest[j])]
    while len(kept) < count:
        candidates = [j for j in range(n) if j not in kept]
        kept.append(max(candidates, key=lambda j: min(distance[s][j] for s in kept)))
    return sorted(kept)


@pytest.mark.parametrize("count", [1, 4, 9])
def test_divprune_keeps_the_tokens_the_max_min_rule_keeps(count):
    layout = VisualLayout.from_videos([0], [(2, 3, 4)])
    tokens = features(24, 12)
    ratio = count / 24
    keep = DivPrune(ratio=ratio).reduce_pre_llm(tokens, layout, LayerBudget(ratio, 24, 4)).keep.tolist()
    assert keep == divprune_published(tokens, count)


def test_divprune_takes_one_token_of_each_cluster_before_a_second():
    layout = VisualLayout.from_videos([0], [(1, 4, 4)])
    centres = features(4, 32) * 5
    tokens = centres.repeat_interleave(4, dim=0) + 0.05 * features(16, 32, seed=1)  # 4 clusters of 4
    keep = DivPrune(ratio=0.25).reduce_pre_llm(tokens, layout, LayerBudget(0.25, 16, 4)).keep
    assert sorted((keep // 4).tolist()) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------- VidCom²


def vidcom2_published(tokens: torch.Tensor, ratio: float) -> tuple[list[int], list[set[int]]]:
    """VidCom² (methods.md §10) on frames × P tokens: per-frame budgets k_t and the kept cells of each frame."""
    frames, per_frame, _ = tokens.shape
    flat = tokens.reshape(frames * per_frame, -1)
    variance = flat.var(dim=0)
    quiet = sorted(range(flat.shape[1]), key=lambda c: float(variance[c]))[: flat.shape[1] // 2]
    unit = torch.nn.functional.normalize(flat[:, quiet], dim=-1).reshape(frames, per_frame, -1)

    def score(x, centre):
        d = float(((x - centre) ** 2).sum())
        return sum(math.exp(-d / (2 * a)) for a in (1 / 8, 1 / 4, 1 / 2, 1, 2))

    video_centre = unit.reshape(-1, unit.shape[-1]).mean(0)
    video = [[score(unit[t, p], video_centre) for p in range(per_frame)] for t in range(frames)]
    frame = [[score(unit[t, p], unit[t].mean(0)) for p in range(per_frame)] for t in range(frames)]
    u = [-sum(v) / per_frame for v in video]
    exps = [math.exp((x - max(u)) / 0.01) for x in u]
    p = [e / sum(exps) for e in exps]
    budgets = [max(1, round(min(ratio * (1 + pt - sum(p) / frames), 1) * per_frame)) for pt in p]
    kept = [set(sorted(range(per_frame), key=lambda c: video[t][c] + frame[t][c])[: budgets[t]]) for t in range(frames)]
    return budgets, kept


def test_vidcom2_gives_the_most_distinct_frame_the_largest_budget_and_keeps_its_most_distinct_cells():
    tokens = features(1, 9, 16).repeat(4, 1, 1) + 0.1 * features(4, 9, 16, seed=1)  # four similar frames ...
    tokens[2] = features(9, 16, seed=2) * 3  # ... and a distinct one
    layout = VisualLayout.from_videos([0], [(4, 3, 3)])
    ratio = 12 / 36
    keep = VidCom2(ratio=ratio).reduce_pre_llm(tokens.reshape(36, 16), layout, LayerBudget(ratio, 36, 4)).keep
    ours = [{c for c in range(9) if 9 * t + c in set(keep.tolist())} for t in range(4)]
    budgets, official = vidcom2_published(tokens, ratio)
    assert max(range(4), key=lambda t: len(ours[t])) == 2 == max(range(4), key=lambda t: budgets[t])
    assert sum(len(kept) for kept in ours) == 12  # the budget, where the official rounding can miss it by one
    for kept, budget, published in zip(ours, budgets, official):
        assert abs(len(kept) - budget) <= 1
        assert kept <= published or published <= kept  # the same ranking: one count's top is inside the other's


# ---------------------------------------------------------------------------------------------- PyramidDrop


def test_pdrop_keeps_the_last_instruction_tokens_top_at_each_stage_geometrically():
    """A 32-layer model at the paper's λ = 0.5: stages before layers 8 / 16 / 24 keep 1/2, 1/4, 1/8 of N,
    ranked by the last token's attention at that layer (methods.md §11)."""
    method, memory, n = PDrop(), {}, 64
    layout = VisualLayout.from_videos([0], [(4, 4, 4)])
    assert method.boundaries(LayerBudget(method.ratio, n, 32)) == [8, 16, 24]
    current, spent, counts = torch.arange(n), 0, []
    for layer in range(32):
        attention = features(len(current), seed=layer).abs()
        budget = LayerBudget(method.ratio, n, 32, layer, spent)
        sample = LayerSample(
            layer, torch.zeros(len(current), 4), layout.select(current), budget, memory, lambda q, a=attention: a
        )
        reduction = method.reduce_in_llm(sample)
        if reduction is not None:
            expected = sorted(sorted(range(len(current)), key=lambda i: -float(attention[i]))[: len(reduction.keep)])
            assert reduction.keep.tolist() == expected
            current = current[reduction.keep]
            layout_count = len(current)
            counts.append(layout_count)
        spent += len(current)
    assert counts == [32, 16, 8]
    assert abs(spent / (n * 32) - method.ratio) * n <= 1


@pytest.mark.parametrize("method", [PDrop, SparseVLM])
@pytest.mark.parametrize(("num_layers", "n"), [(4, 64), (32, 64), (32, 1568), (8, 48), (8, 96)])
@pytest.mark.parametrize("ratio", [0.01, 0.05, 0.2, 0.3, 0.9])
def test_staged_pruning_meets_the_layer_averaged_budget_at_any_ratio(method, num_layers, n, ratio):
    """Down to ratios whose budget runs out before the paper's first pruning layer (that layer then moves
    earlier): the layer average is the ratio to within one token, and no layer is left without a visual token
    where the budget gives each one (a few tokens' rounding at an early stage once spent the last stages')."""
    method, memory = method(ratio=ratio), {}
    layout = VisualLayout.from_videos([0], [(n // 16, 4, 4)])
    current, spent, fewest = torch.arange(n), 0, n
    for layer in range(num_layers):
        attention = features(len(current), seed=layer).abs()
        budget = LayerBudget(ratio, n, num_layers, layer, spent)
        sample = LayerSample(layer, features(len(current), 8, seed=layer), layout.select(current), budget, memory,
                             lambda q, a=attention: a)
        reduction = method.reduce_in_llm(sample)
        if reduction is not None:
            current = current[reduction.keep]
        spent, fewest = spent + len(current), min(fewest, len(current))
    assert abs(spent / (n * num_layers) - ratio) * n <= 1
    assert fewest >= 1 or ratio * n < 1


# ---------------------------------------------------------------------------------------------- PruneVid


def prunevid_static(window: torch.Tensor, tau: float) -> list[bool]:
    """PruneVid (methods.md §4.4 step 2): a cell is static when the mean cosine over all ordered pairs of
    different frames exceeds tau."""
    frames, cells, _ = window.shape
    result = []
    for c in range(cells):
        pairs = [cosine(window[t, c], window[u, c]) for t in range(frames) for u in range(frames) if t != u]
        result.append(sum(pairs) / len(pairs) > tau)
    return result


def test_prunevid_static_cells_and_their_merge_follow_the_published_rule():
    from tokcompress.methods.prunevid import merge_destinations, static_cells

    window = features(4, 6, 16)
    window[:, :3] = window[:1, :3] + 0.1 * features(4, 3, 16, seed=1)  # cells 0-2 barely move
    assert static_cells(window, 0.8).tolist() == prunevid_static(window, 0.8)
    layout = VisualLayout.from_videos([0], [(4, 2, 3)])
    destination = merge_destinations(window.reshape(24, 16), layout, 0.8, 0.25, 1.0)  # one segment, no clustering
    static = prunevid_static(window, 0.8)
    for cell in range(6):
        tokens = [6 * t + cell for t in range(4)]
        # a static cell folds into its first frame's token; a dynamic one keeps every frame's
        assert [int(destination[i]) for i in tokens] == ([tokens[0]] * 4 if static[cell] else tokens)


def test_prunevid_keeps_the_tokens_some_question_token_attends_to_most_in_some_head():
    """max over heads, then over question tokens (methods.md §4.4 step 6): one sharp look is enough to survive."""
    layout = VisualLayout.from_videos([0], [(2, 2, 3)])
    attention = torch.full((4, 3, 12), 1 / 12)  # (heads, question tokens, visual tokens): flat ...
    attention[2, 1, 7] = 0.9  # ... but head 2 of question token 1 looks hard at token 7
    attention[0, 0, 3] = 0.5
    method = PruneVid(ratio=0.5, layer=1)
    budget = LayerBudget(0.5, 12, 4, 1, 12)  # layers 1-3 keep (24 - 12) / 3 = 4 tokens
    sample = LayerSample(1, torch.zeros(12, 8), layout, budget, {}, None, torch.zeros(3, 8), lambda rows: attention)
    kept = method.reduce_in_llm(sample).keep.tolist()
    expected = sorted(sorted(range(12), key=lambda i: -float(attention[:, :, i].max()))[:4])
    assert kept == expected and 7 in kept and 3 in kept


# ---------------------------------------------------------------------------------------------- SparseVLM


def sparsevlm_raters(visual: torch.Tensor, question: torch.Tensor) -> list[int]:
    """SparseVLM (methods.md §6.4 step 1): m = mean over visual tokens of softmax over question tokens of V·Tᵀ;
    raters are the question tokens with m above its mean."""
    rows = [torch.softmax(torch.stack([v @ t for t in question]), dim=0) for v in visual]
    m = [sum(float(row[j]) for row in rows) / len(rows) for j in range(len(question))]
    return [j for j in range(len(question)) if m[j] > sum(m) / len(m)]


def test_sparsevlm_rates_by_the_relevant_question_words_and_keeps_what_they_look_at():
    layout = VisualLayout.from_videos([0], [(2, 2, 3)])
    visual, question = features(12, 8), features(5, 8, seed=1)
    question[3] = visual.mean(dim=0) * 4  # the word the video is about
    expected_raters = sparsevlm_raters(visual, question)
    attention = torch.full((2, 5, 12), 1 / 12)
    attention[:, expected_raters, 9] = 0.6  # the raters look at token 9; the other words look at token 1
    attention[:, [j for j in range(5) if j not in expected_raters], 1] = 0.9
    method, memory = SparseVLM(ratio=0.5, recycle=False), {}
    seen = []

    def question_attention(rows):
        seen.append(rows.tolist())
        return attention[:, rows]

    for layer in range(4):
        budget = LayerBudget(0.5, 12, 4, layer, 12 * layer)
        sample = LayerSample(layer, visual, layout, budget, memory, None, question, question_attention)
        reduction = method.reduce_in_llm(sample)
        if reduction is not None:
            break
    assert seen[0] == expected_raters and 3 in expected_raters
    score = attention[:, expected_raters].mean(dim=(0, 1))  # mean over heads and raters: token 1 does not count
    expected = sorted(sorted(range(12), key=lambda i: (-float(score[i]), i))[: reduction.keep.numel()])
    assert reduction.keep.tolist() == expected and 9 in expected


def test_sparsevlm_recycles_the_best_pruned_tokens_as_merged_clusters():
    from tokcompress.methods.sparsevlm import recycled_reduction

    tokens = features(40, 8)
    score = torch.linspace(1, 0, 40)  # token i ranks i-th
    reduction = recycled_reduction(tokens, score, 10, True, torch.zeros(40, dtype=torch.long))  # one video
    candidates = list(range(10, 10 + int(30 * 0.3) + 1))  # the best-rated 30 % (+1) of the 30 below the count
    clusters = len(candidates) // 10 + 1
    assert reduction.keep.numel() == 10
    kept_top = [i for i in reduction.keep.tolist() if i < 10 - clusters]
    assert kept_top == list(range(10 - clusters))
    folded = [i for i in range(40) if int(reduction.merge_into[i]) >= 0 and i not in reduction.keep.tolist()]
    assert set(folded) <= set(candidates) and len(set(folded)) + clusters == len(candidates)


def test_sparsevlm_recycles_clusters_inside_each_video():
    """Two videos, their candidates interleaved in rank: every recycled cluster holds one video's tokens."""
    from tokcompress.methods.sparsevlm import recycled_reduction

    tokens = features(60, 8)
    video = torch.arange(60) % 2  # even tokens one video, odd ones the other
    reduction = recycled_reduction(tokens, torch.linspace(1, 0, 60), 10, True, video)
    assert reduction.keep.numel() == 10
    for token, slot in enumerate(reduction.merge_into.tolist()):
        if slot >= 0:
            assert video[int(reduction.keep[slot])] == video[token]

