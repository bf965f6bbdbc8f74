"""`prunevid` (Huang et al., ACL'25): merge static and similar tokens before the LLM, then prune by the question."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from ..ops import density_peak_clusters, fold_clusters
from .base import IN_LLM, PRE_LLM, LayerBudget, LayerSample, Method, ModelSpec, TokenReduction
from .knobs import check_int, check_interval
from .selection import frame_grids, top_tokens, true_first

PAPER_LAYER, PAPER_DEPTH = 10, 28  # layer 10 of the 7B LLMs' 28
MIN_TO_CLUSTER = 14  # the official code clusters a group only above 14 tokens
NEIGHBOURS = 7


@dataclass
class PruneVid(Method):
    """Two stages, as the paper:

    Before the LLM, per video: frames are segmented in time (density-peak clustering of the frame means into
    int(T · temporal_segment_ratio) groups, each label keeping its longest contiguous run), and inside each
    segment a spatial cell is static when its tokens' mean pairwise cosine across the segment's frames
    exceeds `tau`. A static cell folds into one token (the mean over the segment); static tokens, and each
    frame's dynamic tokens, are then clustered (density peaks) into int(n · cluster_ratio) groups and merged.
    Inside the LLM, before layer `layer`, the visual tokens are pruned by the attention the question tokens
    pay them (max over heads, then over question tokens) down to what the layer-averaged ratio leaves.

    ratio: 0.17 (the LLaVA-OV row of the paper: 17.0 % retained); tau: 0.8; temporal_segment_ratio: 0.25;
    cluster_ratio: 0.5; layer: None = the paper's layer 10 of 28, scaled to the model's depth.

    Departures:
    - The in-LLM keep count comes from the budget (the official α keeps a fraction of each segment's
      static and per-frame dynamic tokens); the top tokens are chosen over the whole sample.
    - Merges are size-weighted means, and a merged group sits at its earliest member's original position
      (the official code orders clusters by density rank and re-indexes); positions stay original.
    - Merging backs off (first no clustering, then no merging) when it would leave fewer tokens than the
      budget needs; density peaks are deterministic (no random tie noise); KV entries of the layers before
      `layer` are kept (the official code prunes them retroactively).
    """

    ratio: float = 0.17
    tau: float = 0.8
    temporal_segment_ratio: float = 0.25
    cluster_ratio: float = 0.5
    layer: int | None = None

    name = "prunevid"
    stages = (PRE_LLM, IN_LLM)

    def __post_init__(self) -> None:
        super().__post_init__()
        for knob in ("temporal_segment_ratio", "cluster_ratio"):
            check_interval("prunevid", knob, getattr(self, knob), "(0, 1]")
        check_int("prunevid", "layer", self.layer, 0, optional=True)

    def bind(self, spec: ModelSpec) -> PruneVid:
        if self.layer is not None and self.layer >= spec.num_layers:
            raise ValueError(
                f"prunevid layer={self.layer} but the model has {spec.num_layers} layers; pass a smaller layer"
            )
        return self

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        target = budget.tokens_before_llm(layout.num_tokens)
        for tau, cluster_ratio in ((self.tau, self.cluster_ratio), (self.tau, 1.0)):  # back off if it merges too much
            destination = merge_destinations(features, layout, tau, self.temporal_segment_ratio, cluster_ratio)
            if int((destination == torch.arange(len(destination), device=destination.device)).sum()) >= target:
                return TokenReduction.from_destinations(destination)
        return TokenReduction.prune(torch.arange(layout.num_tokens, device=features.device))

    def prune_layer(self, sample: LayerSample) -> int:
        """The layer pruned before: `layer`, or the paper's depth share, moved earlier until the budget allows
        it (the layers before it see every token left by the merge)."""
        if self.layer is not None:
            return self.layer
        budget, tokens = sample.budget, sample.features.shape[0]
        layer = min(round(PAPER_LAYER / PAPER_DEPTH * budget.num_layers), budget.num_layers - 1)
        while layer > 0 and not LayerBudget(
            budget.ratio, budget.num_visual, budget.num_layers, layer, layer * tokens
        ).tokens_per_layer():
            layer -= 1
        return layer

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        if sample.layer != self.prune_layer(sample):
            return None
        if sample.question is not None and len(sample.question):
            importance = sample.question_attention(None).amax(dim=(0, 1))  # max over heads, then question tokens
        else:  # no text after the video: the last token asks
            importance = sample.attention_to_visual(1)
        return TokenReduction.prune(top_tokens(importance, sample.budget.tokens_per_layer()))

    def in_llm_finished(self, sample: LayerSample) -> bool:
        return sample.layer >= self.prune_layer(sample)


def merge_destinations(
    features: torch.Tensor, layout: VisualLayout, tau: float, segment_ratio: float, cluster_ratio: float
) -> torch.Tensor:
    """Per visual token, the token it folds into (itself when it stays): PruneVid's static/dynamic merging,
    every window's static cells and every frame's dynamic tokens clustered at once."""
    destination = torch.arange(layout.num_tokens, device=features.device)
    groups = []  # (tokens (rows, units), clusters): a window's static cells, or one frame's dynamic tokens
    for _, grid in frame_grids(layout, "prunevid"):  # frame-major, raster order, the frames that stand
        segments = temporal_segments(features[grid].float().mean(dim=1), segment_ratio)
        windows = [grid[start:end] for start, end in segments]
        statics = [static_cells(features[window], tau) for window in windows]
        counts = torch.stack([static.sum() for static in statics]).tolist()  # one sync per video
        for window, static, count in zip(windows, statics, counts):
            cells = true_first(static)
            if count:  # every frame's token of each static cell
                groups.append((window[:, cells[:count]], _cluster_count(count, cluster_ratio)))
            dynamic = window.shape[1] - count
            groups += [(frame[None], _cluster_count(dynamic, cluster_ratio)) for frame in window[:, cells[count:]]]
    fold_clusters(destination, features, [tokens for tokens, _ in groups], [clusters for _, clusters in groups])
    return destination


def temporal_segments(frame_means: torch.Tensor, segment_ratio: float) -> list[tuple[int, int]]:
    """Contiguous [start, end) runs of frames: density-peak labels of the frame means, each label keeping
    its longest run; a shorter run takes the label of its longer neighbouring run (the left one on ties)."""
    count = frame_means.shape[0]
    labels = density_peak_clusters(frame_means, max(int(count * segment_ratio), 1), NEIGHBOURS)[0].tolist()
    runs = _runs(labels)
    longest = {}
    for label, start, end in runs:
        if end - start > longest.get(label, (0, 0))[1] - longest.get(label, (0, 0))[0]:
            longest[label] = (start, end)
    for i, (label, start, end) in enumerate(runs):
        if longest[label] != (start, end):
            left = runs[i - 1] if i > 0 else None
            right = runs[i + 1] if i + 1 < len(runs) else None
            if left is None and right is None:
                continue
            neighbour = (
                left if right is None or (left is not None and left[2] - left[1] >= right[2] - right[1]) else right
            )
            labels[start:end] = [neighbour[0]] * (end - start)
    return [(start, end) for _, start, end in _runs(labels)]


def _runs(labels: list[int]) -> list[tuple[int, int, int]]:
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((labels[start], start, i))
            start = i
    return runs


def static_cells(window: torch.Tensor, tau: float) -> torch.Tensor:
    """(cells,) bool: a cell is static when its tokens' mean pairwise cosine over the window's frames exceeds tau.
    window: (W, cells, D); a single frame has no pairs, so nothing is static (the official 0/0)."""
    frames = window.shape[0]
    if frames < 2:
        return torch.zeros(window.shape[1], dtype=torch.bool, device=window.device)
    unit = torch.nn.functional.normalize(window.float(), dim=-1).transpose(0, 1)  # (cells, W, D)
    similarity = unit @ unit.transpose(1, 2)  # (cells, W, W)
    pairs = (similarity.sum(dim=(1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(dim=1)) / (frames * (frames - 1))
    return pairs > tau


def _cluster_count(units: int, cluster_ratio: float) -> int:
    """int(n · cluster_ratio) clusters, only above MIN_TO_CLUSTER units (the official code's threshold)."""
    return max(math.floor(units * cluster_ratio), 1) if units > MIN_TO_CLUSTER and cluster_ratio < 1 else units
