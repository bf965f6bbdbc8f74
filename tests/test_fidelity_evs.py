"""EVS: its decisions against a plain transcription of the published rule, and where it departs on purpose."""

from __future__ import annotations

import math

import pytest
import torch

from tokcompress.layout import VisualLayout
from tokcompress.methods import EVS, LayerBudget

from .test_fidelity import cosine, features


def evs_published(video: torch.Tensor, pruning_rate: float) -> list[int]:
    """EVS on one video of T frames × N tokens (raster order): frame 0 kept whole; every other token ranked by
    1 − cos with the token at its cell in the previous frame; max(N, int(T · N · (1 − q))) kept in all."""
    frames, cells = video.shape[:2]
    novelty = {
        t * cells + c: math.inf if t == 0 else 1 - cosine(video[t, c], video[t - 1, c])
        for t in range(frames) for c in range(cells)
    }
    count = max(cells, int(frames * cells * (1 - pruning_rate)))
    return sorted(sorted(novelty, key=lambda i: -novelty[i])[:count])


def evs_keep(tokens: torch.Tensor, layout: VisualLayout, ratio: float) -> list[int]:
    budget = LayerBudget(ratio, layout.num_tokens, 4)
    return EVS(ratio=ratio).reduce_pre_llm(tokens, layout, budget).keep.tolist()


@pytest.mark.parametrize("pruning_rate", [0.5, 0.7, 0.75])
def test_evs_keeps_what_the_published_rule_keeps(pruning_rate):
    video = features(5, 6, 16, seed=4)
    kept = int(30 * (1 - pruning_rate))
    keep = evs_keep(video.reshape(30, 16), VisualLayout.from_videos([0], [(5, 2, 3)]), kept / 30)
    assert keep == evs_published(video, pruning_rate)


def test_evs_keeps_the_first_frame_and_the_cells_that_change():
    still = features(1, 9, 16).expand(4, -1, -1).clone()
    still[2:, 4] = features(2, 16, seed=1)  # the centre cell changes in frames 2 and 3
    keep = evs_keep(still.reshape(36, 16), VisualLayout.from_videos([0], [(4, 3, 3)]), 11 / 36)
    assert keep == [*range(9), 2 * 9 + 4, 3 * 9 + 4]


def test_evs_meets_a_budget_below_one_frame_with_the_cells_that_change_next():
    """The published count never falls below the first frame; the ratio here does, and the first frame's cells
    compete by how much they change in the second."""
    video = features(1, 9, 16).expand(3, -1, -1).clone()
    video[1:, [2, 6]] = features(2, 2, 16, seed=2)
    keep = evs_keep(video.reshape(27, 16), VisualLayout.from_videos([0], [(3, 3, 3)]), 2 / 27)
    assert keep == [2, 6]


def test_evs_measures_novelty_against_the_previous_frame_that_stands():
    """After an earlier stage dropped frame 1, frame 2 is compared with frame 0: the cell that frame 1 alone
    changed is not novel."""
    video = features(1, 4, 16).expand(3, -1, -1).clone()
    video[1, 0] = features(16, seed=3)  # only frame 1 (dropped) differs, at cell 0
    video[2, 3] = features(16, seed=4)  # frame 2 differs from frame 0 at cell 3
    layout = VisualLayout.from_videos([0], [(3, 2, 2)])
    standing = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])
    keep = evs_keep(video.reshape(12, 16)[standing], layout.select(standing), 5 / 8)
    assert keep == [0, 1, 2, 3, 7]


def test_evs_gives_each_video_its_share_and_keeps_separators_first():
    """Two videos of a prompt, 12 and 24 cells, each followed by a separator: the budget's cells split 1 : 2."""
    layout = VisualLayout.from_videos([0, 20], [(3, 2, 2), (6, 2, 2)], separators_per_video=1)
    keep = evs_keep(features(38, 16, seed=5), layout, 11 / 38)
    assert {12, 37} <= set(keep) and len(keep) == 11
    assert sum(index < 12 for index in keep) == 3 and sum(13 <= index < 37 for index in keep) == 6


def test_a_one_frame_video_below_one_frames_budget_keeps_its_most_distinctive_tokens():
    """No next frame to rank its cells by: a one-frame video (or an image) keeps the tokens that differ most from
    its frame's mean - here the four that stand out of a flat background - not the first cells in raster order."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 8, generator=generator) + 0.05 * torch.randn(16, 8, generator=generator)
    standing_out = [3, 6, 9, 14]
    tokens[standing_out] = 3 * torch.randn(4, 8, generator=generator)
    layout = VisualLayout.from_videos([0], [(1, 4, 4)])
    assert EVS(ratio=0.25).reduce_pre_llm(tokens, layout, LayerBudget(0.25, 16, 4)).keep.tolist() == standing_out
