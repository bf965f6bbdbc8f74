"""Muse Glimmer (Meta): a packed tower encodes each temporal patch (2 frames) of a video in windows of patches (a
few layers attend across the whole patch), moves its rows back out of window order, then pixel-shuffles 2 × 2
patches into a token; each patch's tokens follow its own `Time: t.ts`, between the video's start and end. The
decoder alternates sliding-window RoPE layers with global NoPE ones, norms q and k without weights (the queries
then scaled) and gates its attention output; positions are 1-D.

Where it departs from the stock forward: none beyond the engine's rules. A fold inside the tower expands its rows
back at the last layer's output, before the tower moves them out of window order."""

from __future__ import annotations

from ..engine import compat
from .qwen2_vl import Qwen2VLAdapter


class MuseGlimmerAdapter(Qwen2VLAdapter):
    model_type = "muse_glimmer"
    mrope = False
    tower_expands_at_last_layer = True
    tower_row_outputs = ("hidden_states",)  # its last_hidden_state is pixel-shuffled: read out

    @property
    def spatial_merge(self):
        return self.config.vision_config.merge_size

    def project_queries(self, layer, hidden, cos, sin):
        attention = layer.self_attn  # weightless norms per head; the queries scaled, the scores' 1/√d as usual
        queries = self.heads(layer, attention.q_proj, attention.qk_norm, hidden) * attention.qk_scale_factor
        return self.rotated(queries, cos, sin)

    def project_keys(self, layer, hidden, cos, sin):
        attention = layer.self_attn
        return self.rotated(self.heads(layer, attention.k_proj, attention.qk_norm, hidden), cos, sin)

    # ------------------------------------------------------------------ tower
    def patch_embeddings(self, pixels):
        embed = self.vision_tower.patch_embedder.patch_embedding  # without the position table
        return embed(pixels.to(embed.weight.dtype))

    def tower_layers(self):
        return self.vision_tower.layers, len(self.vision_tower.layers)

    def tower_readouts(self):
        return []

    def tower_attention(self):
        return self.vision_tower.layers[-1].attn

    def tower_layer_attention(self, layer):
        return layer.attn

    def tower_projections(self, attention, project):
        return project(attention.q_proj), project(attention.k_proj), project(attention.v_proj)

    def token_means(self, received, grid_thw, merge):
        rows = compat.muse_glimmer_token_rows(grid_thw, self.vision_tower).to(received.device)
        return received[rows].view(-1, merge).mean(dim=-1)


class MuseSparkAdapter(MuseGlimmerAdapter):
    """Muse Spark: Muse Glimmer's tower, layout and attention (its gated residuals, normed attention outputs, expert
    MLPs and audio encoder leave what tokcompress reads alone)."""

    model_type = "muse_spark"
