"""ERNIE-4.5-VL (`ernie4_5_vl_moe`): Qwen2-VL's packed tower (one frame a grid step, 2-D rotary, attention inside each
frame) read out by its final norm; outside the tower a resampler merges 2 × 2 patches, then each pair of frames, into
one token, so a frame unit is two frames: video start + T/2 × (H/m) × (W/m) tokens + video end, its timestamps drawn
on the pixels. The decoder has interleaved 3-D RoPE at original positions and experts split by modality: every layer
reads the prompt's modality ids (`moe_mm_token_type_ids`), which follow the tokens it sees."""

from __future__ import annotations

from .glm4v import rotate_pairs
from .qwen2_vl import Qwen2VLAdapter


class Ernie4_5_VLAdapter(Qwen2VLAdapter):
    model_type = "ernie4_5_vl_moe"
    rotation = staticmethod(rotate_pairs)
    llm_token_ids = ("moe_mm_token_type_ids",)
    tower_row_outputs = ("hidden_states",)  # its last_hidden_state is read out already (normed)

    @property
    def temporal_merge(self) -> int:
        return self.config.vision_config.temporal_merge_size  # 2: the resampler's pairs

    def tower_readouts(self):
        return [self.vision_tower.ln]
