"""Fidelity, continued: QuoTA and LLaVA-PruMerge+ against plain transcriptions of their published rules
(`shared/reference/methods-2.md` §21, `methods.md` §13), written as loops."""

from __future__ import annotations

import itertools
import math

import numpy
import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.layout import VisualLayout
from tokcompress.methods import LayerBudget, PruMerge, QuoTA
from tokcompress.methods.base import LayerSample
from tokcompress.methods.quota import pooled_cells, quota_grid
from tokcompress.methods.selection import apportion

from .conftest import TINY, inputs_for, logits, model_for
from .test_fidelity import destinations, features

# ---------------------------------------------------------------------------------------------- QuoTA


def quota_published_grid(tokens: int) -> tuple[int, int]:
    """QuoTA v1's grid for a frame given `tokens` (methods-2.md §21.4 step 5): h = w = ⌊√n⌋, then h + 1 if
    (h + 1) · w ≤ n, else w + 1 if h · (w + 1) ≤ n."""
    h = w = math.isqrt(tokens)
    if (h + 1) * w <= tokens:
        h += 1
    elif h * (w + 1) <= tokens:
        w += 1
    return h, w


def test_quota_sizes_a_square_frames_grid_as_the_official_code():
    assert all(quota_grid(27, 27, n) == quota_published_grid(n) for n in range(1, 27 * 27 + 1))
    assert quota_grid(27, 27, 130) == (11, 11)  # the worked example: uniform scores over 96 frames give 130 each


@pytest.mark.parametrize(("height", "width"), [(3, 3), (4, 6), (1, 7), (7, 2), (5, 5)])
def test_quota_pools_a_frame_to_exactly_its_share_in_rectangular_blocks(height, width):
    for count in range(1, height * width + 1):
        head = pooled_cells(height, width, count).tolist()
        blocks = {h: [cell for cell in range(height * width) if head[cell] == h] for h in set(head)}
        assert len(blocks) == count
        for first, cells in blocks.items():
            rows, cols = {cell // width for cell in cells}, {cell % width for cell in cells}
            assert first == min(cells) and len(cells) == len(rows) * len(cols)  # a whole rectangle, led by its first
            assert max(rows) - min(rows) < len(rows) and max(cols) - min(cols) < len(cols)  # of adjacent cells
        rows, cols = quota_grid(height, width, count)
        if rows * cols == count:  # no block split: the area pooling of the grid itself
            cells = itertools.product(range(height), range(width))
            expected = [(r * rows // height, c * cols // width) for r, c in cells]
            assert len({expected[cell] for cell in blocks[head[0]]}) == 1
            assert len({expected[first] for first in blocks}) == count
    assert pooled_cells(3, 3, 0).tolist() == [-1] * 9


def quota_sample(relevance: list[float], question: bool = True) -> tuple[LayerSample, list]:
    """Four 3 × 3 frames whose tokens the last tokens attend to by their frame's `relevance`, seen before layer 2 of
    4 (the budget keeps 12 of the 36 tokens from there on), with 5 tokens of text after them (or none)."""
    layout = VisualLayout.from_videos([0], [(4, 3, 3)])
    attention = torch.tensor(relevance).repeat_interleave(9) / 9
    asked = []

    def attention_to_visual(queries):
        asked.append(queries)
        return attention

    ratio = (2 * 36 + 2 * 12) / (4 * 36)
    budget = LayerBudget(ratio, 36, 4, 2, 2 * 36)
    text = features(5 if question else 0, 8)
    return LayerSample(2, features(36, 8), layout, budget, {}, attention_to_visual, text), asked


def test_quota_gives_frames_the_question_attends_to_a_share_by_the_square_of_it_and_drops_those_rounding_to_none():
    sample, asked = quota_sample([0.4, 0.2, 0.1, 0.01])
    method = QuoTA(ratio=sample.budget.ratio)
    assert method.reduce_in_llm(LayerSample(**{**vars(sample), "layer": 1})) is None  # layer 2 by default
    reduction = method.reduce_in_llm(sample)
    assert asked == [5] and reduction.keep.numel() == sample.budget.tokens_per_layer() == 12  # the question's rows
    # w ∝ (100 p)²: 12 · w = 9.14, 2.28, 0.57, 0.006; frame 0 is capped at its 9 cells and gives 0.14 to the others
    # (by weight), then largest remainders: 9, 2, 1, 0 - frame 3 is dropped
    kept_per_frame = torch.bincount(sample.layout.frame[reduction.keep], minlength=4).tolist()
    assert kept_per_frame == [9, 2, 1, 0]
    destination = destinations(reduction, 36)
    assert destination[:9] == list(range(9))  # frame 0 whole
    assert destination[9:18] == [9] * 6 + [15] * 3  # frame 1 as a 2 × 1 grid: rows 0-1 and row 2
    assert destination[18:27] == [18] * 9  # frame 2 in one token
    assert destination[27:] == [-1] * 9


def test_quota_without_text_after_the_video_asks_the_last_token():
    sample, asked = quota_sample([0.1, 0.1, 0.3, 0.1], question=False)
    reduction = QuoTA(ratio=sample.budget.ratio, power=0).reduce_in_llm(sample)
    assert asked == [1]
    assert torch.bincount(sample.layout.frame[reduction.keep], minlength=4).tolist() == [3, 3, 3, 3]  # power 0: even


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_quota_shares_the_budget_by_the_attention_the_question_pays_each_frame_at_layer_k(family, clip):
    """Against the stock model's own attention maps (eager, unpatched): layer 2's rows of the text after the video,
    averaged over heads, rows and each frame's tokens, weigh the frames; each keeps its pooled share."""
    model = model_for(family, "eager")
    inputs = inputs_for(family, clip, "What is moving in this video, and where does it go?")
    ids = inputs["input_ids"][0]
    visual = (ids == tiny.VIDEO).nonzero().squeeze(1)
    per_frame = TINY[family].tokens_per_unit
    frames = visual[: len(visual) // per_frame * per_frame].view(-1, per_frame)  # LLaVA-OV's newline is last
    question = torch.arange(int(visual[-1]) + 1, len(ids))
    with torch.no_grad():
        attention = model(**inputs, output_attentions=True).attentions[2][0].double()  # (heads, rows, keys)
    relevance = attention[:, question][:, :, frames].mean(dim=(0, 1, 3))
    with tokcompress.compress(model, "quota", ratio=0.75) as handle:
        logits(model, inputs)
        (sample,) = handle.stats.samples
    assert sample.visual_per_layer[:2] == [len(visual)] * 2  # K = 2
    separators = visual[frames.numel():].tolist()
    weights = ((relevance / relevance.max()) ** 2).tolist()
    shares = apportion(sample.visual_out - len(separators), weights, [per_frame] * len(frames))
    side = math.isqrt(per_frame)
    heads = [set(pooled_cells(side, side, share).tolist()) - {-1} for share in shares]
    pooled = [int(tokens[head]) for tokens, frame_heads in zip(frames, heads) for head in frame_heads]
    assert sample.kept_positions == sorted(separators + pooled)


def test_quota_keeps_the_same_share_of_frames_of_different_sizes_the_question_attends_to_alike():
    layout = VisualLayout.from_videos([0, 8], [(2, 2, 2), (2, 4, 4)])  # two videos: 2 × 4 and 2 × 16 tokens
    for power in (0.0, 2.0):
        reduction = QuoTA(power=power).assign(torch.full((40,), 1 / 40), layout, 20)
        assert torch.bincount(layout.frame[reduction.keep]).tolist() == [2, 2, 8, 8]


def test_quota_a_high_power_favours_the_most_relevant_frame_more_not_less():
    """(100 p)^power of attentions about 1/N would underflow in float32 at high powers, which splits evenly."""
    layout = VisualLayout.from_videos([0], [(64, 27, 27)])
    relevance = torch.full((64 * 729,), 1 / (64 * 729))
    relevance[:729] *= 5  # frame 0 is five times as relevant
    for power in (2.0, 8.0, 16.0):
        kept = torch.bincount(layout.frame[QuoTA(power=power).assign(relevance, layout, 4000).keep], minlength=64)
        assert int(kept[0]) == 729 and int(kept[1:].max()) < 729


def test_quota_reads_frames_held_in_another_order_by_their_cells():
    """Ovis2.5's prompt holds a frame's tokens in window order: each cell pools with the same cells as in raster
    order."""
    frames, side = 3, 4
    window = torch.tensor([0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])  # 2 × 2 windows: token k, cell
    raster = VisualLayout.from_videos([0], [(frames, side, side)])
    held = VisualLayout(raster.positions, raster.video, raster.frame, window.repeat(frames), raster.grids)
    cell_of_held = (torch.arange(frames)[:, None] * side * side + window).flatten()  # per held token, its cell
    relevance = torch.tensor([3.0, 1.0, 2.0]).repeat_interleave(side * side)
    outcomes = []
    for layout, order in ((raster, torch.arange(frames * side * side)), (held, cell_of_held)):
        reduction = QuoTA().assign(relevance[order], layout, 11)
        slot = reduction.assignment(len(order))
        survivor = torch.where(slot >= 0, order[reduction.keep[slot.clamp_min(0)]], -1)
        outcome = torch.empty_like(survivor)
        outcome[order] = survivor  # per cell, the cell it pools into
        outcomes.append(outcome)
    assert torch.equal(outcomes[0], outcomes[1])


def test_quota_refuses_bad_knobs():
    with pytest.raises(ValueError, match=r"quota power must lie in \[0, 16\]"):
        QuoTA(power=-1)
    with pytest.raises(ValueError, match="quota layer must be an int ≥ 0 or None"):
        QuoTA(layer=-2)


# ---------------------------------------------------------------------------------------------- PruMerge


def prumerge_published_outliers(scores: list[float]) -> list[int]:
    """`outlier_dectection` (methods.md §13 step 2): the scores above Q3 + 1.5 · IQR, numpy's percentiles."""
    q1, q3 = numpy.percentile(scores, 25), numpy.percentile(scores, 75)
    return [i for i, score in enumerate(scores) if score > q3 + 1.5 * (q3 - q1)]


def prumerge_expected_kept(scores: list[float], quota: int, plus: bool) -> list[int]:
    """The outliers (the most attended of them beyond the quota), then PruMerge+'s uniform fill over the other
    cells in raster order - the ⌊(j + ½) · m / r⌋-th of the m others - or PruMerge's next most attended."""
    by_attention = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if not plus:
        return sorted(by_attention[:quota])
    outliers = set(prumerge_published_outliers(scores))
    kept = [i for i in by_attention if i in outliers][:quota]
    others = [i for i in range(len(scores)) if i not in kept]
    wanted = quota - len(kept)
    return sorted(kept + [others[(j * 2 + 1) * len(others) // (2 * wanted)] for j in range(wanted)])


@pytest.mark.parametrize("plus", [True, False])
def test_prumerge_fences_outliers_with_numpys_interpolated_quartiles(plus):
    """On 4 × 4 frames the quartiles fall between tokens, where interpolation decides the fence."""
    saliency = torch.rand(200, 16, generator=torch.Generator().manual_seed(2)) ** 4
    kept = PruMerge(plus=plus).kept_tokens(saliency, [6] * 200)
    for frame in range(200):
        expected = prumerge_expected_kept(saliency[frame].tolist(), 6, plus)
        assert kept[frame].nonzero().squeeze(1).tolist() == expected


@pytest.mark.parametrize("plus", [True, False])
@pytest.mark.parametrize("ratio", [0.04, 0.12, 0.24, 0.48])
def test_prumerge_keeps_the_attention_outliers_then_uniform_cells_and_folds_the_rest_into_the_nearest(plus, ratio):
    frames, side = 3, 5
    count = frames * side * side
    generator = torch.Generator().manual_seed(1)
    saliency = torch.rand(count, generator=generator)
    saliency[[3, 7, 30, 33, 34, 60]] += torch.tensor([4.0, 2.0, 3.0, 5.0, 1.5, 2.5])  # outliers in every frame
    layout = VisualLayout.from_videos([0], [(frames, side, side)]).with_saliency(saliency)
    tokens = features(count, 6)
    reduction = PruMerge(ratio=ratio, plus=plus).reduce_pre_llm(tokens, layout, LayerBudget(ratio, count, 4))
    quota = round(ratio * count) // frames  # 3, 9, 18 or 36 of 75 tokens: an equal share for each frame
    expected = []
    for frame in range(frames):
        cells = list(range(frame * 25, frame * 25 + 25))
        expected += [cells[0] + i for i in prumerge_expected_kept(saliency[cells].tolist(), quota, plus)]
    assert reduction.keep.tolist() == expected
    assert len(prumerge_published_outliers(saliency[:25].tolist())) == 2
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    for token, target in enumerate(destinations(reduction, count)):
        same_frame = [k for k in expected if k // 25 == token // 25]
        nearest = max(same_frame, key=lambda k: float(unit[token] @ unit[k]))
        assert target == (token if token in expected else nearest)

