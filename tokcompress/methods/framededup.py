"""`framededup` (after LongVU, Shen et al., ICML'25): frames repeating their neighbours never reach the vision tower."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import PRE_ENCODER, Method, keep_count
from .knobs import check_int, check_interval
from .selection import top_tokens


@dataclass
class FrameDedup(Method):
    """Drop redundant frames before the vision tower, so it encodes fewer; the LLM sees the rest at their
    original positions.

    As LongVU's training-free dedup: frames are cut into windows of `window` consecutive frames; a frame's
    redundancy is the mean cosine between its flattened signature and those of every frame of its window
    (itself included), the middle frame of each window scoring −∞ so that it is always kept; frames scoring
    at or above `threshold` are dropped. On top of that, at most round(ratio · frames) frames are kept
    (the most redundant of the others go first), so `ratio` caps the LLM's visual tokens; a clip that
    repeats itself can end below it.

    ratio: 0.5; threshold: 0.83 (LongVU's DINO threshold); window: 16 (LongVU's).

    Departures:
    - Signatures are the vision tower's own patch embeddings of each frame, not a separate DINOv2-giant
      (which LongVU runs on every frame); on them the threshold may want tuning per model. InternVL encodes
      every frame before the prompt is read: there the signatures are each frame's projected features, and
      the dropped frames are removed before the LLM, not spared the tower.
    - A Qwen-VL temporal patch (two frames encoded together) is one frame unit.
    - The ratio cap replaces LongVU's 400-frame cap; short clips are not exempt (LongVU skips dedup below
      its context budget); each video of a batch is deduplicated on its own.
    """

    ratio: float = 0.5
    threshold: float = 0.83
    window: int = 16

    name = "framededup"
    stages = (PRE_ENCODER,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_interval("framededup", "threshold", self.threshold, "[-1, 1]")
        check_int("framededup", "window", self.window, 1)

    def reduce_pre_encoder(self, signatures: torch.Tensor) -> torch.Tensor:
        redundancy = window_redundancy(signatures, self.window)
        frames = signatures.shape[0]
        novel = redundancy < self.threshold
        cap = max(keep_count(self.ratio, frames), 1)
        return top_tokens(-redundancy, min(int(novel.sum()), cap))


def window_redundancy(signatures: torch.Tensor, window: int) -> torch.Tensor:
    """Per frame, the mean cosine to the frames of its window (itself included); −∞ for each window's middle
    frame, which is always kept (LongVU forces its score to 0)."""
    unit = torch.nn.functional.normalize(signatures.flatten(1).float(), dim=-1)
    redundancy = torch.empty(unit.shape[0], device=unit.device)
    for start in range(0, unit.shape[0], window):
        members = unit[start : start + window]
        redundancy[start : start + len(members)] = (members @ members.T).mean(dim=1)
        redundancy[start + len(members) // 2] = float("-inf")
    return redundancy
