"""Qwen3.5 and Qwen3.5-MoE: Qwen3-VL's video layout (each temporal patch between its `<t seconds>` text and vision
start / end, interleaved M-RoPE) without DeepStack, over a hybrid decoder: gated-delta-rule linear-attention
layers, which carry a recurrent and a convolution state instead of keys and values, between gated softmax-attention
layers (q/k norms, rotary on part of each head); Qwen3.5-MoE's MLPs are experts.

Each layer runs on the tokens its group keeps, so a linear-attention layer's state is always the state of the
tokens it saw; decode-time KV selection touches the softmax layers only (`Adapter.kv_layers`)."""

from __future__ import annotations

import functools

from torch import nn

from .qwen3_vl import Qwen3VLAdapter


class ScoredByNextAttentionLayer:
    """Adapter mixin for hybrid decoders whose recurrent layers (Qwen3.5's linear attention, LFM3's short
    convolutions) have no attention map: q/k/v at such a layer come from the next softmax layer (the last, past the
    last), projecting the hidden states that enter it."""

    def attention_layer_indices(self) -> list[int]:
        """The decoder's softmax-attention layers that may score, in order."""
        raise NotImplementedError

    def project_queries(self, layer, hidden, cos, sin):
        return super().project_queries(self.scoring_layer[layer], hidden, cos, sin)

    def project_keys(self, layer, hidden, cos, sin):
        return super().project_keys(self.scoring_layer[layer], hidden, cos, sin)

    def project_values(self, layer, hidden):
        return super().project_values(self.scoring_layer[layer], hidden)

    @functools.cached_property
    def scoring_layer(self) -> dict[nn.Module, nn.Module]:
        """Per decoder layer, the softmax layer whose q/k score tokens there: itself, or the next one."""
        attention = self.attention_layer_indices()
        return {
            layer: self.layers[next((i for i in attention if i >= index), attention[-1])]
            for index, layer in enumerate(self.layers)
        }


class Qwen3_5Decoder(ScoredByNextAttentionLayer):
    """Adapter mixin for Qwen3.5's hybrid decoder (Qwen3.5, MiniCPM-V 4.6): gated queries, q/k norms, the softmax
    layers scoring for the linear-attention layers before them."""

    def attention_layer_indices(self):
        return sorted(self.kv_layers)

    def project_queries(self, layer, hidden, cos, sin):
        layer = self.scoring_layer[layer]
        attention = layer.self_attn
        projected = attention.q_proj(layer.input_layernorm(hidden)).view(len(hidden), -1, 2 * attention.head_dim)
        queries = attention.q_norm(projected[..., : attention.head_dim])  # the other half gates the output
        return self.rotated(queries.transpose(0, 1), cos, sin)


class Qwen3_5Adapter(Qwen3_5Decoder, Qwen3VLAdapter):
    model_type = "qwen3_5"


class Qwen3_5MoeAdapter(Qwen3_5Adapter):
    """Qwen3.5-MoE: the same tower, layout and hybrid decoder; only the decoder's MLPs are experts."""

    model_type = "qwen3_5_moe"
