"""Tiny models of the families whose tower encodes a video's frames as a batch of images (or, InternVL and
SmolVLM, as the prompt's images): LLaVA-OneVision, LLaVA-NeXT-Video, Video-LLaVA, InternVL, SmolVLM, Gemma 4,
Molmo2, Nemotron-H Omni (tubelets of two frames); and Gemma 4 Unified, which embeds its frames' patches without a
tower."""

from __future__ import annotations

from transformers import (
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4UnifiedConfig,
    Gemma4UnifiedForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Molmo2Config,
    Molmo2ForConditionalGeneration,
    NemotronH_Omni_Reasoning_V3,
    NemotronH_Omni_Reasoning_V3_Config,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
)

from ..tiny_inputs import (
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
)
from .common import build, text_config, vit_config


def tiny_llava_onevision(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, image_size: int = 84, hidden_size: int = 64
):
    """LLaVA-OneVision with SigLIP and a Qwen2 LLM; image_size 84 gives 3×3 tokens per frame (½ pooling)."""
    config = LlavaOnevisionConfig(
        text_config=text_config(num_layers, hidden_size, model_type="qwen2"),
        vision_config=vit_config("siglip_vision_model", image_size),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=[[image_size, image_size]],
    )
    return build(LlavaOnevisionForConditionalGeneration, config, attn_implementation, seed)


def tiny_llava_next_video(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, image_size: int = 84, hidden_size: int = 64
):
    """LLaVA-NeXT-Video with CLIP (CLS dropped) and a Llama LLM; image_size 84 gives 3×3 tokens per frame (stride-2
    average pooling)."""
    config = LlavaNextVideoConfig(
        text_config=text_config(num_layers, hidden_size, model_type="llama"),
        vision_config=vit_config("clip_vision_model", image_size, projection_dim=32),
        image_token_index=IMAGE, video_token_index=VIDEO, vision_feature_layer=-1,
        vision_feature_select_strategy="default", spatial_pool_mode="average", spatial_pool_stride=2,
        image_grid_pinpoints=[[image_size, image_size]],
    )
    return build(LlavaNextVideoForConditionalGeneration, config, attn_implementation, seed)


def tiny_video_llava(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, image_size: int = 84, hidden_size: int = 64
):
    """Video-LLaVA with a CLIP video tower (CLS kept) and a Llama LLM; image_size 84 gives 1 + 6×6 tokens per
    frame."""
    config = VideoLlavaConfig(
        text_config=text_config(num_layers, hidden_size, model_type="llama"),
        vision_config=vit_config("clip_vision_model", image_size, projection_dim=32),
        image_token_index=IMAGE, video_token_index=VIDEO, vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return build(VideoLlavaForConditionalGeneration, config, attn_implementation, seed)


def tiny_internvl(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, image_size: int = 84, hidden_size: int = 64
):
    """InternVL with its ViT (CLS dropped) and a Qwen2 LLM; image_size 84 gives 6×6 patches, pixel-shuffled to 3×3
    tokens per frame. Its image token is tiny.VIDEO: frames are images to InternVL."""
    config = InternVLConfig(
        text_config=text_config(num_layers, hidden_size, model_type="qwen2"),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
            patch_size=14,
        ),
        image_token_id=VIDEO, image_seq_length=(image_size // 28) ** 2, downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    return build(InternVLForConditionalGeneration, config, attn_implementation, seed)


def tiny_smolvlm(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, image_size: int = 84, hidden_size: int = 64
):
    """SmolVLM with its SigLIP tower (no CLS) and a Llama LLM; image_size 84 gives 6×6 patches, pixel-shuffled to
    3×3 tokens per frame. Its image token is tiny.VIDEO: frames are images to SmolVLM."""
    config = SmolVLMConfig(
        text_config=text_config(num_layers, hidden_size, model_type="llama"),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
            patch_size=14,
        ),
        image_token_id=VIDEO, scale_factor=2,
    )
    return build(SmolVLMForConditionalGeneration, config, attn_implementation, seed)


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
    return build(Gemma4ForConditionalGeneration, config, attn_implementation, seed)


def tiny_gemma4_unified(
    num_layers: int = 8, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64,
    sliding_window: int = 16,
):
    """Gemma 4 Unified, small: `tiny_gemma4`'s decoder (sliding and global layers in turn, the last two sharing KV,
    vision blocks both ways; no per-layer inputs) over its patch embedder - no vision tower: each 32-px patch (2 × 2
    of 16 px) is normed, projected, given its (x, y) position and projected into the LLM."""
    text = dict(
        vocab_size=VOCAB + 3, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"] * (num_layers // 2), use_bidirectional_attention="vision",
        num_kv_shared_layers=2, pad_token_id=PAD, bos_token_id=None, eos_token_id=None,
    )
    vision = dict(patch_size=16, pooling_kernel_size=2, mm_embed_dim=32, mm_posemb_size=16, output_proj_dims=32)
    config = Gemma4UnifiedConfig(
        text_config=text, vision_config=vision, audio_config=None, image_token_id=IMAGE, video_token_id=VIDEO,
        boi_token_id=VISION_START, eoi_token_id=VISION_END, audio_token_id=AUDIO, boa_token_id=AUDIO_START,
        eoa_token_index=AUDIO_END,
    )
    return build(Gemma4UnifiedForConditionalGeneration, config, attn_implementation, seed)


def tiny_molmo2(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64, olmo: bool = True,
):
    """Molmo2 with a 2-layer ViT (14-px patches, 84-px frames) whose layers' outputs, side by side, a cross-attention
    pooler reads 2 × 2 patches a token, over a decoder whose visual tokens attend both ways: as
    Molmo2-O is built (`olmo`: each sublayer's output normed, q and k normed across all heads), else as Molmo2-8B
    (pre-norm, q and k normed per head); linear-scaled RoPE in its odd layers, unscaled in the others. Its pooler and
    projector draw their weights wider than the default 0.02: their features (a product of projections) would
    otherwise be ~1e-7, lost beside the placeholder embeddings they are added to."""
    text = text_config(
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
    return build(Molmo2ForConditionalGeneration, config, attn_implementation, seed)


NEMOTRON_H_BLOCKS = ("linear_attention", "moe", "full_attention", "mlp", "linear_attention", "full_attention")


def tiny_nemotron_h_omni(num_layers: int = 6, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Nemotron-H Omni with a 2-layer RADIO tower (16-px patches, two class and two register tokens ahead of each
    tubelet of two frames), 2 × 2 patches pixel-shuffled into a token, over a Nemotron-H decoder whose blocks repeat
    Mamba-2, MoE, attention (no positional encoding), MLP, Mamba-2, attention; no audio tower."""
    config = NemotronH_Omni_Reasoning_V3_Config(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=96,
                           num_cls_tokens=2, num_registers=2, max_img_size=256, video_temporal_patch_size=2),
        text_config=text_config(
            num_layers, hidden_size, model_type="nemotron_h", head_dim=16,
            layers_block_type=[NEMOTRON_H_BLOCKS[i % 6] for i in range(num_layers)], mamba_num_heads=4,
            mamba_head_dim=16, ssm_state_size=16, n_groups=1, n_routed_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, moe_shared_expert_intermediate_size=32,
        ),
        vision_hidden_size=32, projector_hidden_size=hidden_size, image_token_id=VIDEO, video_token_id=IMAGE,
        audio_config=None,
    )
    return build(NemotronH_Omni_Reasoning_V3, config, attn_implementation, seed)
