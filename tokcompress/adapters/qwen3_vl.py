"""Qwen3-VL: each temporal patch of a video sits on its own, `<t seconds>` + vision start + (H/m)·(W/m)
merged patches + vision end; 3-D interleaved M-RoPE positions stay the original ones; q/k are RMS-normed per
head before RoPE; DeepStack adds features from three tower depths to the visual tokens after LLM layers 0-2."""

from __future__ import annotations

import torch

from ..engine import compat
from .qwen2_vl import Qwen2VLAdapter


class Qwen3VLAdapter(Qwen2VLAdapter):
    model_type = "qwen3_vl"

    @property
    def layers_with_additions(self) -> int:
        return len(getattr(self.config.vision_config, "deepstack_visual_indexes", ()))

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


class Cosmos3OmniAdapter(Qwen3VLAdapter):
    """Cosmos3 Omni (NVIDIA's Cosmos3-Nano): Qwen3-VL's modules, DeepStack included, under a config of its own."""

    model_type = "cosmos3_omni"
