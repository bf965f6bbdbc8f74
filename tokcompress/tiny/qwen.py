"""Tiny models of the Qwen-VL families, whose tower packs a video's frame units into one sequence: Qwen2.5-VL,
Qwen3-VL (-MoE) and Cosmos3 Omni (its modules), Qwen3.5 (-MoE) and the Qwen Omni thinkers; `packed` builds the
other packed families, several on these towers and decoders."""

from __future__ import annotations

from transformers import (
    Cosmos3OmniConfig,
    Cosmos3OmniForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3OmniMoeThinkerConfig,
    Qwen3OmniMoeThinkerForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

from ..tiny_inputs import (
    AUDIO,
    AUDIO_END,
    AUDIO_START,
    IMAGE,
    VIDEO,
    VISION_END,
    VISION_START,
    VOCAB,
)
from .common import build, text_config

QWEN2_5_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # fits head_dim 16
QWEN2_5_TOWER = dict(  # 2 blocks, the second of full attention; patch 14, temporal patch 2, merge 2
    depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, temporal_patch_size=2,
    spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1],
)
QWEN3_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
QWEN3_TOWER = dict(  # 3 blocks, each feeding DeepStack; patch 16, temporal patch 2, merge 2, an 8 × 8 position table
    depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, temporal_patch_size=2,
    spatial_merge_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2],
)
OMNI_AUDIO = dict(encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16, num_mel_bins=16)


def tiny_qwen2_5_vl(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Qwen2.5-VL with a 2-block vision tower (patch 14, temporal patch 2, merge 2); M-RoPE sections fit head_dim 16."""
    config = Qwen2_5_VLConfig(
        text_config=text_config(num_layers, hidden_size, rope_parameters=QWEN2_5_ROPE),
        vision_config={**QWEN2_5_TOWER, "out_hidden_size": hidden_size},
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return build(Qwen2_5_VLForConditionalGeneration, config, attn_implementation, seed)


def tiny_qwen2_5_omni_thinker(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64
):
    """Qwen2.5-Omni's thinker: Qwen2.5-VL's tiny tower and decoder beside a 1-layer audio encoder (16 mel bins),
    over the byte vocabulary and three audio ids."""
    config = Qwen2_5OmniThinkerConfig(
        text_config={**text_config(num_layers, hidden_size, rope_parameters=QWEN2_5_ROPE), "vocab_size": VOCAB + 3},
        vision_config={**QWEN2_5_TOWER, "out_hidden_size": hidden_size},
        audio_config={**OMNI_AUDIO, "output_dim": hidden_size, "n_window": 4, "max_source_positions": 64},
        image_token_index=IMAGE, video_token_index=VIDEO, audio_token_index=AUDIO, audio_start_token_id=AUDIO_START,
        audio_end_token_id=AUDIO_END, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return build(Qwen2_5OmniThinkerForConditionalGeneration, config, attn_implementation, seed)


def tiny_qwen3_vl(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Qwen3-VL with a 3-block vision tower (patch 16, temporal patch 2, merge 2) whose every block feeds a
    DeepStack merger, so LLM layers 0-2 add visual features; interleaved M-RoPE sections fit head_dim 16."""
    return _qwen3_vl(Qwen3VLConfig, Qwen3VLForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size)


def tiny_cosmos3_omni(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Cosmos3 Omni: Qwen3-VL's tower and decoder under its own config."""
    return _qwen3_vl(
        Cosmos3OmniConfig, Cosmos3OmniForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size,
    )


def tiny_qwen3_vl_moe(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Qwen3-VL-MoE: Qwen3-VL's tower and layout; every decoder MLP is 4 experts, 2 of them routed per token."""
    return _qwen3_vl(
        Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size,
    )


def tiny_qwen3_5(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Qwen3.5: Qwen3-VL's tower (no DeepStack) and layout over a hybrid decoder, gated-delta linear attention in
    even layers and gated softmax attention (q/k norms, rotary on half of head_dim 32) in odd ones."""
    return _qwen3_5(Qwen3_5Config, Qwen3_5ForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size)


def tiny_qwen3_5_moe(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Qwen3.5-MoE: Qwen3.5's tower, layout and hybrid decoder; every decoder MLP is 4 experts, 2 of them routed per
    token, beside a shared one."""
    return _qwen3_5(
        Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size,
        shared_expert_intermediate_size=hidden_size,
    )


def tiny_qwen3_omni_moe_thinker(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64
):
    """Qwen3-Omni's thinker: Qwen3-VL's tiny tower (DeepStack) over a mixture-of-experts decoder (4 experts, 2 a
    token), beside a 1-layer audio encoder (16 mel bins), over the byte vocabulary and three audio ids."""
    config = Qwen3OmniMoeThinkerConfig(
        text_config={
            **text_config(num_layers, hidden_size, head_dim=16, rope_parameters=QWEN3_ROPE), "vocab_size": VOCAB + 3,
            "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": hidden_size,
        },
        vision_config={**QWEN3_TOWER, "out_hidden_size": hidden_size},
        audio_config={**OMNI_AUDIO, "output_dim": hidden_size, "downsample_hidden_size": 8},
        image_token_id=IMAGE, video_token_id=VIDEO, audio_token_id=AUDIO, audio_start_token_id=AUDIO_START,
        audio_end_token_id=AUDIO_END, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return build(Qwen3OmniMoeThinkerForConditionalGeneration, config, attn_implementation, seed)


def qwen3_5_text(num_layers: int, hidden_size: int, **text_extra) -> dict:
    """Qwen3.5's tiny hybrid decoder: gated-delta linear attention in even layers, gated softmax attention (q/k norms,
    rotary on half of head_dim 32) in odd ones."""
    return text_config(
        num_layers, hidden_size, head_dim=32,
        layer_types=["linear_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [3, 3, 2],
            "mrope_interleaved": True,
        },
        **text_extra,
    )


def _qwen3_5(config_cls, model_cls, num_layers, attn_implementation, seed, hidden_size, **text_extra):
    config = config_cls(
        text_config=qwen3_5_text(num_layers, hidden_size, **text_extra),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size, patch_size=16,
            temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64,
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return build(model_cls, config, attn_implementation, seed)


def _qwen3_vl(config_cls, model_cls, num_layers, attn_implementation, seed, hidden_size, **text_extra):
    config = config_cls(
        text_config=text_config(num_layers, hidden_size, head_dim=16, rope_parameters=QWEN3_ROPE, **text_extra),
        vision_config={**QWEN3_TOWER, "out_hidden_size": hidden_size},
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return build(model_cls, config, attn_implementation, seed)
