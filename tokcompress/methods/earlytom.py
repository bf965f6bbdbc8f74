"""`earlytom` (EarlyTom, CVPR'26): fold similar neighbouring frames together inside the vision tower, so its
later layers encode fewer frames, then choose each frame's tokens before the LLM."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from .base import IN_ENCODER, PRE_LLM, LayerBudget, Method, TokenReduction
from .knobs import check_int, check_interval, listed
from .selection import proportional_split, separators_first, top_tokens_per_group, tower_attention, video_grids

PAPER_LAYERS, PAPER_DEPTH = (6, 21, 23), 26  # PRUNE_LAYERS of LLaVA-OV's 26 SigLIP layers


@dataclass
class EarlyTom(Method):
    """Early token merging: frames merge inside the tower, tokens are chosen after it.

    Inside the vision tower (where it can fold frames: the LLaVA families' and Gemma 4's batch of images, Qwen-VL's
    packed sequence of temporal patches), after each merge layer (the paper's 6, 21 and 23 of 26, scaled to the layers
    before the feature layer) the frames are segmented greedily: a segment starts at a reference frame and grows while
    the smoothed mean cosine to it, e ← `ema` · c + (1 − `ema`) · e, stays at least `tau`, up to `max_window` frames. In
    a segment of three or more frames the first and last stay, and neighbouring middle frames j, j + 1 fold together
    when their mean cosine is at least the first-to-last cosine and the next pair's (the last pair: the first-to-last
    only). Later tower layers run on the frames left. Before the LLM the same segmentation of the frames that stood
    marks each segment's middle frames static and the others dynamic; every frame gets an equal share of the budget: a
    dynamic frame keeps its most attended tokens (the attention each got in the tower's feature layer), a static frame
    splits its raster order into that many windows and keeps each window's most attended token.

    ratio: 0.1 (RETAIN_RATIO); tau: 0.6 (T); max_window: 8 (M); ema: 0.9; merge_layers: None = "6,21,23" of
    26 scaled (a comma-separated list of tower layers otherwise).

    Departures:
    - Folded frames are size-weighted means (official: similarity-weighted mixing w · a + (1 − w) · b); a
      segment holds up to `max_window` frames (official: max_window − 1), a last unpaired middle frame stays
      (official: dropped), and ties merge (official: strictly more similar, so identical frames never fold).
      Merging stops where fewer frames would be left than the budget needs.
    - The tower's output is expanded back to every frame, so the model's own projector and pooling run
      unchanged; the frames folded away are then left out before the LLM, at the original positions of the
      frames that stood (official: re-indexed, one sequence per group).
    - Token scores are the attention received in the tower's feature layer, from its own q/k (official: the
      merged attention maps of the last merge layer); the segmentation before the LLM reads the projected
      features. No inner-LLM merge (the official scripts add HoliTom's; compose it with `holitom` instead).
    - On Qwen-VL a frame is a temporal patch (two frames), and its layers are all the tower's (the merger reads
      the last). Where the tower cannot fold (InternVL encodes its images before the prompt is read) it encodes
      every frame and only the token choice before the LLM runs. Any batch size.
    """

    ratio: float = 0.1
    tau: float = 0.6
    max_window: int = 8
    ema: float = 0.9
    merge_layers: str | None = None

    name = "earlytom"
    stages = (IN_ENCODER, PRE_LLM)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("earlytom", "max_window", self.max_window, 2)
        check_interval("earlytom", "ema", self.ema, "[0, 1]")
        if self.merge_layers is not None:
            try:
                layers = [int(layer) for layer in listed(self.merge_layers)]
            except ValueError:
                layers = [-1]
            if not layers or min(layers) < 0:
                raise ValueError(
                    "earlytom merge_layers must be tower layers ≥ 0 parted by commas or semicolons (e.g. '6,21,23'), "
                    f"got {self.merge_layers!r}"
                )

    def uses_tower_attention(self) -> bool:
        return True

    def encoder_merge_layers(self, depth: int) -> list[int]:
        """Tower layers before the feature layer (its output is what the tower's attention scores are read from)."""
        if self.merge_layers is not None:
            layers = [int(layer) for layer in listed(self.merge_layers)]
        else:
            layers = [round(layer * depth / PAPER_DEPTH) for layer in PAPER_LAYERS]
        return sorted({min(layer, depth - 2) for layer in layers if depth >= 2})

    def reduce_in_encoder(
        self, frames: torch.Tensor, sizes: torch.Tensor, layer: int, depth: int
    ) -> TokenReduction | None:
        merges_allowed = len(frames) - math.ceil(self.ratio * float(sizes.sum()))
        if merges_allowed <= 0:
            return None
        destination = torch.arange(len(frames), device=frames.device)
        similarity = frame_similarities(frames)
        for start, end in frame_segments(similarity, self.tau, self.max_window, self.ema):
            for a, b in middle_merges(similarity, start, end):
                if merges_allowed == 0:
                    break
                destination[b] = a
                merges_allowed -= 1
        return TokenReduction.from_destinations(destination)

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        saliency = tower_attention(layout, self.name)
        separators, cells = separators_first(layout, budget.tokens_before_llm(layout.num_tokens))
        kept = [separators]
        for _, grid, quota in video_grids(layout, cells, self.name):  # the frames that stood
            static = torch.zeros(len(grid), dtype=torch.bool)
            for start, end in frame_segments(frame_similarities(features[grid]), self.tau, self.max_window, self.ema):
                static[start + 1 : end - 1] = True
            counts = torch.tensor(proportional_split(quota, [grid.shape[1]] * len(grid)), device=grid.device)
            group, group_counts = frame_choice_groups(counts, static.to(grid.device), grid.shape[1])
            kept.append(grid.flatten()[top_tokens_per_group(saliency[grid].flatten(), group.flatten(), group_counts)])
        return TokenReduction.prune(torch.cat(kept))


def frame_similarities(frames: torch.Tensor) -> list[list[float]]:
    """[i][j]: the mean over positions of the cosine between frames i and j's tokens; frames (F, n, D)."""
    unit = torch.nn.functional.normalize(frames.float(), dim=-1).flatten(1)
    return (unit @ unit.T / frames.shape[1]).tolist()


def frame_segments(similarity: list[list[float]], tau: float, max_window: int, ema: float) -> list[tuple[int, int]]:
    """EarlyTom's streaming segmentation of the frames into [start, end) runs: frame i joins the run while the
    smoothed similarity to the run's first frame stays at least tau and the run is under max_window."""
    segments, start, smoothed = [], 0, 1.0
    for i in range(1, len(similarity)):
        smoothed = ema * similarity[start][i] + (1 - ema) * smoothed
        if smoothed < tau or i - start >= max_window:
            segments.append((start, i))
            start, smoothed = i, 1.0
    return [*segments, (start, len(similarity))] if len(similarity) else []


def middle_merges(similarity: list[list[float]], start: int, end: int) -> list[tuple[int, int]]:
    """(a, b) frame pairs of the segment [start, end) where middle frame b folds into a: neighbouring middle
    frames whose similarity is at least the first-to-last one and the next pair's (the last pair: the first)."""
    if end - start < 3:
        return []
    threshold, middle = similarity[start][end - 1], list(range(start + 1, end - 1))
    pair = [similarity[a][a + 1] for a in middle[:-1]]
    merges, j = [], 0
    while j < len(pair):
        last = j + 1 == len(pair)
        if pair[j] >= threshold and (last or pair[j] >= pair[j + 1]):
            merges.append((middle[j], middle[j + 1]))
            j += 2
        else:
            j += 1
    return merges


def frame_choice_groups(counts: torch.Tensor, static: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EarlyTom's per-frame choice as one top-k per group, all frames at once: (group of each token (F, n), how
    many each group keeps). A dynamic frame f is group f, keeping counts[f]; a static frame's raster order
    splits into c = counts[f] contiguous windows (the first n % c one longer), each a group keeping its best
    token."""
    frames = len(counts)
    position = torch.arange(tokens, device=counts.device)
    windows = counts.clamp_min(1)[:, None]
    size, longer = tokens // windows, tokens % windows  # windows of size + 1 first, `longer` of them
    split = longer * (size + 1)
    window = torch.where(position < split, position // (size + 1), longer + (position - split) // size.clamp_min(1))
    frame = torch.arange(frames, device=counts.device)[:, None]
    group = torch.where(static[:, None], frames + frame * tokens + window, frame)
    group_counts = torch.cat([torch.where(static, 0, counts), (counts > 0).repeat_interleave(tokens).long()])
    return group, group_counts
