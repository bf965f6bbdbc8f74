"""LFM3-VL (`lfm3_vl`; Liquid AI's LFM3-VL): a packed tower of gated 2-D convolution layers (each over its frame's
patch grid) and grouped-query attention layers (q/k norms, axial 2-D RoPE, attention inside each temporal patch of
two frames), whose 2 × 2 patch blocks the projector after it merges into one token; each temporal patch sits
between its own `<t seconds>` text and vision start / end, as in Qwen3-VL, read by an LFM3 decoder with 1-D
positions: short-convolution layers (a recurrent state, no keys or values) between sliding-window and global
attention layers, each type with rotary tables of its own (none for the convolutions).

Where it departs from the stock forward: none beyond the engine's rules. A convolution needs every patch of its
frame's grid, so the tower folds whole frames (earlytom) - its later layers get the grid of the frames that stand -
but not tokens; a method scoring at a convolution layer reads the next attention layer's q/k on the hidden states
entering it, as on Qwen3.5's linear-attention layers, rotated by that layer's type's tables (the convolution gets
none)."""

from __future__ import annotations

import functools

from torch import nn

from .qwen2_vl import Qwen2VLAdapter


class Lfm3VlAdapter(Qwen2VLAdapter):
    model_type = "lfm3_vl"
    mrope = False
    tower_token_folding_refused = "its convolution layers need every patch of a frame's grid"

    def scoring_rotary(self, layer, hidden, kwargs):
        scoring = self._scoring_layer[layer]
        if scoring is layer:
            return super().scoring_rotary(layer, hidden, kwargs)
        return self.language_model.rotary_emb(hidden, kwargs["position_ids"], scoring.self_attn.layer_type)

    def heads(self, layer, projection, norm, hidden):
        states = projection(layer.operator_norm(hidden)).view(hidden.shape[0], -1, layer.self_attn.head_dim)
        return (states if norm is None else norm(states)).transpose(0, 1)

    def project_queries(self, layer, hidden, cos, sin):
        return super().project_queries(self._scoring_layer[layer], hidden, cos, sin)

    def project_keys(self, layer, hidden, cos, sin):
        return super().project_keys(self._scoring_layer[layer], hidden, cos, sin)

    def project_values(self, layer, hidden):
        return super().project_values(self._scoring_layer[layer], hidden)

    @functools.cached_property
    def _scoring_layer(self) -> dict[nn.Module, nn.Module]:
        """Per decoder layer, the attention layer whose q/k score tokens there: itself, or the next one (the last,
        past the last) where it is a convolution."""
        attention = [index for index, layer in enumerate(self.layers) if layer.is_attention_layer]
        return {
            layer: self.layers[next((i for i in attention if i >= index), attention[-1])]
            for index, layer in enumerate(self.layers)
        }

    # ------------------------------------------------------------------ tower
    def patch_embeddings(self, pixels):
        embed = self.vision_tower.patch_embed  # a linear layer, then the norm before the first layer
        return self.vision_tower.embedding_norm(embed(pixels.to(embed.weight.dtype)))

    def tower_layers(self):
        return self.vision_tower.layers, len(self.vision_tower.layers)

    def tower_readouts(self):
        return []

    def tower_attention(self):
        return [layer for layer in self.vision_tower.layers if layer.is_attention_layer][-1].self_attn

    def tower_layer_attention(self, layer):
        return layer.self_attn

    def tower_projections(self, attention, project):
        return project(attention.q_proj), project(attention.k_proj), project(attention.v_proj)
