"""HyperCLOVA X SEED Vision (`hyperclovax_vision_v2`; Naver's HyperCLOVAX-SEED-Think-32B): Qwen2.5-VL's windowed,
packed tower and its 2 × 2 patch merger, a linear projector, and a Granite-style (MuP) decoder with 1-D positions.
A video is one run of `<|video_pad|>` tokens, frame-major in raster order, two frames a temporal unit; `generate`
encodes it up front (`mm_encoder_outputs`), as VideoLLaMA3 does.

Where it departs from the stock forward: none beyond the engine's rules. The decoder scales attention scores by
`attention_multiplier` instead of 1/√d, so the queries a method scores with carry the ratio of the two."""

from __future__ import annotations

from .qwen2_vl import Qwen2_5_VLAdapter


class HyperClovaXVisionV2Adapter(Qwen2_5_VLAdapter):
    model_type = "hyperclovax_vision_v2"
    mrope = False

    def project_queries(self, layer, hidden, cos, sin):
        queries = super().project_queries(layer, hidden, cos, sin)
        return queries * (layer.self_attn.scaling * queries.shape[-1] ** 0.5)  # its scale, against the scores' 1/√d
