"""LLaVA-OneVision-1.5 (`llava_onevision1_5`; transformers 5.25+): a packed RICE-ViT tower encodes each frame of a
video (14-px patches in 2 × 2 merge blocks, one frame a unit, axial 2-D RoPE) with a class token prepended to the
frame's rows inside the tower; the tower drops the class rows after its last block and its patch merger turns each
block into one token. The video is one run of `<|video_pad|>` tokens, frame-major in raster order, read by a Qwen3
decoder with 1-D positions.

Where it departs from the stock forward: none beyond the engine's rules. Inside the tower a frame unit is its class
row and its patches: folding keeps the class row of every frame standing (it never merges), and a fold expands the
rows back at the last block's output, before the tower splits the class rows off by the original frame lengths.
The tower's saliency for a token is the attention its patches get from their frame's class token."""

from __future__ import annotations

import torch

from .qwen2_vl import Qwen2VLAdapter


class LlavaOnevision15Adapter(Qwen2VLAdapter):
    model_type = "llava_onevision1_5"
    mrope = False
    tower_has_cls = True
    tower_expands_at_last_layer = True
    tower_row_outputs = ("hidden_states",)  # its last_hidden_state has the class rows split off: read out already

    def unit_rows(self, encoder_args):
        return [rows + 1 for rows in super().unit_rows(encoder_args)]

    def tower_readouts(self):
        return []

    def token_means(self, received, grid_thw, merge):
        frames = (grid_thw[:, 1] * grid_thw[:, 2]).repeat_interleave(grid_thw[:, 0]).tolist()
        patches = torch.cat([frame[1:] for frame in received.split([rows + 1 for rows in frames])])  # no class rows
        return super().token_means(patches, grid_thw, merge)
