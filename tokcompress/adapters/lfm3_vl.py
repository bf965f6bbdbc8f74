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

from .qwen2_vl import Qwen2VLAdapter
from .qwen3_5 import ScoredByNextAttentionLayer


class Lfm3VlAdapter(ScoredByNextAttentionLayer, Qwen2VLAdapter):
    model_type = "lfm3_vl"
    mrope = False
    tower_token_folding_refused = "its convolution layers need every patch of a frame's grid"

    def scoring_rotary(self, layer, hidden, kwargs):
        scoring = self.scoring_layer[layer]
        if scoring is layer:
            return super().scoring_rotary(layer, hidden, kwargs)
        return self.language_model.rotary_emb(hidden, kwargs["position_ids"], scoring.self_attn.layer_type)

    def heads(self, layer, projection, norm, hidden):
        states = projection(layer.operator_norm(hidden)).view(hidden.shape[0], -1, layer.self_attn.head_dim)
        return (states if norm is None else norm(states)).transpose(0, 1)

    def attention_layer_indices(self):
        return [index for index, layer in enumerate(self.layers) if layer.is_attention_layer]

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
