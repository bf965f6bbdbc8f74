"""`holitom` (HoliTom, Shao et al., NeurIPS'25): merge what stays still over globally chosen time windows, keep
each frame's most attended moving tokens, then merge again inside the LLM."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from ..ops import fold_clusters
from .base import IN_LLM, PRE_LLM, LayerBudget, LayerSample, Method, ModelSpec, TokenReduction
from .knobs import check_int, check_interval
from .selection import (
    apportion,
    merge_destinations,
    top_tokens,
    top_tokens_per_group,
    tower_attention,
    true_first,
    video_grids,
)

PAPER_LAYER, PAPER_DEPTH = 18, 28  # the scripts' HOLITOM_k = 18 of LLaVA-OV-7B's 28 layers
PAPER_RETAIN, PAPER_INNER_MERGE = 0.10, 0.5  # RETAIN_RATIO and HOLITOM_r
PAPER_RATIO = PAPER_RETAIN * (PAPER_LAYER + (PAPER_DEPTH - PAPER_LAYER) * (1 - PAPER_INNER_MERGE)) / PAPER_DEPTH


@dataclass
class HoliTom(Method):
    """Holistic token merging: outside the LLM over time and space, inside it once more.

    Before the LLM, per video: the frames are cut into windows by dynamic programming, maximising over the
    windows Σ (W − 1) · (cells whose consecutive-frame cosines all exceed `tau` inside the window) - the
    tokens a window's static cells save. A static cell of a window folds into one token (its W frames); the
    window's static cells are then clustered (DPC-KNN, k = min(7, clusters), the clusters' count met even over
    duplicate cells, as the official code's top-k) and each cluster merged; every frame keeps its
    most attended dynamic tokens (the attention each token gets in the vision tower) and drops the others.
    Static clusters and dynamic tokens take the same retained share: the pre-LLM count over what the static
    merge leaves. Inside the LLM, before layer `inner_layer`, the `inner_merge` share of the visual tokens
    with the least attention from the last token (the layer before's own q/k) fold into their most similar
    (cosine) kept token.

    ratio: 0.082 (the scripts' RETAIN_RATIO 0.10 before the LLM, halved from layer 18 of 28); tau: 0.8 (T);
    inner_layer: None = the scripts' 18 of 28 scaled to the model's depth; inner_merge: 0.5 (0 turns the
    inner merge off); max_window: 1024.

    Departures:
    - Counts are apportioned so the kept total meets the budget within one token (official: round / ceil per
      window and frame); the pre-LLM count is what the inner merge leaves room for in the layer average.
      Where the static merge would leave fewer tokens than the budget, τ rises (to the lowest cosine that
      leaves enough) instead of ending below the ratio as the official code does.
    - Every merge is a size-weighted mean placed at its earliest member's original position (official:
      β · centre + (1 − β) · mean for clusters, sequential (a + b) / 2 inside the LLM); positions stay original.
    - Saliency is the attention each token gets in the vision tower's feature layer (see `visionzip`), read
      from the tower's own q/k; the official code swaps in an eager SigLIP that returns attentions.
    - D = 0 (no contextual merging of the dropped dynamic tokens), the code's default; any batch size.
    - With several videos in a prompt, the inner merge folds a token only into a kept token of its own video (a
      video with none kept loses its merged tokens); the official code reads one video.
    """

    ratio: float = PAPER_RATIO
    tau: float = 0.8
    inner_layer: int | None = None
    inner_merge: float = PAPER_INNER_MERGE
    max_window: int = 1024

    name = "holitom"
    stages = (PRE_LLM, IN_LLM)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("holitom", "inner_layer", self.inner_layer, 1, optional=True)
        check_int("holitom", "max_window", self.max_window, 1)
        check_interval("holitom", "inner_merge", self.inner_merge, "[0, 1)")
        check_interval("holitom", "tau", self.tau, "[-1, 1]")

    def bind(self, spec: ModelSpec) -> HoliTom:
        if self.inner_layer is not None and self.inner_layer >= spec.num_layers:
            raise ValueError(
                f"holitom inner_layer={self.inner_layer} but the model has {spec.num_layers} layers; pass a smaller one"
            )
        return self

    def uses_tower_attention(self) -> bool:
        return True

    def merge_layer(self, num_layers: int) -> int:
        if self.inner_layer is not None:
            return self.inner_layer
        return min(max(round(PAPER_LAYER / PAPER_DEPTH * num_layers), 1), num_layers - 1)

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        saliency = tower_attention(layout, self.name)
        count = budget.tokens_before_llm(layout.num_tokens, (self.merge_layer(budget.num_layers), self.inner_merge))
        destination, cells = merge_destinations(layout, count, features.device)
        for _, grid, quota in video_grids(layout, cells, self.name):
            self._merge_video(grid, quota, features, saliency, destination)
        return TokenReduction.from_destinations(destination)

    def _merge_video(self, grid, quota, features, saliency, destination) -> None:
        """grid: (T, cells) token indices of one video, frame-major. Static cells of each window fold and
        cluster; each frame's top dynamic tokens stay."""
        similarity = consecutive_similarity(features[grid])
        windows, statics, units = self._static_plan(similarity, self.tau, grid.numel())
        if units < quota:  # the static merge alone would go below the budget: raise τ until it does not
            levels = torch.unique(similarity[similarity >= self.tau])  # at the top one nothing is static
            low, high = 0, len(levels) - 1
            while low < high:
                middle = (low + high) // 2
                if self._static_plan(similarity, float(levels[middle]), grid.numel())[2] >= quota:
                    high = middle
                else:
                    low = middle + 1
            windows, statics, _ = self._static_plan(similarity, float(levels[low]), grid.numel())
        groups = []  # (tokens (rows, units), is_static): a window's static cells, or one frame's dynamic tokens
        for (start, end), (static, count) in zip(windows, statics):
            cells = true_first(static)
            if count:
                groups.append((grid[start:end, cells[:count]], True))
            groups += [(frame[None], False) for frame in grid[start:end, cells[count:]]]
        sizes = [tokens.shape[1] for tokens, _ in groups]
        quotas = apportion(quota, [float(s) for s in sizes], sizes)
        folded = [(tokens, count) for (tokens, is_static), count in zip(groups, quotas) if is_static and count]
        clusters = [count for _, count in folded]
        fold_clusters(destination, features, [tokens for tokens, _ in folded], clusters, exact=True)
        moving = [(tokens[0], count) for (tokens, is_static), count in zip(groups, quotas) if not is_static and count]
        if moving:  # each frame's most attended moving tokens, every frame at once
            tokens = torch.cat([frame for frame, _ in moving])
            frame_of = torch.repeat_interleave(torch.arange(len(moving), device=tokens.device),
                                               torch.tensor([len(frame) for frame, _ in moving], device=tokens.device))
            counts = torch.tensor([count for _, count in moving], device=tokens.device)
            kept = tokens[top_tokens_per_group(saliency[tokens], frame_of, counts)]
            destination[kept] = kept

    def _static_plan(self, similarity: torch.Tensor, tau: float, tokens: int):
        """(windows, (static cells, how many) of each, units left after folding every window's static cells)."""
        windows = holistic_windows(similarity, tau, self.max_window)
        statics = [static_cells(similarity[start : end - 1], tau) for start, end in windows]
        counts = torch.stack([static.sum() for static in statics]).tolist() if statics else []  # one sync
        folded = sum((end - start - 1) * count for (start, end), count in zip(windows, counts))
        return windows, list(zip(statics, counts)), tokens - folded

    def reduce_in_llm(self, sample: LayerSample) -> TokenReduction | None:
        layer = self.merge_layer(sample.budget.num_layers)
        if self.inner_merge and sample.layer == max(layer - 1, 0):  # the layer before scores, as the official code
            sample.memory["importance"] = sample.attention_to_visual(1)
        if not self.inner_merge or sample.layer != layer:
            return None
        importance = sample.memory.pop("importance")
        count = sample.features.shape[0]
        keep = min(sample.budget.tokens_per_layer(), count)
        if keep >= count or keep == 0:
            return None if keep else TokenReduction.prune(torch.zeros(0, dtype=torch.long, device=importance.device))
        kept = top_tokens(importance, keep)
        unit = torch.nn.functional.normalize(sample.features.float(), dim=-1)
        video = sample.layout.video
        similarity = (unit @ unit[kept].T).masked_fill(video[:, None] != video[kept][None, :], float("-inf"))
        best, closest = similarity.max(dim=1)  # the most similar kept token of its own video
        destination = torch.where(best > float("-inf"), kept[closest], -1)  # a video with none kept: dropped
        destination[kept] = kept
        return TokenReduction.from_destinations(destination)

    def in_llm_finished(self, sample: LayerSample) -> bool:
        return self.inner_merge == 0 or sample.layer >= self.merge_layer(sample.budget.num_layers)


def consecutive_similarity(grid_features: torch.Tensor) -> torch.Tensor:
    """(T − 1, cells) cosine between each cell and the same cell of the next frame. grid_features: (T, cells, D)."""
    unit = torch.nn.functional.normalize(grid_features.float(), dim=-1)
    return (unit[:-1] * unit[1:]).sum(dim=-1)


def static_cells(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """(cells,) bool: static in a window whose consecutive-frame cosines are `similarity` ((W − 1, cells)) -
    every one above tau. A one-frame window has no static cell."""
    if similarity.shape[0] == 0:
        return torch.zeros(similarity.shape[1], dtype=torch.bool, device=similarity.device)
    return (similarity > tau).all(dim=0)


def holistic_windows(similarity: torch.Tensor, tau: float, max_window: int) -> list[tuple[int, int]]:
    """HoliTom's global segmentation: [start, end) frame windows maximising Σ (W − 1) · static cells, by
    dynamic programming over the window ends (ties go to the shorter last window, as the official code's, which
    tries the lengths upward and takes a strictly better one)."""
    frames = similarity.shape[0] + 1
    above = similarity > tau
    runs, run = [], above  # runs[l - 1][s]: cells above tau at all of s … s + l − 1 (a window of l + 1 frames)
    for length in range(1, min(max_window, frames)):
        run = run if length == 1 else run[:-1] & above[length - 1 :]
        runs.append(run.sum(dim=1))
    flat = torch.cat(runs).tolist() if runs else []  # one sync for every window's static cells
    offsets = [0]
    for counts in runs:
        offsets.append(offsets[-1] + len(counts))
    best, cut = [0] + [-1] * frames, [0] * (frames + 1)
    for end in range(1, frames + 1):
        for start in range(end - 1, max(end - max_window, 0) - 1, -1):  # the shortest last window first
            length = end - start - 1  # the window [start, end)'s consecutive-frame similarities
            saved = length * flat[offsets[length - 1] + start] if length else 0
            if best[start] + saved > best[end]:
                best[end], cut[end] = best[start] + saved, start
    windows, end = [], frames
    while end > 0:
        windows.append((cut[end], end))
        end = cut[end]
    return windows[::-1]
