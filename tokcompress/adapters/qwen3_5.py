"""Qwen3.5: Qwen3-VL's video layout (each temporal patch between its `<t seconds>` text and vision start / end,
interleaved M-RoPE) without DeepStack, over a hybrid decoder: gated-delta-rule linear-attention layers, which
carry a recurrent and a convolution state instead of keys and values, between gated softmax-attention layers
(q/k norms, rotary on part of each head).

Each layer runs on the tokens its group keeps, so a linear-attention layer's state is always the state of the
tokens it saw; decode-time KV selection touches the softmax layers only (`Adapter.kv_layers`)."""

from __future__ import annotations

from torch import nn

from .base import rotate
from .qwen3_vl import Qwen3VLAdapter


class Qwen3_5Adapter(Qwen3VLAdapter):
    model_type = "qwen3_5"

    def project_queries(self, layer, hidden, cos, sin):
        layer = self._softmax_layer(layer)
        attention = layer.self_attn
        projected = attention.q_proj(layer.input_layernorm(hidden)).view(len(hidden), -1, 2 * attention.head_dim)
        queries = attention.q_norm(projected[..., : attention.head_dim])  # the other half gates the output
        return rotate(queries.transpose(0, 1), cos, sin)

    def project_keys(self, layer, hidden, cos, sin):
        return super().project_keys(self._softmax_layer(layer), hidden, cos, sin)

    def _softmax_layer(self, layer: nn.Module) -> nn.Module:
        """A linear-attention layer has no attention map: a method scoring with one reads the next softmax layer's
        (the last one's, past the last), projecting the hidden states that enter `layer`."""
        if hasattr(layer, "self_attn"):
            return layer
        index = next(i for i, candidate in enumerate(self.layers) if candidate is layer)
        softmax_layers = sorted(self.kv_layers)
        return self.layers[next((i for i in softmax_layers if i > index), softmax_layers[-1])]
