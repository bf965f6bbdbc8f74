"""STTM against a plain transcription of its two steps (methods-2.md §20.4): the quadtree descent inside each
frame and the nested joins across frames; its budget met exactly on any grid; identical frames collapsing."""

from __future__ import annotations

import itertools

import pytest
import torch

import tokcompress
from tokcompress.methods.sttm import Quadtree

from .conftest import model_for


def pooled_pyramid(frame: torch.Tensor) -> list[dict[tuple[int, int], tuple[torch.Tensor, set[int]]]]:
    """Coarse to fine: per level, node (row, col) -> (average of its children's features, the cells it covers).
    2× pooling until a side is 2, an odd side's first row / column alone; the whole frame on top."""
    height, width, _ = frame.shape
    level = {(r, c): (frame[r, c], {r * width + c}) for r in range(height) for c in range(width)}
    levels, (h, w) = [level], (height, width)
    while min(h, w) > 2:
        groups, col_groups = pooled_pairs(h), pooled_pairs(w)
        level = {}
        for (pr, rows), (pc, cols) in itertools.product(enumerate(groups), enumerate(col_groups)):
            children = [levels[0][(r, c)] for r in rows for c in cols]
            level[(pr, pc)] = (torch.stack([f for f, _ in children]).mean(0), set().union(*(s for _, s in children)))
        levels.insert(0, level)
        h, w = len(groups), len(col_groups)
    children = list(levels[0].values())
    levels.insert(0, {(0, 0): (torch.stack([f for f, _ in children]).mean(0), set().union(*(s for _, s in children)))})
    return levels


def pooled_pairs(side: int) -> list[list[int]]:
    """Which rows (columns) of a side pool together: pairs, the first alone when the side is odd."""
    if side % 2:
        return [[0], *[[2 * i - 1, 2 * i] for i in range(1, (side + 1) // 2)]]
    return [[2 * i, 2 * i + 1] for i in range(side // 2)]


def quadtree_tokens(frame: torch.Tensor, threshold: float, root: int) -> list[tuple[torch.Tensor, frozenset[int]]]:
    """The official descent from every node at level `root` (of `pooled_pyramid`'s): a node whose children all
    have cosine ≥ threshold with it is one token, else its children are tried; cells always stand."""
    levels = pooled_pyramid(frame)

    def children(depth, cells):
        return [node for node in levels[depth + 1].values() if node[1] <= cells]

    def descend(depth, node):
        feature, cells = node
        if depth == len(levels) - 1:
            return [(feature, frozenset(cells))]
        kids = children(depth, cells)
        if all(torch.cosine_similarity(feature, kid[0], dim=0) >= threshold for kid in kids):
            return [(feature, frozenset(cells))]
        return [token for kid in kids for token in descend(depth + 1, kid)]

    return [token for node in levels[root].values() for token in descend(root, node)]


@pytest.mark.parametrize(("height", "width"), [(14, 14), (7, 5), (4, 6), (3, 3), (2, 5)])
def test_the_quadtree_descent_is_the_official_one(height, width):
    torch.manual_seed(height * width)
    frames = torch.randn(3, height, width, 6) + 2 * torch.randn(1, 1, 1, 6)  # cosines spread around the thresholds
    tree = Quadtree(frames)
    for threshold, root in [(0.8, 2), (0.5, 2), (0.95, 1), (-1.0, 1), (0.9, 0)]:
        root = min(root, tree.levels - 1)
        level, heads, _, _ = tree.plan(torch.tensor([0.0]), threshold, 0.0, root)
        for t, frame in enumerate(frames):
            expected = {cells for _, cells in quadtree_tokens(frame, threshold, root)}
            got = set()
            for head in heads[0, t].nonzero().squeeze(1).tolist():
                nodes = tree.ancestor[level[0, t, head]]  # every cell's node at the head's level
                got.add(frozenset((nodes == nodes[head]).nonzero().squeeze(1).tolist()))
            assert got == expected, (threshold, root, t)


def test_each_node_joins_its_most_similar_nested_node_of_the_previous_frame():
    """The join each standing node of frame t + 1 is offered: the best cosine (of the pooled features) among frame
    t's standing nodes whose cells contain or lie inside its own, and that node."""
    torch.manual_seed(0)
    frames = torch.randn(4, 7, 6, 5) + 2 * torch.randn(1, 1, 1, 5)
    tree = Quadtree(frames)
    level, heads, best, target = (x[0] for x in tree.plan(torch.tensor([0.0]), 0.7, 0.0, 2))
    tokens = [quadtree_tokens(frame, 0.7, 2) for frame in frames]
    for t in range(1, len(frames)):
        for feature, cells in tokens[t]:
            nested = [(float(torch.cosine_similarity(feature, other, dim=0)), min(others))
                      for other, others in tokens[t - 1] if others <= cells or cells <= others]
            head = min(cells)
            assert bool(heads[t, head])
            assert float(best[t, head]) == pytest.approx(max(cosine for cosine, _ in nested), abs=1e-5)
            assert (float(best[t, head]), int(target[t, head])) in [
                (pytest.approx(cosine, abs=1e-5), other) for cosine, other in nested
            ]


def test_a_larger_node_joins_the_best_of_the_smaller_nodes_inside_it():
    """Frame 1 is uniform (its 2×2 blocks stand whole); frame 0's top-left block splits, and only its cell 5 holds
    what frame 1 does: frame 1's top-left block joins cell 5, not cell 0 (its own head's cell)."""
    torch.manual_seed(2)
    uniform = torch.randn(8)
    frames = uniform.expand(2, 4, 4, 8).clone()
    frames[0, :2, :2] = torch.randn(2, 2, 8)
    frames[0, 1, 1] = uniform
    level, heads, best, target = (x[0] for x in Quadtree(frames).plan(torch.tensor([0.0]), 0.9, 0.0, 1))
    assert heads[1].nonzero().squeeze(1).tolist() == [0, 2, 8, 10] and level[0, :2].tolist() == [2, 2]
    assert int(target[1, 0]) == 5 and float(best[1, 0]) == pytest.approx(
        float(torch.cosine_similarity(uniform, torch.stack([uniform] * 4).mean(0), dim=0)), abs=1e-6
    )


@pytest.mark.parametrize(
    ("frames", "height", "width", "repeats"),
    [(8, 14, 14, False), (5, 7, 5, False), (1, 14, 14, False), (3, 3, 3, False), (6, 2, 2, False), (3, 14, 14, True)],
)
def test_the_budget_is_met_exactly_on_any_grid(frames, height, width, repeats):
    """Every quota from 1 to all the cells: exactly that many tokens, each at its earliest cell, and no cell
    dropped (a lone frame, or ties, fold their least distinct chains instead)."""
    torch.manual_seed(frames + height)
    features = torch.randn(frames, height, width, 8) + torch.randn(1, 1, 1, 8)
    tree = Quadtree(torch.ones_like(features) if repeats else features)  # every cosine tied
    total = frames * height * width
    for quota in sorted({1, 2, 3, max(total // 7, 1), max(total // 3, 1), total // 2 or 1, total - 1 or 1, total}):
        chain = tree.merge(quota, 0.8, 0.55, 1)
        assert (chain >= 0).all() and len(chain.unique()) == quota and torch.equal(chain[chain], chain)
        earliest = torch.arange(len(chain)).scatter_reduce(0, chain, torch.arange(len(chain)), "amin")
        assert torch.equal(earliest[chain], chain)  # each token stands at its earliest (then top-left) cell
    with pytest.raises(ValueError, match="at least one token"):
        tree.merge(0, 0.8, 0.55, 1)


def test_identical_frames_collapse_onto_the_first_one_cell_by_cell():
    """With one frame's worth of budget, every later frame's cell joins the same cell of the first frame."""
    frame = torch.randn(1, 6, 6, 8)
    tree = Quadtree(frame.expand(5, -1, -1, -1).contiguous())
    chain = tree.merge(36, 0.8, 0.55, 1)
    assert chain.tolist() == list(range(36)) * 5


def test_a_moving_object_keeps_its_own_tokens_while_the_still_background_merges():
    """A still scene with a 2×2 object moving a cell a frame (new features each frame): at the budget of one
    frame plus the cells that change, the background's cells chain back to the first frame and the object's
    cells stand in their own frame."""
    torch.manual_seed(1)
    frames = torch.randn(8, 8, 64).expand(4, -1, -1, -1).clone()
    object_cells = [[row * 8 + t + col for row in (2, 3) for col in (0, 1)] for t in range(4)]
    for t in range(4):
        frames[t, 2:4, t : t + 2] = 5 * torch.randn(64)
    chain = Quadtree(frames).merge(64 + 3 * 6, 0.99, 0.9, 1).view(4, 64) // 64  # the frame each cell's chain starts in
    for t in range(1, 4):
        assert all(int(chain[t, cell]) == t for cell in object_cells[t])
        touched = set(sum(object_cells[: t + 1], []))
        assert all(int(chain[t, cell]) == 0 for cell in range(64) if cell not in touched)


def test_sttm_needs_whole_frames():
    """Refused when patching, before any forward (a processor's thinned frames are refused when read: VideoLLaMA3)."""
    with pytest.raises(ValueError, match="every cell of each frame"):
        tokcompress.patch(model_for("llava_onevision"), ["tome", "sttm"], ratio=0.3)
