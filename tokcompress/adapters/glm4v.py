"""GLM-4.1V / GLM-4.6V (`glm4v`, `glm46v`) and GLM-4.5V (`glm4v_moe`): a video is `<|begin_of_video|>`, then per
temporal patch (two frames) `<|begin_of_image|>` + (H/m)·(W/m) image tokens + `<|end_of_image|>` + its second,
then `<|end_of_video|>`. Its tokens are image tokens inside a video's span (the processor's `mm_token_type_ids`
2), so images elsewhere in the prompt pass through uncompressed. The tower is Qwen2-VL's kind (packed, attention
inside each temporal patch, no windows), encoding each patch as an image of its own; 3-D M-RoPE positions stay
the original ones. GLM-4.1V's decoder rotates interleaved pairs of the first half of each head; GLM-4.5V's the
two halves of it."""

from __future__ import annotations

import torch

from .base import rotate
from .prompt import token_runs
from .qwen3_vl import Qwen3VLAdapter


def rotate_pairs(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """GLM-4's RoPE on the first cos.shape[-1] dims of each head: each interleaved pair (x₀, x₁) turns by its angle
    ((−x₁, x₀) · sin; cos and sin hold each angle twice, side by side)."""
    dims = cos.shape[-1]
    pairs = states[..., :dims].unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return torch.cat((states[..., :dims] * cos + turned * sin, states[..., dims:]), dim=-1)


class Glm4vAdapter(Qwen3VLAdapter):
    model_type = "glm4v"
    rotation = staticmethod(rotate_pairs)
    tower_row_outputs = ("hidden_states",)  # its last_hidden_state is read out already: normed, downsampled

    @property
    def video_token_id(self) -> int:
        return self.config.image_token_id

    def frame_runs(self, ids):
        inside = (ids == self.config.video_start_token_id).cumsum(0) > (ids == self.config.video_end_token_id).cumsum(0)
        return token_runs(torch.where(inside, ids, -1), self.config.image_token_id)

    def tower_readouts(self):
        return [self.vision_tower.post_layernorm]  # then the downsampling convolution and the patch merger

    def tower_token_scores(self, records, input_ids, standing=None):
        """The tower gets every temporal patch as an image of its own (grid 1 × h × w), so its call does not say
        where a video ends: the prompts do, each video's span holding one run of tokens per patch."""
        merge = self.config.vision_config.spatial_merge_size**2
        received = torch.cat([self.tower_attention_received(call) for call in records if call.kind == "attention"])
        merged = received.view(-1, merge).mean(dim=-1)  # one per LLM token
        videos = [video for ids in input_ids for video in self._videos(ids)]
        units = []
        stood_counts = [len(units) for units in standing] if standing is not None else [f for f, _ in videos]
        for (frames, tokens), stood in zip(videos, stood_counts):
            units.extend(merged[: stood * tokens].view(stood, tokens))
            merged = merged[stood * tokens :]
        return units

    def _videos(self, ids: torch.Tensor) -> list[tuple[int, int]]:
        """(temporal patches, tokens per patch) of each video in one prompt, in order."""
        runs = self.frame_runs(ids)
        span = (ids == self.config.video_start_token_id).cumsum(0)
        spans = span[torch.tensor([start for start, _ in runs], dtype=torch.long, device=ids.device)].tolist()
        videos: dict[int, list[int]] = {}
        for (_, length), video in zip(runs, spans):
            videos.setdefault(video, []).append(length)
        return [(len(lengths), lengths[0]) for lengths in videos.values()]


class Glm46VAdapter(Glm4vAdapter):
    """GLM-4.6V: GLM-4.1V's tower, prompt layout and decoder under another name."""

    model_type = "glm46v"


class Glm4vMoeAdapter(Glm4vAdapter):
    """GLM-4.5V: the same tower and layout over a mixture-of-experts decoder that rotates the halves of the first
    part of each head (rotate-half, as Llama)."""

    model_type = "glm4v_moe"
    rotation = staticmethod(rotate)
