"""`vidcom2` (Liu et al., EMNLP'25): per-frame budgets from frame uniqueness, then each frame's most distinct tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VisualLayout
from .base import PRE_LLM, LayerBudget, Method, TokenReduction
from .selection import apportion, separators_first, top_tokens_per_group

BANDWIDTHS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)


@dataclass
class VidCom2(Method):
    """Frame-adaptive token selection before the LLM.

    As the paper and official code: keep the half of the feature channels that vary least across the video's
    tokens, L2-normalise, and score every token's closeness to the video centre and to its frame's centre
    (a sum of Gaussian kernels of bandwidths 1/8 ... 2). A frame whose tokens sit far from the video centre is
    unique and gets a larger budget: with u_t = − mean video score of frame t and p = softmax((u − max u) / 0.01),
    frame t's share is ratio · (1 + p_t − mean p) of its tokens (at most all of them). Each frame keeps its
    tokens with the lowest video + frame score - the most distinctive - in spatial order.

    ratio: 0.25 (the official R_RATIO).

    Departures:
    - The frame shares are apportioned so that round(ratio · N) tokens are kept in all (what a full frame
      cannot take goes to the others; the official per-frame max(1, round(·)) can miss the total by a few, so
      a frame's count can differ from it by one); every frame keeps at least one token when the budget allows.
    - Separators (LLaVA-OV's newline) are kept first and count toward the budget; videos of a sample are
      scored each against their own centre; kept tokens keep their original positions (the official LLaVA
      code re-indexes them; its Qwen port keeps them, as here).
    """

    ratio: float = 0.25

    name = "vidcom2"
    stages = (PRE_LLM,)

    def reduce_pre_llm(self, features: torch.Tensor, layout: VisualLayout, budget: LayerBudget) -> TokenReduction:
        separators, cells = separators_first(layout, budget.tokens_before_llm(layout.num_tokens))
        kept = [separators]
        videos = [(layout.video == v) & ~layout.is_separator for v in range(len(layout.grids))]
        video_cells = [int(members.sum()) for members in videos]
        for members, quota in zip(videos, apportion(cells, video_cells, video_cells)):
            tokens = members.nonzero().squeeze(1)
            frames = torch.unique(layout.frame[tokens], return_inverse=True)[1]  # 0, 1, … over the frames that stand
            scores, frame_weight = uniqueness(features[tokens], frames)
            sizes = torch.bincount(frames).tolist()
            quotas = frame_quotas(quota, [w * size for w, size in zip(frame_weight.tolist(), sizes)], sizes)
            quotas = torch.tensor(quotas, device=tokens.device)
            kept.append(tokens[top_tokens_per_group(-scores, frames, quotas)])
        return TokenReduction.prune(torch.cat(kept))


def frame_quotas(total: int, shares: list[float], sizes: list[int]) -> list[int]:
    """`total` apportioned by `shares` (at most each frame's size), then every frame given at least one token
    while the total allows, taken from the frame with the most."""
    quotas = apportion(total, shares, sizes)
    for f in range(len(quotas)):
        if quotas[f] == 0 and total >= len(quotas):
            quotas[max(range(len(quotas)), key=lambda g: quotas[g])] -= 1
            quotas[f] = 1
    return quotas


def uniqueness(features: torch.Tensor, frames: torch.Tensor, temperature: float = 0.01):
    """Per token, its video + frame closeness score (lower: more distinct); per frame, its budget weight
    1 + p_t − mean p (p: the softmax of the frames' distance from the video centre). `frames`: each token's
    frame, numbered 0, 1, … without gaps."""
    variance = features.float().var(dim=0)
    channels = torch.topk(-variance, max(features.shape[1] // 2, 1)).indices  # the quietest half
    tokens = torch.nn.functional.normalize(features.float()[:, channels], dim=-1)
    count = int(frames.max()) + 1
    frame_centres = torch.zeros(count, tokens.shape[1], device=tokens.device).index_add_(0, frames, tokens)
    frame_centres /= torch.bincount(frames, minlength=count)[:, None]
    video_score = kernel_score(tokens, tokens.mean(dim=0, keepdim=True))
    frame_score = kernel_score(tokens, frame_centres[frames])
    mean_video_score = torch.zeros(count, device=tokens.device).index_add_(0, frames, video_score)
    mean_video_score /= torch.bincount(frames, minlength=count)
    u = -mean_video_score
    p = torch.softmax((u - u.max()) / temperature, dim=0)
    return video_score + frame_score, 1 + p - p.mean()


def kernel_score(tokens: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    distance = ((tokens - centres) ** 2).sum(dim=-1)
    return sum(torch.exp(-distance / (2 * bandwidth)) for bandwidth in BANDWIDTHS)
