"""Ovis2.5 (AIDC-AI; transformers 5.25+): a packed SigLIP2-NaViT tower encodes each frame of a video (16-px
patches, one frame a unit) with its rows in windows of 2 × 2-patch blocks (3 × 3 blocks a window at its default
`window_size`), as Qwen2.5-VL's does. Its visual tokenizer reads the last layer's rows as they stand - still in
window order - and turns each block into a probability over a visual vocabulary, embedded by a table; so the
prompt holds a frame's tokens in window order, between the video's start and end (both replaced by learned
indicator embeddings). A Qwen3 decoder with 1-D positions reads them.

Where it departs from the stock forward: none beyond the engine's rules. The layout gives each token the raster
cell of its block, so that methods reading frames as grids see real neighbours; a fold inside the tower expands
its rows back at the last layer's output, which the visual tokenizer reads."""

from __future__ import annotations

import dataclasses

import torch

from ..engine import compat
from ..layout import VisualLayout
from .qwen2_vl import Qwen2_5_VLAdapter


class Ovis2_5Adapter(Qwen2_5_VLAdapter):
    model_type = "ovis2_5"
    mrope = False
    tower_expands_at_last_layer = True
    tower_row_outputs = ("hidden_states",)  # the visual tokenizer reads its last layer's rows, not the normed output

    def video_layouts(self, input_ids, call_kwargs):
        layouts = super().video_layouts(input_ids, call_kwargs)
        return None if layouts is None else [self._in_window_order(layout) for layout in layouts]

    def _in_window_order(self, layout: VisualLayout) -> VisualLayout:
        """The layout with each token at the raster cell of the block it holds (the k-th token of a frame holds the
        k-th block in window order)."""
        spatial = layout.spatial.clone()
        for video, (_, height, width) in enumerate(layout.grids):
            members = layout.video == video
            spatial[members] = self.window_cells(height, width).to(spatial.device)[spatial[members]]
        return dataclasses.replace(layout, spatial=spatial)

    def window_cells(self, height: int, width: int) -> torch.Tensor:
        """Per token of a height × width frame, in the order the tower leaves them, the raster cell it holds."""
        merge = self.spatial_merge
        frame = torch.tensor([[1, height * merge, width * merge]])
        return compat.vision_window_order(frame, self.config.vision_config)

    # ------------------------------------------------------------------ tower
    def patch_embeddings(self, pixels):
        embeddings = self.vision_tower.embeddings  # without the position table
        conv = embeddings.patch_embedding
        patches = pixels.view(-1, conv.in_channels, embeddings.patch_size, embeddings.patch_size)
        return conv(patches.to(conv.weight.dtype)).flatten(1)

    def tower_layers(self):
        return self.vision_tower.layers, len(self.vision_tower.layers)

    def tower_readouts(self):
        return []

    def tower_attention(self):
        return self.vision_tower.layers[-1].self_attn

    def tower_layer_attention(self, layer):
        return layer.self_attn

    def tower_projections(self, attention, project):
        return project(attention.q_proj), project(attention.k_proj), project(attention.v_proj)
