"""Tiny models of the families whose tower packs a video's frame units into one sequence (Qwen-VL's kind) but the
Qwen ones (`qwen`): HyperCLOVA X SEED Vision, GLM-4.1V / 4.5V / 4.6V, VideoLLaMA3, Cosmos3 Edge, ERNIE-4.5-VL,
Cohere's North, Muse Glimmer and Spark, Ovis2.5, LLaVA-OneVision-1.5, EXAONE 4.5, LFM3-VL, MiniCPM-V 4.6 / 4.7,
and MiniCPM-OCR (the MLA decoders' families: `latent`)."""

from __future__ import annotations

import transformers
from transformers import (
    CohereCompassConfig,
    CohereCompassForConditionalGeneration,
    Cosmos3EdgeConfig,
    Cosmos3EdgeForConditionalGeneration,
    Ernie4_5_VLMoeConfig,
    Ernie4_5_VLMoeForConditionalGeneration,
    Exaone4_5_Config,
    Exaone4_5_ForConditionalGeneration,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vMoeConfig,
    Glm4vMoeForConditionalGeneration,
    Glm46VConfig,
    Glm46VForConditionalGeneration,
    HyperCLOVAXVisionV2Config,
    HyperCLOVAXVisionV2ForConditionalGeneration,
    MiniCPMOcrConfig,
    MiniCPMOcrForConditionalGeneration,
    MiniCPMV4_6Config,
    MiniCPMV4_6ForConditionalGeneration,
    MiniCPMV4_7Config,
    MiniCPMV4_7ForConditionalGeneration,
    MuseGlimmerConfig,
    MuseGlimmerForConditionalGeneration,
    MuseSparkConfig,
    MuseSparkForConditionalGeneration,
    VideoLlama3Config,
    VideoLlama3ForConditionalGeneration,
)

from ..tiny_inputs import (
    IMAGE,
    VIDEO,
    VIDEO_END,
    VIDEO_START,
    VISION_END,
    VISION_START,
)
from .common import build, text_config
from .qwen import QWEN2_5_TOWER, QWEN3_ROPE, QWEN3_TOWER, qwen3_5_text


def tiny_hyperclovax_vision_v2(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64
):
    """HyperCLOVA X SEED Vision: Qwen2.5-VL's tiny tower (merger out 48 wide), a linear projector and a Granite-style
    decoder with 1-D positions whose MuP multipliers are all off 1 (attention 0.2 in place of 1/√d, embeddings × 2,
    residual branches × 0.5, logits × 0.5)."""
    config = HyperCLOVAXVisionV2Config(
        text_config={
            **text_config(num_layers, hidden_size), "model_type": "hyperclovax", "attention_multiplier": 0.2,
            "embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 0.5,
        },
        vision_config={**QWEN2_5_TOWER, "out_hidden_size": 48, "model_type": "qwen2_5_vl_vision"},
        image_token_id=IMAGE, video_token_id=VIDEO,
    )
    return build(HyperCLOVAXVisionV2ForConditionalGeneration, config, attn_implementation, seed)


def tiny_exaone4_5(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64,
    sliding_window: int = 16,
):
    """EXAONE 4.5: Qwen2.5-VL's tiny tower with 4 query heads sharing 2 key/value heads and axial 2-D RoPE, over an
    EXAONE 4 decoder (outputs normed, not inputs; q/k norms): three sliding-window RoPE layers, then a global one
    without RoPE (NoPE)."""
    config = Exaone4_5_Config(
        text_config={
            **text_config(num_layers, hidden_size, head_dim=16), "model_type": "exaone4",
            "sliding_window": sliding_window, "sliding_window_pattern": 4,
            "layer_types": [("full_attention" if (i + 1) % 4 == 0 else "sliding_attention") for i in range(num_layers)],
        },
        vision_config={
            **QWEN2_5_TOWER, "num_heads": 4, "num_key_value_heads": 2, "out_hidden_size": hidden_size,
            "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0},
        },
        image_token_id=IMAGE, video_token_id=VIDEO,
    )
    return build(Exaone4_5_ForConditionalGeneration, config, attn_implementation, seed)


def tiny_lfm3_vl(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64,
    sliding_window: int = 16,
):
    """LFM3-VL: a packed tower of gated 2-D convolution and grouped-query attention layers (conv, attention, conv,
    attention; 16-px patches, temporal patch 2, 4 query heads on 2 key/value heads, q/k norms, axial RoPE), its 2 × 2
    blocks merged by the projector, over an LFM3 decoder repeating conv, sliding-window attention (RoPE), conv,
    global attention (proportional RoPE on half of each head, as its default config), with gated attention outputs
    and sandwich norms."""
    pattern = ["conv", "sliding_attention", "conv", "full_attention"]
    config = transformers.Lfm3VlConfig(
        text_config={
            **text_config(num_layers, hidden_size, head_dim=16), "model_type": "lfm3",
            "layer_types": [pattern[i % 4] for i in range(num_layers)], "sliding_window": sliding_window,
            "conv_L_cache": 3, "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "proportional", "rope_theta": 100000.0, "partial_rotary_factor": 0.5},
            },
        },
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
            layer_types=["conv", "full_attention", "conv", "full_attention"],
        ),
        projector_hidden_size=hidden_size, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return build(transformers.Lfm3VlForConditionalGeneration, config, attn_implementation, seed)


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
        text_config=text_config(num_layers, hidden_size),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
        ),
        image_token_id=IMAGE, video_token_id=VIDEO,
    )
    return build(VideoLlama3ForConditionalGeneration, config, attn_implementation, seed)


def tiny_cosmos3_edge(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Cosmos3 Edge with a 2-layer packed SigLIP2 tower (16-px patches, one frame a unit, a 4 × 4 learned position
    grid resized to each frame, 2 × 2 patches merged by the projector) over a Llama decoder with interleaved
    M-RoPE."""
    config = Cosmos3EdgeConfig(
        text_config=text_config(num_layers, hidden_size, head_dim=16, rope_parameters=QWEN3_ROPE),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
            num_patches=16,
        ),
        projector_hidden_size=2 * hidden_size, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return build(Cosmos3EdgeForConditionalGeneration, config, attn_implementation, seed)


def tiny_ernie4_5_vl_moe(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64
):
    """ERNIE-4.5-VL with a 2-block Qwen2-VL tower (14-px patches, one frame a step) whose resampler merges 2 × 2
    patches and frame pairs, over a decoder whose experts are split by modality (a dense first layer, then 4 text
    and 4 vision experts, 2 a token, beside a shared one) with interleaved 3-D RoPE."""
    config = Ernie4_5_VLMoeConfig(
        text_config={
            **text_config(num_layers, hidden_size, head_dim=16), "moe_num_experts": 4, "moe_k": 2,
            "moe_intermediate_size": [hidden_size, hidden_size], "moe_num_shared_experts": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [3, 3, 2]},
        },
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_merge_size=2),
        image_token_id=IMAGE, video_token_id=VIDEO, video_start_token_id=VIDEO_START, video_end_token_id=VIDEO_END,
        image_start_token_id=VISION_START, image_end_token_id=VISION_END,
    )
    return build(Ernie4_5_VLMoeForConditionalGeneration, config, attn_implementation, seed)


def tiny_cohere_compass(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64,
    sliding_window: int = 16,
):
    """Cohere's North vision model: Qwen3-VL's tiny tower (DeepStack) over a Cohere2 decoder (attention and MLP side
    by side): three sliding-window layers with interleaved M-RoPE, then one global layer without any (NoPE); its
    logits scaled by 0.25."""
    text = text_config(num_layers, hidden_size, head_dim=16)
    config = CohereCompassConfig(
        text_config={
            **text, "layer_types": (["sliding_attention"] * 3 + ["full_attention"]) * (num_layers // 4)
            + ["sliding_attention"] * (num_layers % 4), "sliding_window": sliding_window, "logit_scale": 0.25,
            "rope_parameters": {"sliding_attention": {**QWEN3_ROPE, "mrope_interleaved": True}, "full_attention": None},
        },
        vision_config={**QWEN3_TOWER, "out_hidden_size": hidden_size},
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return build(CohereCompassForConditionalGeneration, config, attn_implementation, seed)


def tiny_muse_glimmer(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64,
    sliding_window: int = 16, tower_layers: tuple[str, ...] = ("window_attention", "full_attention"),
):
    """Muse Glimmer with a packed tower (14-px patches, 2-frame temporal patches; layers attending in windows of 4 × 4
    patches or across a whole patch, `tower_layers`; 2 × 2 patches pixel-shuffled to a token) over a decoder of
    sliding-window RoPE layers and a global NoPE layer: weightless q/k norms (queries scaled), gated attention,
    sandwich norms, normed embeddings and soft-capped logits."""
    return _muse(
        MuseGlimmerConfig, MuseGlimmerForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size,
        sliding_window, tower_layers,
    )


def tiny_muse_spark(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64,
    sliding_window: int = 16, tower_layers: tuple[str, ...] = ("window_attention", "full_attention"),
):
    """Muse Spark: Muse Glimmer's tower and decoder with gated residuals, normed attention outputs and, after a
    dense first layer, 4 experts (2 a token) in every MLP, beside a 2-layer audio encoder."""
    return _muse(
        MuseSparkConfig, MuseSparkForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size,
        sliding_window, tower_layers,
        text_extra=dict(num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, moe_hidden_size=32,
                        mlp_layer_types=["dense"] + ["sparse"] * (num_layers - 1)),
        audio_config=dict(patch_sizes=(4, 4), hidden_sizes=(16, 32), depths=(1, 1), num_hidden_layers=2,
                          out_hidden_size=hidden_size),
    )


def _muse(
    config_cls, model_cls, num_layers, attn_implementation, seed, hidden_size, sliding_window, tower_layers,
    text_extra=None, **extra,
):
    text = text_config(num_layers, hidden_size, head_dim=16)
    config = config_cls(
        text_config={**text, "sliding_window": sliding_window, "rope_parameters": {"rope_type": "default",
                     "rope_theta": 10000.0}, "final_logit_softcapping": 5.0, **(text_extra or {})},
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=len(tower_layers), num_attention_heads=2,
            patch_size=14, pos_emb_height=4, pos_emb_width=4, max_position_embeddings=16, patch_temporal=2,
            merge_size=2, layer_types=list(tower_layers),
            rope_parameters={"rope_type": "axial", "rope_theta": 10000.0},
        ),
        out_hidden_size=128, projector_hidden_size=hidden_size, image_token_id=IMAGE, video_token_id=VIDEO, **extra,
    )
    return build(model_cls, config, attn_implementation, seed)


def tiny_ovis2_5(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64,
    tower_layers: tuple[str, ...] = ("window_attention", "full_attention"),
):
    """Ovis2.5 (transformers 5.25+) with a packed SigLIP2 tower (16-px patches, one frame a unit, a 4 × 4 learned
    position grid; layers attending in windows of 2 × 2 blocks of 2 × 2 patches or across the frame, `tower_layers`)
    whose visual tokenizer maps each block to a 60-word visual vocabulary (4 more: indicators), over a Qwen3
    decoder. Its video start and end are the byte vocabulary's vision start and end."""
    config = transformers.Ovis2_5Config(
        text_config={**text_config(num_layers, hidden_size, head_dim=16), "model_type": "qwen3"},
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=len(tower_layers), num_attention_heads=2,
            patch_size=16, image_size=64, window_size=64, vocab_size=64, layer_types=list(tower_layers),
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, image_start_token_id=VIDEO_START, image_end_token_id=VIDEO_END,
        video_start_token_id=VISION_START, video_end_token_id=VISION_END,
    )
    return build(transformers.Ovis2_5ForConditionalGeneration, config, attn_implementation, seed)


def tiny_llava_onevision1_5(
    num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64
):
    """LLaVA-OneVision-1.5 (transformers 5.25+) with a 2-block packed RICE-ViT tower (14-px patches, one frame a
    unit, merge 2, axial 2-D RoPE, a class token prepended to each frame's rows inside the tower and dropped before
    its patch merger) over a Qwen3 decoder with 1-D positions."""
    config = transformers.LlavaOnevision15Config(
        text_config={**text_config(num_layers, hidden_size, head_dim=16), "model_type": "qwen3"},
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
            out_hidden_size=hidden_size, rope_parameters={"rope_type": "axial", "rope_theta": 10000.0},
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return build(transformers.LlavaOnevision15ForConditionalGeneration, config, attn_implementation, seed)


def _glm4v(config_cls, model_cls, num_layers, attn_implementation, seed, hidden_size, **text_extra):
    config = config_cls(
        text_config=text_config(
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
    return build(model_cls, config, attn_implementation, seed)


def tiny_minicpmv4_6(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """MiniCPM-V 4.6: a 3-layer SigLIP tower (14-px patches, a 16 × 16 position table) whose window merger folds 2 × 2
    rows after its second layer, a 2 × 2 MLP merger, over Qwen3.5's tiny hybrid decoder with 1-D positions."""
    return _minicpm_v(
        MiniCPMV4_6Config, MiniCPMV4_6ForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size
    )


def tiny_minicpmv4_7(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """MiniCPM-V 4.7: MiniCPM-V 4.6's tiny tower and decoder, with canvas M-RoPE (3-D positions from the prompt's
    markers: tiny.VISION_START / VISION_END for `<image>` / `</image>`, VIDEO_START / VIDEO_END for `<slice>` /
    `</slice>`, the newline byte)."""
    return _minicpm_v(
        MiniCPMV4_7Config, MiniCPMV4_7ForConditionalGeneration, num_layers, attn_implementation, seed, hidden_size,
        image_start_id=VISION_START, image_end_id=VISION_END, slice_start_id=VIDEO_START, slice_end_id=VIDEO_END,
        newline_id=ord("\n"),
    )


def tiny_minicpm_ocr(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """MiniCPM-OCR: MiniCPM-V 4.6's modules under another name, built alike (its own defaults: the "4x" mode, a tied
    head)."""
    return _minicpm_v(MiniCPMOcrConfig, MiniCPMOcrForConditionalGeneration, num_layers, attn_implementation, seed,
                      hidden_size, downsample_mode="16x", tie_word_embeddings=False)


def _minicpm_v(config_cls, model_cls, num_layers, attn_implementation, seed, hidden_size, **config_extra):
    config = config_cls(
        text_config={"model_type": "qwen3_5_text", **qwen3_5_text(num_layers, hidden_size)},
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=224,
            patch_size=14,
        ),
        insert_layer_id=1, image_token_id=IMAGE, video_token_id=VIDEO,
        **config_extra,
    )
    return build(model_cls, config, attn_implementation, seed)
