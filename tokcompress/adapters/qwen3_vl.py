"""Qwen3-VL: each temporal patch of a video sits on its own, `<t seconds>` + vision start + (H/m)·(W/m)
merged patches + vision end; 3-D interleaved M-RoPE positions stay the original ones; q/k are RMS-normed per
head before RoPE; DeepStack adds features from three tower depths to the visual tokens after LLM layers 0-2."""

from __future__ import annotations

import torch

from ..engine import compat
from ..engine.compat import mrope_grid_rows
from ..layout import VisualLayout
from .base import token_runs
from .qwen2_vl import Qwen2VLAdapter, grid_from_positions


class Qwen3VLAdapter(Qwen2VLAdapter):
    model_type = "qwen3_vl"

    @property
    def layers_with_additions(self) -> int:
        return len(getattr(self.config.vision_config, "deepstack_visual_indexes", ()))

    def video_layouts(self, input_ids, call_kwargs):
        videos = self._video_sizes(call_kwargs)
        all_runs = [self.frame_runs(ids) for ids in input_ids]
        if sum(length for runs in all_runs for _, length in runs) != sum(tokens for tokens, _ in videos):
            return None  # placeholders and features disagree: HF's own error says by how much
        positions = call_kwargs.get("position_ids")
        pending = iter(videos)
        layouts = []
        for b, runs in enumerate(all_runs):
            frame_starts, grids = [], []
            while runs:
                tokens, frame_grid = next(pending)
                frames = []
                while runs and sum(length for _, length in frames) < tokens:
                    frames.append(runs.pop(0))
                if sum(length for _, length in frames) != tokens or len({length for _, length in frames}) != 1:
                    raise ValueError(
                        f"a video of {tokens} tokens does not fall into equal frames of video tokens "
                        f"({[length for _, length in frames]}); pass the processor's prompt and video_grid_thw"
                    )
                start, length = frames[0]
                if frame_grid is None and positions is not None and positions.ndim == 3:
                    frame_grid = grid_from_positions(mrope_grid_rows(positions)[:, b, start : start + length])[1:]
                height, width = frame_grid or (1, length)
                frame_starts.append([start for start, _ in frames])
                grids.append((len(frames), height, width))
            layouts.append(VisualLayout.from_frames(frame_starts, grids, device=input_ids.device))
        return layouts

    def frame_runs(self, ids: torch.Tensor) -> list[tuple[int, int]]:
        """(start, length) of each run of video tokens in one prompt: a temporal patch each."""
        return token_runs(ids, self.config.video_token_id)

    def _video_sizes(self, call_kwargs) -> list[tuple[int, tuple[int, int] | None]]:
        """Per video, in order of appearance: its tokens and its frame grid, when the call says it. `generate`
        encodes the videos up front and drops video_grid_thw: the features it hands over still count tokens."""
        grid_thw = call_kwargs.get("video_grid_thw")
        if grid_thw is not None:
            merge = self.config.vision_config.spatial_merge_size
            return [(t * (h // merge) * (w // merge), (h // merge, w // merge)) for t, h, w in grid_thw.tolist()]
        return [(len(features), None) for features in compat.encoded_video(call_kwargs)]

    def take_layer_additions(self, llm_kwargs):
        mask = llm_kwargs.pop(compat.DEEPSTACK_MASK, None)
        features = llm_kwargs.pop(compat.DEEPSTACK_FEATURES, None)
        if mask is None or features is None:
            return None
        embeds = llm_kwargs["inputs_embeds"]
        additions = embeds.new_zeros(*embeds.shape[:2], len(features), embeds.shape[-1])
        additions[mask.to(embeds.device)] = torch.stack(features, dim=1).to(embeds.dtype)
        return additions

    def tower_readouts(self):
        return [*super().tower_readouts(), *getattr(self.vision_tower, "deepstack_merger_list", ())]

    def encode_frames(self, encode, encoder_args, keep):
        output = super().encode_frames(encode, encoder_args, keep)
        if getattr(output, "deepstack_features", None) is not None:
            grids = encoder_args["video_grid_thw"].tolist()
            output.deepstack_features = [self._all_units(level, grids, keep) for level in output.deepstack_features]
        return output


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Qwen3-VL-MoE: the same tower, layout and DeepStack; only the decoder's MLPs are experts."""

    model_type = "qwen3_vl_moe"
