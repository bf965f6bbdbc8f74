"""Tiny models of the families whose decoder is DeepSeek's multi-head latent attention (MLA): queries through a
rank-32 projection, keys and values through a rank-16 latent, RoPE on 8 of each head's 16 query / key dims, in
interleaved pairs - Kimi K2.5 and dots3 Note."""

from __future__ import annotations

import transformers

from ..tiny_inputs import AUDIO, IMAGE, VIDEO, VISION_END, VISION_START
from .common import build, text_config

MLA = dict(q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
EXPERTS = dict(n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32)


def tiny_kimi_k25(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64, **text_extra
):
    """Kimi K2.5 (transformers 5.24+) with a 2-layer MoonViT tower (14-px patches, an 8 × 8 learned position grid
    resized to each frame, a sinusoid per frame of a chunk, axial 2-D RoPE, a chunk's frames averaged and 2 × 2
    patches a token after its last layer) over a DeepSeek-V3 decoder: MLA and, after a dense first layer, a mixture
    of 4 experts (2 a token) beside a shared one; `text_extra` overrides the decoder's config
    (`rope_interleave=False`, `q_lora_rank=None`)."""
    text = text_config(
        num_layers, hidden_size, model_type="deepseek_v3", first_k_dense_replace=1, n_group=1, topk_group=1,
        **{**MLA, **EXPERTS, **text_extra},
    )
    config = transformers.Kimi_K25Config(
        text_config={**text, "num_key_value_heads": text["num_attention_heads"]},  # MLA: a key per query head
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
            pos_emb_height=8, pos_emb_width=8,
        ),
        projection_hidden_size=32, image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    return build(transformers.Kimi_K25ForConditionalGeneration, config, attn_implementation, seed)


def tiny_dots3_note(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64, **text_extra
):
    """dots3 Note with a 2-block packed tower (14-px patches, one frame a unit, q/k norms, 2-D RoPE, experts in its
    second block, a 2 × 2 merger after its final norm) and a 1-layer audio encoder, over a decoder of MLA layers:
    "indexed" ones (a DSA indexer of 2 heads) and a sliding one of window 6 as the third (`layer_types`) with shapes
    of its own (2 heads of 16 + 8 query / key dims and 8 value dims, ranks 24 and 8; so RoPE turns a third of its
    heads, half of the others'), each layer's MLP after the first a mixture of 4 experts (2 a token) beside a shared
    one.

    The indexer picks the published 2,048 keys a query, more than the tests' prompts hold: where it binds, random
    weights make ties at a score of zero (every head's ReLU zero) common, and top-k breaks them by position, so the
    stock model answers a left-padded prompt unlike the same prompt alone. `text_extra` overrides the decoder's
    config (`index_topk=8` makes it bind)."""
    layers = ["indexed_attention", "indexed_attention", "sliding_attention", *["indexed_attention"] * (num_layers - 3)]
    sliding = dict(q_lora_rank=24, kv_lora_rank=8, qk_nope_head_dim=16, v_head_dim=8, head_dim=24,
                   num_attention_heads=2, num_key_value_heads=2)
    text = text_config(
        num_layers, hidden_size, head_dim=16, shared_experts_intermediate_size=32, index_topk=2048, index_head_dim=16,
        index_n_heads=2, sliding_window=6, layer_types=layers[:num_layers], **MLA, **EXPERTS,
        **{f"swa_{name}": value for name, value in sliding.items()},
    )
    config = transformers.Dots3NoteConfig(
        text_config={**text, "num_key_value_heads": text["num_attention_heads"], **text_extra},  # MLA: a key a head
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
            mlp_layer_types=["dense", "sparse"], num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            adapter_in_dim=32, adapter_out_dim=hidden_size,
        ),
        audio_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, feature_size=16,
            downsample_hidden_size=32, adapter_input_size=32, adapter_out_dim=hidden_size,
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, audio_token_id=AUDIO,
    )
    return build(transformers.Dots3NoteForConditionalGeneration, config, attn_implementation, seed)
