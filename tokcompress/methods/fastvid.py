"""`fastvid` (FastVID, Shen et al., NeurIPS'25): segment the video where it changes, keep each frame's salient
tokens, and merge the rest of each segment into density peaks of a few anchor frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from ..ops import grouped_density_peaks
from .base import PRE_LLM, LayerBudget, Method, TokenReduction
from .knobs import check_int, check_interval
from .selection import (
    apportion,
    merge_destinations,
    proportional_split,
    top_tokens_per_group,
    tower_attention,
    true_first,
    video_grids,
)


@dataclass
class FastVID(Method):
    """Dynamic temporal segmentation, then density-based spatio-temporal pruning, before the LLM.

    As the paper and the official code, per video: DySeg cuts between consecutive frames whose global features
    are the `segments` − 1 least similar pairs or less similar than `similarity_threshold` (cosine). Each
    frame's retained count r splits into r − int(r · `contextual_share`) salient tokens, the frame's most
    attended ones (ATS), and the rest contextual. A segment's contextual tokens go to its anchor frames - every
    `anchor_stride`-th frame counted back from its last - as the density peaks (DPC-KNN, k = 4) of their
    non-salient tokens, and every non-salient token of the segment joins its most similar peak (cosine).

    ratio: 0.10 (the official retention ratio); segments 8 (DySeg c), similarity_threshold 0.9 (τ),
    contextual_share 0.4 (d), anchor_stride 4 (p).

    Departures:
    - Frame counts are apportioned so that round(ratio · N) tokens are kept in all (official: int(P · ratio)
      per frame), a segment's contextual count split evenly over its anchors (official: context · S //
      ceil(S / p) each, the same when it divides), what an anchor frame cannot hold going to the others, and
      what no anchor can hold (high ratios, long segments) to more salient tokens of the segment's other frames
      (the official code's top-k would fail there).
    - Saliency is the attention each token gets in the vision tower's feature layer (VisionZip's cue, see
      `visionzip`); the official code uses SigLIP's MAP-head probe attention, which only LLaVA-OV's tower has.
      A frame's global feature is the mean of its tokens, not the MAP-pooled feature.
    - A merged token is the mean of its peak and the tokens that join it (official: w · peak + (1 − w) · mean,
      w = max(1 / (n + 1), 0.6)); a clip that repeats itself can end below the ratio (duplicates are no
      density peaks). Separators are kept first; positions stay the original ones, as in the official code.
    """

    ratio: float = 0.1
    segments: int = 8
    similarity_threshold: float = 0.9
    contextual_share: float = 0.4
    anchor_stride: int = 4

    name = "fastvid"
    stages = (PRE_LLM,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("fastvid", "segments", self.segments, 1)
        check_int("fastvid", "anchor_stride", self.anchor_stride, 1)
        check_interval("fastvid", "contextual_share", self.contextual_share, "[0, 1)")
        check_interval("fastvid", "similarity_threshold", self.similarity_threshold, "[-1, 1]")

    def uses_tower_attention(self) -> bool:
        return True

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        saliency = tower_attention(layout, self.name)
        destination, cells = merge_destinations(layout, budget.tokens_before_llm(layout.num_tokens), features.device)
        for _, grid, quota in video_grids(layout, cells, self.name):
            quotas = proportional_split(quota, [grid.shape[1]] * len(grid))
            segments = dynamic_segments(features[grid].float().mean(1), self.segments, self.similarity_threshold)
            self._prune_video(grid, quotas, segments, features, saliency, destination)
        return TokenReduction.from_destinations(destination)

    def _prune_video(self, grid, quotas, segments, features, saliency, destination) -> None:
        """Salient tokens of each frame (a row of `grid`) kept; each segment's other tokens folded into its anchors'
        density peaks - every segment at once, with one host sync for the anchors' capacities."""
        device = grid.device
        salient = [quota - int(quota * self.contextual_share) for quota in quotas]
        anchors = [(s, f) for s, segment in enumerate(segments)
                   for f in range(segment[-1], segment[0] - 1, -self.anchor_stride)]
        self._overflow_to_salient(quotas, salient, segments, {f for _, f in anchors}, grid.shape[1])
        frame = torch.arange(len(grid), device=device)[:, None].expand_as(grid).flatten()
        kept = grid.flatten()[top_tokens_per_group(saliency[grid].flatten(), frame, grid.new_tensor(salient))]
        destination[kept] = kept
        others = destination[grid] < 0  # (frames, tokens): not kept as salient
        capacity = others[[f for _, f in anchors]].sum(dim=1).tolist()
        counts = []
        for s, segment in enumerate(segments):
            contextual = sum(quotas[f] - salient[f] for f in segment)
            own = [c for (t, _), c in zip(anchors, capacity) if t == s]
            counts += apportion(contextual, [1.0] * len(own), own)
        chosen = [(s, f, count, size) for (s, f), count, size in zip(anchors, counts, capacity) if count]
        if not chosen:
            return
        members = [  # each anchor's non-salient tokens, in order
            grid[f][true_first(others[f])[:size]] for _, f, _, size in chosen
        ]
        _, centres = grouped_density_peaks([features[m] for m in members], [count for _, _, count, _ in chosen], 4)
        peaks = torch.nn.utils.rnn.pad_sequence(members, batch_first=True).gather(1, centres.clamp_min(0))
        peaks = torch.where(centres >= 0, peaks, peaks[:, :1])  # past a group's peaks: its first again
        peak_segment = torch.tensor([s for s, _, _, _ in chosen], device=device)[:, None].expand_as(peaks).flatten()
        peaks = peaks.flatten()
        segment_of = torch.tensor([s for s, segment in enumerate(segments) for _ in segment], device=device)
        token_segment = segment_of[:, None].expand_as(grid).flatten()
        tokens = grid.flatten()
        unit = torch.nn.functional.normalize(features.float(), dim=-1)
        similarity = (unit[tokens] @ unit[peaks].T).masked_fill(token_segment[:, None] != peak_segment, float("-inf"))
        nearest = peaks[similarity.argmax(dim=1)]  # its own segment's most similar peak
        has_peaks = torch.zeros(len(segments), dtype=torch.bool, device=device)
        has_peaks[peak_segment] = True
        joins = others.flatten() & has_peaks[token_segment]
        destination[tokens] = torch.where(joins, nearest, destination[tokens])
        destination[peaks] = peaks


    @staticmethod
    def _overflow_to_salient(quotas, salient, segments, anchors: set[int], cells: int) -> None:
        """A segment's contextual count that its anchor frames cannot hold (every non-salient token of theirs a
        peak) becomes more salient tokens of its other frames, by their counts, so the budget is met."""
        for segment in segments:
            room = sum(cells - salient[f] for f in segment if f in anchors)
            overflow = sum(quotas[f] - salient[f] for f in segment) - room
            rest = [f for f in segment if f not in anchors]
            if overflow > 0 and rest:
                extra = apportion(overflow, [float(quotas[f]) for f in rest], [cells - salient[f] for f in rest])
                for f, count in zip(rest, extra):
                    salient[f] += count


def dynamic_segments(global_features: torch.Tensor, segments: int, threshold: float) -> list[list[int]]:
    """DySeg: frame indices of each segment, cut after frame t where frames t and t + 1 are among the
    `segments` − 1 least similar neighbours or less similar than `threshold` (cosine)."""
    count = global_features.shape[0]
    unit = torch.nn.functional.normalize(global_features.float(), dim=-1)
    similarity = (unit[:-1] * unit[1:]).sum(dim=-1)
    lowest = torch.sort(similarity, stable=True).indices[: segments - 1].tolist()
    cuts = sorted(set(lowest) | set((similarity < threshold).nonzero().squeeze(1).tolist()))
    bounds = [0, *(t + 1 for t in cuts), count]
    return [list(range(start, end)) for start, end in zip(bounds[:-1], bounds[1:]) if end > start]
