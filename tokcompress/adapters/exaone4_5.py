"""EXAONE 4.5 (`exaone4_5`; LG AI Research's EXAONE-4.5-33B): Qwen2.5-VL's windowed, packed tower and 2 × 2 patch
merger with grouped key/value heads in its attention (one fused projection: queries, then keys and values of fewer
heads) and axial 2-D RoPE, over an EXAONE 4 decoder with 1-D positions. A video is one run of `<|video_pad|>`
tokens, frame-major in raster order, two frames a temporal unit.

The decoder norms each layer's attention and MLP outputs, not their inputs (no `input_layernorm`: the projections
read the hidden states as they enter), norms q and k per head, and rotates them only in its sliding-window layers:
its global layers have no RoPE (NoPE) though they get the rotary tables too.

Where it departs from the stock forward: none beyond the engine's rules."""

from __future__ import annotations

from .qwen2_vl import Qwen2_5_VLAdapter


class Exaone4_5Adapter(Qwen2_5_VLAdapter):
    model_type = "exaone4_5"
    mrope = False

    def project_queries(self, layer, hidden, cos, sin):
        return super().project_queries(layer, hidden, *self._rotary(layer, cos, sin))

    def project_keys(self, layer, hidden, cos, sin):
        return super().project_keys(layer, hidden, *self._rotary(layer, cos, sin))

    @staticmethod
    def _rotary(layer, cos, sin):
        """The tables a layer rotates q and k by: none in a global layer of a model with sliding ones."""
        attention = layer.self_attn
        rotates = attention.sliding_window is None or attention.is_sliding
        return (cos, sin) if rotates else (None, None)

    def heads(self, layer, projection, norm, hidden):
        states = projection(hidden).view(hidden.shape[0], -1, layer.self_attn.head_dim)  # its input is not normed
        return (states if norm is None else norm(states)).transpose(0, 1)

    def tower_projections(self, attention, project):
        return project(attention.qkv).split([attention.q_dim, attention.kv_dim, attention.kv_dim], dim=-1)
