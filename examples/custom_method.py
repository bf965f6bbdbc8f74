"""Register your own method in ~30 lines: a dataclass of knobs and one reduce function per stage it acts at.

This one keeps, in every frame, the tokens that differ most from the frame's mean (a crude saliency), before
the LLM. `python examples/custom_method.py`
"""

from dataclasses import dataclass

import torch

import tokcompress
from tokcompress import tiny
from tokcompress.methods import PRE_LLM, LayerBudget, Method, TokenReduction
from tokcompress.video import read_frames, sample_clip


@tokcompress.register_method
@dataclass
class FrameOutliers(Method):
    """Keep each frame's tokens farthest from the frame mean. Departures: none (not a published method)."""

    ratio: float = 0.5
    name = "frame_outliers"
    stages = (PRE_LLM,)

    def reduce_pre_llm(self, features, layout, budget: LayerBudget) -> TokenReduction:
        distance = torch.zeros(layout.num_tokens)
        for frame in layout.frame.unique():
            members = layout.frame == frame
            distance[members] = (features[members] - features[members].mean(0)).norm(dim=-1).float()
        distance[layout.is_separator] = float("inf")  # keep LLaVA's newline token
        keep = distance.topk(budget.tokens_before_llm(layout.num_tokens)).indices
        return TokenReduction.prune(keep)


model = tiny.tiny_llava_onevision()
inputs = tiny.video_inputs(model, read_frames(sample_clip("bikes.mp4"), 8, size=(84, 84)), "What moves?")
with tokcompress.compress(model, "frame_outliers", ratio=0.25) as handle, torch.no_grad():
    model(**inputs)
    print(handle.stats)
