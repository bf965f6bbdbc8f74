"""Cohere's North vision models (`cohere_compass`): Qwen3-VL's tower, processor, per-unit layout and DeepStack over
a Cohere2 decoder - attention and MLP side by side on one layer norm, each layer type with its own rotary tables
(rotate-half, interleaved M-RoPE, original positions) or none (NoPE: its global layers)."""

from __future__ import annotations

from .qwen3_vl import Qwen3VLAdapter


class CohereCompassAdapter(Qwen3VLAdapter):
    model_type = "cohere_compass"
