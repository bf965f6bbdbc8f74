"""Families whose vision tower encodes a video's frames as a batch of images (LLaVA-OneVision, LLaVA-NeXT-Video,
Video-LLaVA): every frame becomes h × w tokens in raster order (led by separators of its own on Video-LLaVA, its CLS
token), a video may end with separator tokens, and `pixel_values_videos` is (videos, frames, 3, S, S)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..engine import compat
from ..engine.folding import BATCHED
from ..layout import VisualLayout
from .base import Adapter, feature_layer_index, vit_attention_received
from .prompt import token_runs


class FrameBatchAdapter(Adapter):
    """A subclass says how big a frame's token grid is (`frame_grid`), how many separators lead a frame and end a
    video, and where the tower's patch embedding is."""

    separators_per_video: ClassVar[int] = 0
    separators_per_frame: ClassVar[int] = 0
    tower_has_cls = True  # CLIP
    tower_frames = BATCHED

    def frame_grid(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def tokens_per_frame(self) -> int:
        """A frame's tokens in the prompt: its separators, then its grid."""
        height, width = self.frame_grid()
        return self.separators_per_frame + height * width

    @property
    def patch_embedding(self) -> torch.nn.Module:
        raise NotImplementedError

    def video_layouts(self, input_ids, call_kwargs):
        height, width = self.frame_grid()
        per_frame, separators = self.tokens_per_frame, self.separators_per_video
        per_video, videos = self._video_sizes(call_kwargs, input_ids)
        if int((input_ids == self.config.video_token_id).sum()) != per_video * videos:
            return None  # placeholders and features disagree: HF's own error says by how much
        layouts = []
        for ids in input_ids:
            starts, grids = [], []
            for start, length in token_runs(ids, self.config.video_token_id):
                # A run may hold several videos back to back, each T·h·w tokens plus its separators.
                if length % per_video or (per_video - separators) % per_frame:
                    raise ValueError(
                        f"a run of {length} video tokens does not split into videos of {per_video} tokens (frames of "
                        f"{per_frame} tokens plus {separators} separators); is the processor's frame size the model's?"
                    )
                for offset in range(0, length, per_video):
                    starts.append(start + offset)
                    grids.append(((per_video - separators) // per_frame, height, width))
            layouts.append(VisualLayout.from_videos(starts, grids, separators, ids.device, self.separators_per_frame))
        return layouts

    def frame_signatures(self, encoder_args):
        embed = self.patch_embedding
        pixels = encoder_args["pixel_values_videos"].to(embed.weight.dtype)
        return [embed(video).flatten(2).transpose(1, 2) for video in pixels]  # (T, patches, D) per video

    def encode_frames(self, encode, encoder_args, keep):
        pixels = encoder_args["pixel_values_videos"]  # (videos, T, 3, S, S): every kept frame in one tower call
        kept = torch.cat([video[frames] for video, frames in zip(pixels, keep)])[None]
        output = encode(**{**encoder_args, "pixel_values_videos": kept})
        features = output.pooler_output.flatten(0, -2)  # (kept frames · tokens per frame + separators, D)
        separators = features[features.shape[0] - self.separators_per_video :]
        per_frame = (features.shape[0] - self.separators_per_video) // kept.shape[1]
        videos = []
        frame_features = features[: features.shape[0] - self.separators_per_video]
        for frames, video_features in zip(keep, frame_features.split([len(f) * per_frame for f in keep])):
            full = features.new_zeros(pixels.shape[1], per_frame, features.shape[-1])
            full[frames] = video_features.view(len(frames), per_frame, -1)
            videos.append(torch.cat([full.flatten(0, 1), separators]))
        output.pooler_output = self.encoder_features(torch.stack(videos))
        return output

    def frame_counts(self, encoder_args):
        pixels = encoder_args["pixel_values_videos"]  # (videos, frames, 3, S, S)
        return [pixels.shape[1]] * pixels.shape[0]

    def tower_layers(self):
        layers = self.vision_tower.encoder.layers
        return layers, feature_layer_index(self.config) % len(layers) + 1

    def tower_attention(self):
        return self.vision_tower.encoder.layers[feature_layer_index(self.config)].self_attn

    def tower_attention_received(self, call):  # (frames, tower tokens)
        return vit_attention_received(self.tower_attention(), call.argument("hidden_states", 0), self.tower_has_cls)

    def tower_token_scores(self, records, input_ids, standing=None):  # one score row per frame it ran on
        frames = []
        for call in records:
            if call.kind == "attention":
                frames.extend(self.pool_tower_scores(self.tower_attention_received(call)))
        return frames

    def pool_tower_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """(frames, tower tokens) → (frames, tokens per frame), as the model selects and pools its features."""
        return scores

    def encoder_features(self, videos: torch.Tensor) -> torch.Tensor:
        """(videos, tokens per video, D) in the shape the stock encoder returns its `pooler_output`."""
        return videos

    def encoded_sizes(self, call_kwargs, input_ids: torch.Tensor) -> tuple[int, int]:
        """(tokens per video, videos) of the features `generate` pre-encoded, in the stock `pooler_output` shape."""
        features = compat.encoded_video(call_kwargs)
        return features.shape[1], features.shape[0]

    def _video_sizes(self, call_kwargs, input_ids) -> tuple[int, int]:
        """(tokens per video, videos) of this call, from its pixels or from the features generate pre-encoded."""
        pixels = call_kwargs.get("pixel_values_videos")
        if pixels is not None:
            return pixels.shape[1] * self.tokens_per_frame + self.separators_per_video, pixels.shape[0]
        return self.encoded_sizes(call_kwargs, input_ids)
