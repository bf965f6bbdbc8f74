"""`sttm` (STTM, Hyun et al., ICCV'25): a quadtree merges each frame's uniform regions, then nested regions that
repeat across frames merge, once, early in the LLM."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import LayerSample, OnceInLLM, TokenReduction
from .knobs import check_int, check_interval
from .selection import merge_destinations, video_grids

PAPER_LAYER = 2  # sa_start_layer_idx of the 7B models' scripts
GATHERED_ELEMENTS = 1 << 25  # at most 128 MiB of fp32 node features gathered at once for the join cosines
THRESHOLD_SHIFTS = 64  # shifts of both thresholds tried at once, twice (the second time between the first's best two)


@dataclass
class STTM(OnceInLLM):
    """Spatio-temporal token merging: quadtrees inside frames, then their nested nodes across frames.

    Before decoder layer `layer` (the layers before it see every token), per video: every frame's hidden states
    are pooled into a pyramid (2× average pooling until a side is 2; an odd side pools its first row or column
    alone). From the nodes at `root_level` (0: the coarsest) down, a node whose children all have cosine at
    least `spatial_threshold` with it stands as one token; otherwise its children are tried. Then a node of a
    frame joins the most similar node of the previous frame whose region nests with its own (contains or lies
    inside it) if their cosine is at least `temporal_threshold`, and each chain of joined nodes is one token.
    A merged token is the size-weighted mean of its cells, at the position of its earliest, top-left cell.

    ratio: 0.3; spatial_threshold: 0.8 and temporal_threshold: 0.55 (the scripts' τ_s / τ_t lie in 0.80-0.85 /
    0.50-0.65); root_level: 1 (the scripts'); layer: None = the scripts' 2, or the deepest earlier layer that
    still leaves every later layer a visual token.

    Departures:
    - Budgeted: the official thresholds are fixed and the kept share is whatever they give. Here both
      thresholds shift by one amount (their gap, which decides spatial against temporal merging, is the
      knobs'), the smallest shift that keeps at least the budget; the few joins still needed are the most
      similar ones below the temporal threshold. Where even merging every region down to the root level leaves
      more than the budget, the root level moves up (to the whole frame); where ties (or a lone frame) leave
      the budget out of the joins' reach, the least distinct chains fold into their most similar ones.
    - A node joins one node of the previous frame (its most similar nested one), so chains never branch
      backwards and each join removes exactly one token; the official union-find also joins several small nodes
      of one frame through a larger node of the next.
    - Merged tokens are size-weighted means of their cells (the engine's merge), where the official code emits a
      node's pooled average of averages and averages a chain's nodes equally; positions stay the original ones
      (the official LLaVA path re-indexes them).
    - An odd side's missing children are left out of a node's test (the official code tests cell (0, 0) in
      their place); any batch size and frame grid, not just square ones.
    """

    ratio: float = 0.3
    spatial_threshold: float = 0.8
    temporal_threshold: float = 0.55
    root_level: int = 1
    layer: int | None = None

    name = "sttm"
    reads_whole_frames = True  # its quadtrees cover each frame's grid
    preferred_layer = PAPER_LAYER

    def __post_init__(self) -> None:
        super().__post_init__()
        for knob in ("spatial_threshold", "temporal_threshold"):
            check_interval("sttm", knob, getattr(self, knob), "[-1, 1]")
        check_int("sttm", "root_level", self.root_level, 0)
        check_int("sttm", "layer", self.layer, 0, optional=True)

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        if sample.layer != self.acting_layer(sample.budget):
            return None
        layout, features = sample.layout, sample.features
        destination, cells = merge_destinations(layout, sample.budget.tokens_per_layer(), features.device)
        for video, grid, quota in video_grids(layout, cells, self.name):
            _, height, width = layout.grids[video]
            if quota == 0:
                continue
            tree = Quadtree(features[grid].view(len(grid), height, width, -1))
            chosen = tree.merge(quota, self.spatial_threshold, self.temporal_threshold, self.root_level)
            destination[grid.flatten()] = grid.flatten()[chosen]
        return TokenReduction.from_destinations(destination)


class Quadtree:
    """The pyramids of a video's frames, (T, H, W, D) hidden states, and the merges they allow.

    Levels run from the whole frame (level 0, a fallback for tiny budgets) through the official pyramid (its
    coarsest, ≤ 2 on a side, is level 1) to the cells. Each level's nodes are in raster order; a node is named
    by its head, the first cell (raster order) it covers: a leaf (t, cell) with `is_head` names one node.
    """

    def __init__(self, frames: torch.Tensor):
        self.frames, height, width, _ = frames.shape
        self.cells = height * width
        sizes = [(height, width)]
        while min(sizes[0]) > 2:
            h, w = sizes[0]
            sizes.insert(0, ((h + 1) // 2, (w + 1) // 2))  # an odd side's first row / column pools alone
        sizes.insert(0, (1, 1))
        device = frames.device
        ancestors = [torch.arange(self.cells, device=device)]  # per level (fine to coarse), each cell's node
        parents = []  # per level but the finest, each node of the next finer level's parent
        for (h, w), (fine_h, fine_w) in zip(sizes[-2::-1], sizes[:0:-1]):
            rows, cols = torch.arange(fine_h, device=device), torch.arange(fine_w, device=device)
            if (h, w) == (1, 1):
                parent = torch.zeros(fine_h * fine_w, dtype=torch.long, device=device)
            else:
                parent = (((rows + fine_h % 2) // 2)[:, None] * w + (cols + fine_w % 2) // 2).flatten()
            parents.insert(0, parent)
            ancestors.insert(0, parent[ancestors[0]])
        self.levels = len(sizes)
        self.ancestor = torch.stack(ancestors)  # (levels, cells)
        features = [frames.flatten(1, 2).float()]  # fine to coarse, (T, nodes, D): averages of averages
        for parent, (h, w) in zip(parents[::-1], sizes[-2::-1]):
            pooled = features[0].new_zeros(self.frames, h * w, features[0].shape[-1]).index_add_(1, parent, features[0])
            children = pooled.new_zeros(h * w).index_add_(0, parent, pooled.new_ones(len(parent)))
            features.insert(0, pooled / children[:, None])
        self.unit = [torch.nn.functional.normalize(level, dim=-1) for level in features]
        scores = []  # per level, each node's least cosine with its children (+inf for cells: they always stand)
        for level, parent in enumerate(parents):
            cosine = (self.unit[level][:, parent] * self.unit[level + 1]).sum(-1)
            lowest = cosine.new_full((self.frames, len(self.unit[level][0])), float("inf"))
            scores.append(lowest.scatter_reduce(1, parent.expand_as(cosine), cosine, "amin"))
        scores.append(torch.full((self.frames, self.cells), float("inf"), device=device))
        cell = torch.arange(self.cells, device=device)
        heads = [torch.full((len(s[0]),), self.cells, device=device).scatter_reduce(0, a, cell, "amin")
                 for s, a in zip(scores, self.ancestor)]
        self.is_head = torch.stack([head[a] == cell for head, a in zip(heads, self.ancestor)])  # (levels, cells)
        self.head = torch.stack([head[a] for head, a in zip(heads, self.ancestor)])  # (levels, cells): its node's head
        self.path_scores = torch.stack([s[:, a] for s, a in zip(scores, self.ancestor)], dim=-1)  # (T, cells, levels)
        self.link_cosines = self._link_cosines(heads)

    def _link_cosines(self, heads: list[torch.Tensor]) -> torch.Tensor:
        """(T - 1, levels, levels, cells): cosine of frame t + 1's node over a cell at level a with frame t's node
        over it at level b (the two nest: one contains the other). `heads`: per level, each node's head."""
        table = self.unit[0].new_empty(self.frames - 1, self.levels, self.levels, self.cells)
        width = self.unit[0].shape[-1]
        for a in range(self.levels):
            for b in range(self.levels):
                finer = max(a, b)  # one cosine per node of the finer level, then spread over its cells
                step = max(GATHERED_ELEMENTS // (len(heads[finer]) * width), 1)  # frames at a time
                for start in range(0, self.frames - 1, step):
                    end = min(start + step, self.frames - 1)
                    later, earlier = self.unit[a][start + 1 : end + 1], self.unit[b][start:end]
                    if a < finer:  # the coarser node over each node of the finer level (that one is itself)
                        later = later[:, self.ancestor[a, heads[finer]]]
                    if b < finer:
                        earlier = earlier[:, self.ancestor[b, heads[finer]]]
                    table[start:end, a, b] = torch.linalg.vecdot(later, earlier)[:, self.ancestor[finer]]
        return table

    def plan(self, shifts: torch.Tensor, spatial: float, temporal: float, root: int):
        """For each threshold shift (P,): the level of the node each cell stands in (P, T, cells), whether the cell
        heads it, and the cosine of each head's best join and the head it joins in the previous frame."""
        thresholds = (spatial + shifts)[:, None, None, None]
        standing = self.path_scores[None, :, :, root:] >= thresholds  # the first level from the root that stands
        level = root + standing.to(torch.int8).argmax(-1)
        cell = torch.arange(self.cells, device=level.device).expand_as(level)
        heads = self.is_head[level, cell]
        best = torch.full(level.shape, float("-inf"), device=level.device)
        target = torch.full(level.shape, -1, dtype=torch.long, device=level.device)
        if self.frames == 1:
            return level, heads, best, target
        later, earlier = level[:, 1:], level[:, :-1]
        # frame t's node over a head's cell nests with the head's node (it contains it or lies inside it)
        step = torch.arange(self.frames - 1, device=level.device)[:, None]
        cosine = self.link_cosines[step, later, earlier, cell[:, 1:]]  # (P, T - 1, cells)
        best[:, 1:] = torch.where(heads[:, 1:], cosine, float("-inf"))
        target[:, 1:] = self.head[earlier, cell[:, 1:]]
        # frame t's heads lying inside a coarser node of frame t + 1 offer that node a join too
        inside = heads[:, :-1] & (later < earlier)
        offered = torch.where(inside, cosine, float("-inf"))
        into = self.head[later, cell[:, 1:]]
        best[:, 1:] = best[:, 1:].scatter_reduce(2, into, offered, "amax")
        chosen = inside & (offered == best[:, 1:].gather(2, into))
        fallback = torch.full_like(target[:, 1:], self.cells)
        offered_head = fallback.scatter_reduce(2, into, torch.where(chosen, cell[:, 1:], self.cells), "amin")
        taken = offered_head < self.cells
        target[:, 1:] = torch.where(taken, offered_head, target[:, 1:])
        best = torch.where(heads, best, float("-inf"))
        return level, heads, best, target

    def tokens(self, shifts: torch.Tensor, spatial: float, temporal: float, root: int) -> torch.Tensor:
        """(2, P) at each threshold shift: the tokens left (the standing nodes less the joins at or above the
        shifted temporal threshold) and the first frame's (no join can take those)."""
        _, heads, best, _ = self.plan(shifts, spatial, temporal, root)
        joins = best >= (temporal + shifts)[:, None, None]
        return torch.stack([heads.flatten(1).sum(1) - joins.flatten(1).sum(1), heads[:, 0].sum(1)])

    def smallest_shift(self, quota: int, spatial: float, temporal: float, root: int) -> tuple[float, bool]:
        """The smallest threshold shift that leaves at least `quota` tokens (two rounds of a grid search), and
        whether the first frame's tokens then fit the quota (the joins can meet it exactly)."""
        device = self.path_scores.device
        low, high = -3.0, 3.0  # shifts that put every threshold below / above every cosine
        for _ in range(2):
            shifts = torch.linspace(low, high, THRESHOLD_SHIFTS, device=device)
            counts = self.tokens(shifts, spatial, temporal, root)  # (all tokens, the first frame's) per shift
            index = torch.arange(len(shifts), device=device)
            first = int(torch.where(counts[0] >= quota, index, len(shifts) - 1).min())
            low, high = float(shifts[max(first - 1, 0)]), float(shifts[first])
        return high, int(counts[1, first]) <= quota

    def merge(self, quota: int, spatial: float, temporal: float, root_level: int) -> torch.Tensor:
        """Per cell (T · cells, frame-major), the cell whose token it ends in: `quota` tokens left, none dropped."""
        if quota < 1:
            raise ValueError(f"a quadtree merge keeps at least one token (every cell ends in one), got quota {quota}")
        device = self.path_scores.device
        root = min(root_level + 1, self.levels - 1)
        high, fits = self.smallest_shift(quota, spatial, temporal, root)
        for coarser in range(root - 1, -1, -1) if not fits else ():  # the first frame alone is over the quota
            coarser_high, fits = self.smallest_shift(quota, spatial, temporal, coarser)
            if fits:  # start from coarser nodes
                root, high = coarser, coarser_high
                break
        shift = torch.tensor([high], device=device)
        level, heads, best, target = (t[0] for t in self.plan(shift, spatial, temporal, root))
        joins = best >= temporal + high
        extra = int(heads.sum() - joins.sum()) - quota  # the most similar joins below the threshold close the gap
        if extra > 0:
            open_joins = torch.where(joins | ~heads, float("-inf"), best).flatten()
            picked = torch.topk(open_joins, min(extra, len(open_joins))).indices
            joins.view(-1)[picked] |= open_joins[picked] > float("-inf")
        cell = torch.arange(self.cells, device=device)
        flat = torch.arange(self.frames, device=device)[:, None] * self.cells
        parent = torch.where(joins, flat - self.cells + target.clamp_min(0), flat + cell).flatten()
        for _ in range(math.ceil(math.log2(max(self.frames, 2)))):  # pointer doubling: each head's first one
            parent = parent[parent]
        chain = parent[(flat + self.head[level, cell.expand_as(level)]).flatten()]  # per cell, its chain's head
        return self._fold_excess(chain, level, heads & ~joins, quota)

    def _fold_excess(self, chain: torch.Tensor, level: torch.Tensor, chains: torch.Tensor, quota: int) -> torch.Tensor:
        """Where ties (or a lone frame) leave more chains than the quota out of the joins' reach: the least
        distinct fold into their most similar ones, ToMe-style (each round, every other chain's most similar of
        the rest, the best pairs first)."""
        heads = chains.flatten().nonzero().squeeze(1)
        while len(heads) > quota:
            frame, cell = heads // self.cells, heads % self.cells
            at_levels = torch.stack([unit[frame, self.ancestor[lv, cell]] for lv, unit in enumerate(self.unit)])
            features = at_levels[level[frame, cell], torch.arange(len(heads), device=heads.device)]
            sources, destinations = heads[0::2], heads[1::2]
            similarity = features[0::2] @ features[1::2].T
            score, match = similarity.max(dim=1)
            folded = torch.topk(score, min(len(heads) - quota, len(sources))).indices
            source, destination = sources[folded], destinations[match[folded]]
            remap = torch.arange(len(chain), device=chain.device)
            earliest = remap.scatter_reduce(0, destination, source, "amin")  # a group stands at its earliest cell
            remap[source], remap[destination] = earliest[destination], earliest[destination]
            chain, heads = remap[chain], torch.unique(remap[heads])
        return chain
