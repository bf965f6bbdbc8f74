"""Tiny models built from configs (random weights) with a byte-level vocabulary, for tests and the demo.

Token ids 0-255 are raw UTF-8 bytes, so prompts are real text and generations decode to (meaningless)
text; ids 256+ are the special tokens the models need. Nothing is downloaded. Their prompts and pixels come
from `tiny_inputs` (reachable here too: `tiny.video_inputs(model, frames, question)`).
"""

from __future__ import annotations

import torch
from transformers import (
    CohereCompassConfig,
    CohereCompassForConditionalGeneration,
    Cosmos3EdgeConfig,
    Cosmos3EdgeForConditionalGeneration,
    Ernie4_5_VLMoeConfig,
    Ernie4_5_VLMoeForConditionalGeneration,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vMoeConfig,
    Glm4vMoeForConditionalGeneration,
    Glm46VConfig,
    Glm46VForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Molmo2Config,
    Molmo2ForConditionalGeneration,
    MuseGlimmerConfig,
    MuseGlimmerForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3OmniMoeThinkerConfig,
    Qwen3OmniMoeThinkerForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    VideoLlama3Config,
    VideoLlama3ForConditionalGeneration,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
)

from .tiny_inputs import (  # noqa: F401 - the prompts and pixels of these models, here too for `tiny.X` callers
    AUDIO,
    AUDIO_END,
    AUDIO_START,
    GEMMA4_AUDIO_BINS,
    IMAGE,
    PAD,
    VIDEO,
    VIDEO_END,
    VIDEO_START,
    VISION_END,
    VISION_START,
    VOCAB,
    decode,
    frame_batch_inputs,
    frame_batch_video,
    gemma4_inputs,
    internvl_inputs,
    left_pad,
    molmo2_inputs,
    muse_glimmer_inputs,
    omni_audio_tokens,
    qwen_omni_inputs,
    qwen_vl_inputs,
    text_ids,
    video_inputs,
    video_llama_3_inputs,
)


def _text_config(num_layers: int, hidden_size: int, **extra) -> dict:
    """A 4-head (2 KV heads) decoder over the byte vocabulary."""
    return dict(
        num_hidden_layers=num_layers, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=8192, pad_token_id=PAD, bos_token_id=None,
        eos_token_id=None, **extra,
    )


def _vit_config(model_type: str, image_size: int, **extra) -> dict:
    """A 2-layer, 2-head ViT of width 32 with 14-pixel patches."""
    return dict(
        model_type=model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=14, **extra,
    )


def tiny_llava_onevision(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, image_size: int = 84, hidden_size: int = 64
):
    """LLaVA-OneVision with SigLIP and a Qwen2 LLM; image_size 84 gives 3×3 tokens per frame (½ pooling)."""
    config = LlavaOnevisionConfig(
        text_config=_text_config(num_layers, hidden_size, model_type="qwen2"),
        vision_config=_vit_config("siglip_vision_model", image_size),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=[[image_size, image_size]],
    )
    return _build(LlavaOnevisionForConditionalGeneration, config, attn_implementation, seed)


def tiny_llava_next_video(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, image_size: int = 84, hidden_size: int = 64
):
    """LLaVA-NeXT-Video with CLIP (CLS dropped) and a Llama LLM; image_size 84 gives 3×3 tokens per frame (stride-2
    average pooling)."""
    config = LlavaNextVideoConfig(
        text_config=_text_config(num_layers, hidden_size, model_type="llama"),
        vision_config=_vit_config("clip_vision_model", image_size, projection_dim=32),
        image_token_index=IMAGE, video_token_index=VIDEO, vision_feature_layer=-1,
        vision_feature_select_strategy="default", spatial_pool_mode="average", spatial_pool_stride=2,
        image_grid_pinpoints=[[image_size, image_size]],
    )
    return _build(LlavaNextVideoForConditionalGeneration, config, attn_implementation, seed)


def tiny_video_llava(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, image_size: int = 84, hidden_size: int = 64
):
    """Video-LLaVA with a CLIP video tower (CLS kept) and a Llama LLM; image_size 84 gives 1 + 6×6 tokens per
    frame."""
    config = VideoLlavaConfig(
        text_config=_text_config(num_layers, hidden_size, model_type="llama"),
        vision_config=_vit_config("clip_vision_model", image_size, projection_dim=32),
        image_token_index=IMAGE, video_token_index=VIDEO, vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return _build(VideoLlavaForConditionalGeneration, config, attn_implementation, seed)


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
        text_config=_text_config(num_layers, hidden_size, rope_parameters=QWEN2_5_ROPE),
        vision_config={**QWEN2_5_TOWER, "out_hidden_size": hidden_size},
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return _build(Qwen2_5_VLForConditionalGeneration, config, attn_implementation, seed)


def tiny_qwen2_5_omni_thinker(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64
):
    """Qwen2.5-Omni's thinker: Qwen2.5-VL's tiny tower and decoder beside a 1-layer audio encoder (16 mel bins),
    over the byte vocabulary and three audio ids."""
    config = Qwen2_5OmniThinkerConfig(
        text_config={**_text_config(num_layers, hidden_size, rope_parameters=QWEN2_5_ROPE), "vocab_size": VOCAB + 3},
        vision_config={**QWEN2_5_TOWER, "out_hidden_size": hidden_size},
        audio_config={**OMNI_AUDIO, "output_dim": hidden_size, "n_window": 4, "max_source_positions": 64},
        image_token_index=IMAGE, video_token_index=VIDEO, audio_token_index=AUDIO, audio_start_token_id=AUDIO_START,
        audio_end_token_id=AUDIO_END, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return _build(Qwen2_5OmniThinkerForConditionalGeneration, config, attn_implementation, seed)


def tiny_qwen3_vl(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Qwen3-VL with a 3-block vision tower (patch 16, temporal patch 2, merge 2) whose every block feeds a
    DeepStack merger, so LLM layers 0-2 add visual features; interleaved M-RoPE sections fit head_dim 16."""
    return _qwen3_vl(Qwen3VLConfig, Qwen3VLForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size)


def tiny_qwen3_vl_moe(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Qwen3-VL-MoE: Qwen3-VL's tower and layout; every decoder MLP is 4 experts, 2 of them routed per token."""
    return _qwen3_vl(
        Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size,
    )


def tiny_qwen3_5(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Qwen3.5: Qwen3-VL's tower (no DeepStack) and layout over a hybrid decoder, gated-delta linear attention in
    even layers and gated softmax attention (q/k norms, rotary on half of head_dim 32) in odd ones."""
    config = Qwen3_5Config(
        text_config=_text_config(
            num_layers, hidden_size, head_dim=32,
            layer_types=["linear_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)],
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
            linear_conv_kernel_dim=4,
            rope_parameters={
                "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [3, 3, 2],
                "mrope_interleaved": True,
            },
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size, patch_size=16,
            temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64,
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return _build(Qwen3_5ForConditionalGeneration, config, attn_implementation, seed)


def tiny_internvl(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, image_size: int = 84, hidden_size: int = 64
):
    """InternVL with its ViT (CLS dropped) and a Qwen2 LLM; image_size 84 gives 6×6 patches, pixel-shuffled to 3×3
    tokens per frame. Its image token is tiny.VIDEO: frames are images to InternVL."""
    config = InternVLConfig(
        text_config=_text_config(num_layers, hidden_size, model_type="qwen2"),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
            patch_size=14,
        ),
        image_token_id=VIDEO, image_seq_length=(image_size // 28) ** 2, downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    return _build(InternVLForConditionalGeneration, config, attn_implementation, seed)


def tiny_smolvlm(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, image_size: int = 84, hidden_size: int = 64
):
    """SmolVLM with its SigLIP tower (no CLS) and a Llama LLM; image_size 84 gives 6×6 patches, pixel-shuffled to
    3×3 tokens per frame. Its image token is tiny.VIDEO: frames are images to SmolVLM."""
    config = SmolVLMConfig(
        text_config=_text_config(num_layers, hidden_size, model_type="llama"),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
            patch_size=14,
        ),
        image_token_id=VIDEO, scale_factor=2,
    )
    return _build(SmolVLMForConditionalGeneration, config, attn_implementation, seed)


def tiny_glm4v(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """GLM-4.1V with a 2-block vision tower (patch 14, temporal patch 2, merge 2, 112-px position table) and a GLM-4
    decoder (M-RoPE on interleaved pairs of half of head_dim 16). Its image token is tiny.VIDEO: inside a video's
    span, GLM's video tokens are image tokens."""
    return _glm4v(Glm4vConfig, Glm4vForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size)


def tiny_glm46v(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """GLM-4.6V: GLM-4.1V's tower and decoder under its own config."""
    return _glm4v(Glm46VConfig, Glm46VForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size)


def tiny_glm4v_moe(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """GLM-4.5V: GLM-4.1V's tower over a mixture-of-experts decoder (rotate-half M-RoPE on half of each head; after
    a dense first layer, 4 routed experts, 2 per token, beside a shared one)."""
    return _glm4v(
        Glm4vMoeConfig, Glm4vMoeForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size,
        n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size, first_k_dense_replace=1,
        n_group=1, topk_group=1,
    )


def tiny_video_llama_3(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """VideoLLaMA3 with a 2-layer SigLIP tower (16-pixel patches, 2-D RoPE; videos merge 2 × 2 patches) over a
    Qwen2 decoder."""
    config = VideoLlama3Config(
        text_config=_text_config(num_layers, hidden_size),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
        ),
        image_token_id=IMAGE, video_token_id=VIDEO,
    )
    return _build(VideoLlama3ForConditionalGeneration, config, attn_implementation, seed)


def tiny_cosmos3_edge(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Cosmos3 Edge with a 2-layer packed SigLIP2 tower (16-px patches, one frame a unit, a 4 × 4 learned position
    grid resized to each frame, 2 × 2 patches merged by the projector) over a Llama decoder with interleaved
    M-RoPE."""
    config = Cosmos3EdgeConfig(
        text_config=_text_config(num_layers, hidden_size, head_dim=16, rope_parameters=QWEN3_ROPE),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
            num_patches=16,
        ),
        projector_hidden_size=2 * hidden_size, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return _build(Cosmos3EdgeForConditionalGeneration, config, attn_implementation, seed)


def tiny_ernie4_5_vl_moe(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64
):
    """ERNIE-4.5-VL with a 2-block Qwen2-VL tower (14-px patches, one frame a step) whose resampler merges 2 × 2
    patches and frame pairs, over a decoder whose experts are split by modality (a dense first layer, then 4 text
    and 4 vision experts, 2 a token, beside a shared one) with interleaved 3-D RoPE."""
    config = Ernie4_5_VLMoeConfig(
        text_config={
            **_text_config(num_layers, hidden_size, head_dim=16), "moe_num_experts": 4, "moe_k": 2,
            "moe_intermediate_size": [hidden_size, hidden_size], "moe_num_shared_experts": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [3, 3, 2]},
        },
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_merge_size=2),
        image_token_id=IMAGE, video_token_id=VIDEO, video_start_token_id=VIDEO_START, video_end_token_id=VIDEO_END,
        image_start_token_id=VISION_START, image_end_token_id=VISION_END,
    )
    return _build(Ernie4_5_VLMoeForConditionalGeneration, config, attn_implementation, seed)


def tiny_cohere_compass(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64,
    sliding_window: int = 16,
):
    """Cohere's North vision model: Qwen3-VL's tiny tower (DeepStack) over a Cohere2 decoder (attention and MLP side
    by side): three sliding-window layers with interleaved M-RoPE, then one global layer without any (NoPE); its
    logits scaled by 0.25."""
    text = _text_config(num_layers, hidden_size, head_dim=16)
    config = CohereCompassConfig(
        text_config={
            **text, "layer_types": (["sliding_attention"] * 3 + ["full_attention"]) * (num_layers // 4)
            + ["sliding_attention"] * (num_layers % 4), "sliding_window": sliding_window, "logit_scale": 0.25,
            "rope_parameters": {"sliding_attention": {**QWEN3_ROPE, "mrope_interleaved": True}, "full_attention": None},
        },
        vision_config={**QWEN3_TOWER, "out_hidden_size": hidden_size},
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return _build(CohereCompassForConditionalGeneration, config, attn_implementation, seed)


def tiny_molmo2(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64, olmo: bool = True,
):
    """Molmo2 with a 2-layer ViT (14-px patches, 84-px frames) whose layers' outputs, side by side, a cross-attention
    pooler reads 2 × 2 patches a token, over a decoder whose visual tokens attend both ways: as
    Molmo2-O is built (`olmo`: each sublayer's output normed, q and k normed across all heads), else as Molmo2-8B
    (pre-norm, q and k normed per head); linear-scaled RoPE in its odd layers, unscaled in the others. Its pooler and
    projector draw their weights wider than the default 0.02: their features (a product of projections) would
    otherwise be ~1e-7, lost beside the placeholder embeddings they are added to."""
    text = _text_config(
        num_layers, hidden_size, head_dim=16, additional_vocab_size=0, qk_norm_type="olmo" if olmo else "qwen3",
        norm_after=olmo, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        rope_scaling_layers=list(range(1, num_layers, 2)),
    )
    config = Molmo2Config(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=2, head_dim=16, image_size=[84, 84]),
        adapter_config=dict(vision_feature_layer=[-1, 0], hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                            head_dim=16, intermediate_size=64, text_hidden_size=hidden_size, initializer_range=0.2),
        image_patch_id=VIDEO, frame_start_token_id=VIDEO_START, frame_end_token_id=VIDEO_END,
        image_start_token_id=VISION_START, image_end_token_id=VISION_END, low_res_image_start_token_id=IMAGE,
    )
    return _build(Molmo2ForConditionalGeneration, config, attn_implementation, seed)


def tiny_muse_glimmer(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64,
    sliding_window: int = 16, tower_layers: tuple[str, ...] = ("window_attention", "full_attention"),
):
    """Muse Glimmer with a packed tower (14-px patches, 2-frame temporal patches; layers attending in windows of 4 × 4
    patches or across a whole patch, `tower_layers`; 2 × 2 patches pixel-shuffled to a token) over a decoder of
    sliding-window RoPE layers and a global NoPE layer: weightless q/k norms (queries scaled), gated attention,
    sandwich norms, normed embeddings and soft-capped logits."""
    text = _text_config(num_layers, hidden_size, head_dim=16)
    config = MuseGlimmerConfig(
        text_config={**text, "sliding_window": sliding_window, "rope_parameters": {"rope_type": "default",
                     "rope_theta": 10000.0}, "final_logit_softcapping": 5.0},
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=len(tower_layers), num_attention_heads=2,
            patch_size=14, pos_emb_height=4, pos_emb_width=4, max_position_embeddings=16, patch_temporal=2,
            merge_size=2, layer_types=list(tower_layers),
            rope_parameters={"rope_type": "axial", "rope_theta": 10000.0},
        ),
        out_hidden_size=128, projector_hidden_size=hidden_size, image_token_id=IMAGE, video_token_id=VIDEO,
    )
    return _build(MuseGlimmerForConditionalGeneration, config, attn_implementation, seed)


def tiny_qwen3_omni_moe_thinker(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64
):
    """Qwen3-Omni's thinker: Qwen3-VL's tiny tower (DeepStack) over a mixture-of-experts decoder (4 experts, 2 a
    token), beside a 1-layer audio encoder (16 mel bins), over the byte vocabulary and three audio ids."""
    config = Qwen3OmniMoeThinkerConfig(
        text_config={
            **_text_config(num_layers, hidden_size, head_dim=16, rope_parameters=QWEN3_ROPE), "vocab_size": VOCAB + 3,
            "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": hidden_size,
        },
        vision_config={**QWEN3_TOWER, "out_hidden_size": hidden_size},
        audio_config={**OMNI_AUDIO, "output_dim": hidden_size, "downsample_hidden_size": 8},
        image_token_id=IMAGE, video_token_id=VIDEO, audio_token_id=AUDIO, audio_start_token_id=AUDIO_START,
        audio_end_token_id=AUDIO_END, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return _build(Qwen3OmniMoeThinkerForConditionalGeneration, config, attn_implementation, seed)


GEMMA4_LARGE = dict(
    hidden_size_per_layer_input=0, num_kv_shared_layers=0, attention_k_eq_v=True, num_global_key_value_heads=1,
    global_head_dim=32, enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32,
)
"""Gemma 4's text config as 26B-A4B and 31B are built (small): no per-layer inputs and no KV sharing; global layers
with their own head size, one KV head and keys as values; a mixture of experts beside each MLP (26B-A4B)."""


def tiny_gemma4(
    num_layers: int = 8, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64, audio: bool = False,
    **text_overrides,
):
    """Gemma 4 as E2B / E4B are built, small: sliding (16-token window) and global layers in turn, per-layer inputs,
    the last two layers sharing the KV of the last unshared layer of their type, vision blocks attending both ways
    in sliding layers; a 2-layer tower (16-px patches, 2 × 2 pooled to one token); the byte vocabulary and three
    audio ids; with `audio`, a one-layer audio tower (32 mel bins, a token per 4 frames: `GEMMA4_AUDIO_BINS`).
    `text_overrides` change the text config (`GEMMA4_LARGE`: as 26B-A4B / 31B are built)."""
    text = dict(
        vocab_size=VOCAB + 3, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=16, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"] * (num_layers // 2), use_bidirectional_attention="vision",
        vocab_size_per_layer_input=VOCAB + 3, hidden_size_per_layer_input=8, num_kv_shared_layers=2, pad_token_id=PAD,
        bos_token_id=None, eos_token_id=None,
    ) | text_overrides
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, patch_size=16, pooling_kernel_size=2, position_embedding_size=64,
    )
    audio_config = dict(  # the subsampling's first channels: 4 × the bins left after its two stride-2 convs
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, subsampling_conv_channels=[GEMMA4_AUDIO_BINS, 4],
        output_proj_dims=32, attention_chunk_size=4, attention_context_left=5,
    ) if audio else None
    config = Gemma4Config(
        text_config=text, vision_config=vision, audio_config=audio_config, image_token_id=IMAGE, video_token_id=VIDEO,
        boi_token_id=VISION_START, eoi_token_id=VISION_END, audio_token_id=AUDIO, boa_token_id=AUDIO_START,
        eoa_token_index=AUDIO_END,  # its ids must be in the vocabulary, with or without an audio tower
    )
    if audio:  # its audio tower has an eager attention only (what a checkpoint load picks for it too)
        attn_implementation = {"text_config": attn_implementation, "vision_config": attn_implementation,
                               "audio_config": "eager"}
    return _build(Gemma4ForConditionalGeneration, config, attn_implementation, seed)


def _glm4v(config_cls, model_cls, num_layers, attn_implementation, seed, hidden_size, **text_extra):
    config = config_cls(
        text_config=_text_config(
            num_layers, hidden_size, **text_extra,
            rope_parameters={
                "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1],
            },
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size, patch_size=14,
            temporal_patch_size=2, spatial_merge_size=2, image_size=112,
        ),
        image_token_id=VIDEO, video_token_id=IMAGE, image_start_token_id=VISION_START, image_end_token_id=VISION_END,
        video_start_token_id=VIDEO_START, video_end_token_id=VIDEO_END,
    )
    return _build(model_cls, config, attn_implementation, seed)


def _qwen3_vl(config_cls, model_cls, num_layers, attn_implementation, seed, hidden_size, **text_extra):
    config = config_cls(
        text_config=_text_config(num_layers, hidden_size, head_dim=16, rope_parameters=QWEN3_ROPE, **text_extra),
        vision_config={**QWEN3_TOWER, "out_hidden_size": hidden_size},
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return _build(model_cls, config, attn_implementation, seed)


def _build(model_cls, config, attn_implementation, seed):
    torch.manual_seed(seed)
    model = model_cls._from_config(config, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None
    return model.eval()


TINY_MODELS = {
    "llava_onevision": tiny_llava_onevision,
    "llava_next_video": tiny_llava_next_video,
    "video_llava": tiny_video_llava,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "qwen3_vl": tiny_qwen3_vl,
    "qwen3_vl_moe": tiny_qwen3_vl_moe,
    "qwen3_5": tiny_qwen3_5,
    "internvl": tiny_internvl,
    "smolvlm": tiny_smolvlm,
    "glm4v": tiny_glm4v,
    "glm4v_moe": tiny_glm4v_moe,
    "glm46v": tiny_glm46v,
    "video_llama_3": tiny_video_llama_3,
    "qwen2_5_omni_thinker": tiny_qwen2_5_omni_thinker,
    "qwen3_omni_moe_thinker": tiny_qwen3_omni_moe_thinker,
    "gemma4": tiny_gemma4,
    "cosmos3_edge": tiny_cosmos3_edge,
    "ernie4_5_vl_moe": tiny_ernie4_5_vl_moe,
    "cohere_compass": tiny_cohere_compass,
    "molmo2": tiny_molmo2,
    "muse_glimmer": tiny_muse_glimmer,
}
