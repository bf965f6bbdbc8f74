"""Random-weight Video-LLMs at their real shapes (7B-10B class, and a few larger or smaller), and one prompt of a
real clip's frames for each, laid out as its processor would: what the latency benchmark and the GPU scripts
measure. `named_model` also loads a checkpoint from a path, and builds two small models for the CPU."""

from __future__ import annotations

import torch
import transformers
from transformers import (
    AutoModelForImageTextToText,
    Cosmos3EdgeConfig,
    Cosmos3EdgeForConditionalGeneration,
    Ernie4_5_VLMoeConfig,
    Ernie4_5_VLMoeForConditionalGeneration,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4UnifiedConfig,
    Gemma4UnifiedForConditionalGeneration,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
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
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    VideoLlama3Config,
    VideoLlama3ForConditionalGeneration,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
)

from tokcompress.adapters import adapter_for
from tokcompress.tiny import frame_batch_video
from tokcompress.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    gemma4_pixels,
    molmo2_pixels,
    qwen_vl_pixels,
    resize_normalize,
)

QWEN2_7B_TEXT = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    vocab_size=152064, max_position_embeddings=32768, rms_norm_eps=1e-6,
)
VICUNA_7B_TEXT = dict(
    model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
)
CLIP_L = dict(
    model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
    num_attention_heads=16, patch_size=14, projection_dim=768,
)
QWEN2_5_VL_ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
QWEN2_5_VL_TOWER = dict(  # Qwen2.5-VL-7B's (and Qwen2.5-Omni-7B's) windowed tower
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
    temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
)
SIGLIP_SO400M = dict(
    model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
    num_attention_heads=16, image_size=384, patch_size=14,
)


QWEN3_VL_8B_TEXT = dict(
    hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
    head_dim=128, vocab_size=151936, max_position_embeddings=262144, rms_norm_eps=1e-6,
    rope_parameters={
        "rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True
    },
)
QWEN3_VISION = dict(  # Qwen3-VL's and Qwen3.5's tower (SigLIP-2 shape, 16 px patches), into a 4096-wide LLM
    depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=16,
    temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=2304,
)
SPECIAL_TOKENS = ("video_token_id", "image_token_id", "vision_start_token_id", "vision_end_token_id",
                  "video_token_index", "image_token_index", "image_start_token_id", "image_end_token_id",
                  "video_start_token_id", "video_end_token_id")  # config ids the random prompt text must avoid
MODEL_NAMES = (
    "llava-onevision-7b", "llava-next-video-7b", "video-llava-7b", "qwen2.5-vl-7b", "qwen3-vl-8b", "qwen3.5-9b",
    "internvl3-8b", "glm-4.1v-9b", "videollama3-7b", "qwen2.5-omni-7b", "gemma-4-e4b", "cosmos3-edge",
    "ernie-4.5-vl-28b-a3b", "molmo2-8b", "muse-glimmer-30b", "ovis2.5-9b", "gemma-4-unified", "qwen3.5-35b-a3b",
    "llava-onevision1.5-8b", "lfm3-vl-2b", "small", "small-qwen2.5-vl",
)
INTERNVL_IMAGE_START, INTERNVL_IMAGE_END = 151665, 151666  # <img>, </img>


def named_model(name: str, dtype: torch.dtype, device: str):
    """Random-weight models at real shapes (MODEL_NAMES) or a small one for the CPU."""
    if name == "llava-onevision-7b":
        config = LlavaOnevisionConfig(
            text_config=dict(model_type="qwen2", **QWEN2_7B_TEXT), vision_config=SIGLIP_SO400M,
            image_token_id=151646, video_token_id=151647, vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
        cls = LlavaOnevisionForConditionalGeneration
    elif name == "llava-next-video-7b":
        config = LlavaNextVideoConfig(
            text_config=VICUNA_7B_TEXT, vision_config={**CLIP_L, "image_size": 336}, image_token_index=32001,
            video_token_index=32000,
            vision_feature_layer=-2, vision_feature_select_strategy="default", spatial_pool_stride=2,
        )
        cls = LlavaNextVideoForConditionalGeneration
    elif name == "video-llava-7b":  # LanguageBind's CLIP-L/14 video tower at 224 px, CLS kept: 257 tokens a frame
        config = VideoLlavaConfig(
            text_config=VICUNA_7B_TEXT, vision_config={**CLIP_L, "image_size": 224}, image_token_index=32000,
            video_token_index=32001, vision_feature_layer=-2, vision_feature_select_strategy="default",
        )
        cls = VideoLlavaForConditionalGeneration
    elif name == "qwen2.5-vl-7b":
        config = Qwen2_5_VLConfig(
            text_config=dict(**QWEN2_7B_TEXT, rope_parameters=QWEN2_5_VL_ROPE),
            vision_config=QWEN2_5_VL_TOWER,
            image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        )
        cls = Qwen2_5_VLForConditionalGeneration
    elif name == "qwen2.5-omni-7b":  # the thinker: Qwen2.5-VL-7B's tower and decoder beside Whisper-large's encoder
        config = Qwen2_5OmniThinkerConfig(
            text_config=dict(**QWEN2_7B_TEXT, rope_parameters=QWEN2_5_VL_ROPE),
            vision_config=QWEN2_5_VL_TOWER, image_token_index=151655, video_token_index=151656,
            vision_start_token_id=151652, vision_end_token_id=151653,
        )
        cls = Qwen2_5OmniThinkerForConditionalGeneration
    elif name == "qwen3-vl-8b":
        config = Qwen3VLConfig(
            text_config=QWEN3_VL_8B_TEXT, vision_config={**QWEN3_VISION, "deepstack_visual_indexes": [8, 16, 24]},
            image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        )
        cls = Qwen3VLForConditionalGeneration
    elif name == "qwen3.5-9b":  # transformers' Qwen3.5 defaults: 32 layers, every 4th softmax, the rest linear
        config = Qwen3_5Config(
            vision_config=QWEN3_VISION, text_config={},
            image_token_id=248056, video_token_id=248057, vision_start_token_id=248053, vision_end_token_id=248054,
        )
        cls = Qwen3_5ForConditionalGeneration
    elif name == "qwen3.5-35b-a3b":  # transformers' Qwen3.5-MoE defaults: 40 layers of 2048, 256 experts (8 a token)
        config = Qwen3_5MoeConfig(
            vision_config={**QWEN3_VISION, "out_hidden_size": 2048}, text_config={},
            image_token_id=248056, video_token_id=248057, vision_start_token_id=248053, vision_end_token_id=248054,
        )
        cls = Qwen3_5MoeForConditionalGeneration
    elif name == "internvl3-8b":  # InternViT-300M at 448 px, pixel-shuffled to 16×16 tokens a frame; Qwen2.5-7B
        config = InternVLConfig(
            text_config=dict(model_type="qwen2", **{**QWEN2_7B_TEXT, "vocab_size": 151674}),
            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=448, patch_size=14),
            image_token_id=151667, image_seq_length=256, downsample_ratio=0.5, vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
        cls = InternVLForConditionalGeneration
    elif name == "glm-4.1v-9b":  # transformers' GLM-4.1V defaults: 40 layers of 4096 (2 KV heads), a 24-block tower
        config = Glm4vConfig(text_config={"rope_parameters": {
            "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [8, 12, 12],
        }})
        cls = Glm4vForConditionalGeneration
    elif name == "videollama3-7b":  # SigLIP-so400m/14 (26 layers, as LLaVA-OV's) with 2-D RoPE over Qwen2.5-7B
        config = VideoLlama3Config(
            text_config=dict(model_type="qwen2", **QWEN2_7B_TEXT),
            vision_config={k: v for k, v in SIGLIP_SO400M.items() if k not in ("model_type", "image_size")},
            image_token_id=151655, video_token_id=151656,  # <|image_pad|>, <|video_pad|>
        )
        cls = VideoLlama3ForConditionalGeneration
    elif name == "gemma-4-e4b":  # 42 layers of 2560 (5 sliding : 1 global), per-layer inputs, the last 18 share KV
        config = Gemma4Config(
            text_config=dict(
                hidden_size=2560, intermediate_size=10240, num_hidden_layers=42, num_attention_heads=8,
                num_key_value_heads=2, head_dim=256, global_head_dim=512, hidden_size_per_layer_input=256,
                num_kv_shared_layers=18, sliding_window=512, final_logit_softcapping=30.0,
                layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 7,
            ),
            vision_config={},  # transformers' defaults: 16 layers of 768, 16 px patches, 3 × 3 pooled to a token
            audio_config=None,
        )
        cls = Gemma4ForConditionalGeneration
    elif name == "ernie-4.5-vl-28b-a3b":  # transformers' defaults: 28 layers of 2560, 64 text + 64 vision experts
        config = Ernie4_5_VLMoeConfig()
        cls = Ernie4_5_VLMoeForConditionalGeneration
    elif name == "cosmos3-edge":  # transformers' defaults: SigLIP2 (27 layers of 1152, 16 px) over a Llama of 28 x 2048
        config = Cosmos3EdgeConfig()
        cls = Cosmos3EdgeForConditionalGeneration
    elif name == "molmo2-8b":  # transformers' defaults: a 25-layer SigLIP (378 px) read at layers 24 and 18, Qwen3-8B
        config = Molmo2Config(adapter_config={"text_hidden_size": 4096})
        cls = Molmo2ForConditionalGeneration
    elif name == "gemma-4-unified":  # transformers' defaults: no vision tower, 30 layers of 2304 (5 sliding : 1 global)
        config = Gemma4UnifiedConfig()
        cls = Gemma4UnifiedForConditionalGeneration
    elif name == "muse-glimmer-30b":  # transformers' defaults: a 50-layer tower, 52 decoder layers of 6656 (29.8B)
        config = MuseGlimmerConfig()
        cls = MuseGlimmerForConditionalGeneration
    elif name == "ovis2.5-9b":  # transformers 5.25+: SigLIP2-so400m (27 layers of 1152, 16 px) over Qwen3-8B
        config = transformers.Ovis2_5Config(text_config=dict(
            model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, vocab_size=151936,
        ))
        cls = transformers.Ovis2_5ForConditionalGeneration
    elif name == "lfm3-vl-2b":  # transformers' defaults: a 14-layer conv/attention tower, 24 hybrid layers of 2048
        config = transformers.Lfm3VlConfig()
        cls = transformers.Lfm3VlForConditionalGeneration
    elif name == "llava-onevision1.5-8b":  # transformers 5.25+: RICE-ViT-L (24 layers of 1024) over Qwen3-8B
        config = transformers.LlavaOnevision15Config(text_config=dict(
            model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, vocab_size=151936,
        ))
        cls = transformers.LlavaOnevision15ForConditionalGeneration
    elif name == "small":
        config = LlavaOnevisionConfig(
            text_config=dict(model_type="qwen2", hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                             num_attention_heads=8, num_key_value_heads=2, vocab_size=4096),
            vision_config=dict(model_type="siglip_vision_model", hidden_size=192, intermediate_size=384,
                               num_hidden_layers=2, num_attention_heads=3, image_size=196, patch_size=14),
            image_token_id=4000, video_token_id=4001, vision_feature_layer=-1, vision_feature_select_strategy="full",
        )
        cls = LlavaOnevisionForConditionalGeneration
    elif name == "small-qwen2.5-vl":  # Qwen2.5-VL's packed, windowed tower (8 layers, 2 of full attention)
        config = Qwen2_5_VLConfig(
            text_config=dict(model_type="qwen2_5_vl_text", hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                             num_attention_heads=8, num_key_value_heads=2, vocab_size=4096,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}),
            vision_config=dict(depth=8, hidden_size=192, intermediate_size=384, num_heads=3, out_hidden_size=512,
                               patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
                               fullatt_block_indexes=[3, 7]),
            image_token_id=4000, video_token_id=4001, vision_start_token_id=4002, vision_end_token_id=4003,
        )
        cls = Qwen2_5_VLForConditionalGeneration
    else:
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, device_map=device)
        return model.eval()
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def video_inputs(model, frames: torch.Tensor, prompt_tokens: int = 64) -> dict:
    """One prompt: random text ids around the video placeholders, pixels from the real clip."""
    config = model.config
    special = {getattr(config, name, None) for name in SPECIAL_TOKENS}
    ordinary = torch.tensor([i for i in range(10, min(1000, config.get_text_config().vocab_size)) if i not in special])
    text = ordinary[torch.randint(len(ordinary), (prompt_tokens,), generator=torch.Generator().manual_seed(0))]
    if config.model_type in (
        "qwen2_5_vl", "qwen3_vl", "qwen3_5", "qwen3_5_moe", "glm4v", "qwen2_5_omni_thinker", "cosmos3_edge", "lfm3_vl",
    ):
        patch, cosmos = config.vision_config.patch_size, config.model_type == "cosmos3_edge"  # one frame a unit
        pixels, grid = qwen_vl_pixels(  # 448 px / 512 px
            frames, 32 * patch, 32 * patch, patch_size=patch, temporal_patch_size=1 if cosmos else 2,
            channels_last=cosmos,
        )
        t, h, w = grid[0].tolist()
        if config.model_type == "glm4v":  # video start, per temporal patch its image span and second, video end
            span = [config.image_start_token_id] + [config.image_token_id] * (h * w // 4) + [config.image_end_token_id]
            units = [torch.cat([torch.tensor(span), text[:1]]) for _ in range(t)]
            start, end = torch.tensor([config.video_start_token_id]), torch.tensor([config.video_end_token_id])
            video = torch.cat([start, *units, end])
        elif config.model_type != "qwen2_5_vl":  # each temporal patch: `<t seconds>` (6 tokens) + its own span
            span = torch.tensor([config.vision_start_token_id, *[config.video_token_id] * (h * w // 4),
                                 config.vision_end_token_id])
            video = torch.cat([torch.cat([text[:6], span]) for _ in range(t)])
        else:
            video = torch.tensor([config.vision_start_token_id, *[config.video_token_id] * (t * h * w // 4),
                                  config.vision_end_token_id])
        ids = torch.cat([text[:8], video, text[8:]])
        placeholder = adapter_for(model).video_token_id
        mask, types = torch.ones(1, len(ids), dtype=torch.long), (ids == placeholder).long()[None] * 2
        inputs = dict(input_ids=ids[None], attention_mask=mask, pixel_values_videos=pixels, video_grid_thw=grid)
        if config.model_type == "qwen2_5_omni_thinker":  # no token types; 2 frames a unit at 2 fps
            return dict(inputs, video_second_per_grid=torch.tensor([1.0]))
        if config.model_type == "lfm3_vl":  # 1-D positions: no token types
            return inputs
        return dict(inputs, mm_token_type_ids=types)
    if config.model_type == "ovis2_5":  # video start + every frame's 14×14 tokens (448 px, 16-px patches) + video end
        pixels, grid = qwen_vl_pixels(frames, 448, 448, patch_size=16, temporal_patch_size=1, siglip_norm=True)
        t, h, w = grid[0].tolist()
        video = [config.video_start_token_id, *[config.video_token_id] * (t * h * w // 4), config.video_end_token_id]
        ids = torch.cat([text[:8], torch.tensor(video), text[8:]])
        return dict(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    pixel_values_videos=pixels, video_grid_thw=grid)
    if config.model_type == "llava_onevision1_5":  # vision start + every frame's 16×16 tokens (448 px) + vision end
        pixels, grid = qwen_vl_pixels(frames, 448, 448, patch_size=14, temporal_patch_size=1)
        t, h, w = grid[0].tolist()
        video = [config.vision_start_token_id, *[config.video_token_id] * (t * h * w // 4), config.vision_end_token_id]
        ids = torch.cat([text[:8], torch.tensor(video), text[8:]])
        return dict(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    pixel_values_videos=pixels, video_grid_thw=grid)
    if config.model_type == "ernie4_5_vl_moe":  # video start + frame pairs of 16×16 tokens at 448 px + video end
        pixels, grid = qwen_vl_pixels(frames, 448, 448, patch_size=14, temporal_patch_size=1)
        t, h, w = grid[0].tolist()
        video = [config.video_start_token_id, *[config.video_token_id] * (t * h * w // 8), config.video_end_token_id]
        ids = torch.cat([text[:8], torch.tensor(video), text[8:]])
        span = (config.video_start_token_id, config.video_token_id, config.video_end_token_id)
        experts = torch.isin(ids, torch.tensor(span))  # the vision experts' tokens
        return dict(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    pixel_values_videos=pixels, video_grid_thw=grid,
                    mm_token_type_ids=(ids == config.video_token_id).long()[None] * 2,
                    moe_mm_token_type_ids=experts.long()[None] * 2)
    if config.model_type == "video_llama_3":  # each frame `Time t.ts:` (6 tokens) + its 16×16 tokens at 448 px
        pixels, grid = qwen_vl_pixels(frames, 448, 448, patch_size=14, temporal_patch_size=1)
        t, h, w = grid[0].tolist()
        frame = torch.full((h * w // 4,), config.video_token_id)
        ids = torch.cat([text[:8], *(torch.cat([text[:6], frame]) for _ in range(t)), text[8:]])
        return dict(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    pixel_values_videos=pixels, video_grid_thw=grid, video_merge_sizes=torch.tensor([2]))
    if config.model_type in ("gemma4", "gemma4_unified"):  # each frame `MM:SS <boi>` (5 tokens) + 8×8 tokens + `<eoi>`
        # 384 px, its processor's 70-token budget: 16-px patches 3 × 3 pooled, or (Unified) 48-px patches, one a token
        unified = config.model_type == "gemma4_unified"
        pixels, positions = gemma4_pixels(frames, 384, 384, *((70, 48) if unified else (630,)))
        frame = torch.tensor([config.boi_token_id, *[config.video_token_id] * 64, config.eoi_token_id])
        ids = torch.cat([text[:8], *(torch.cat([text[:5], frame]) for _ in range(len(frames))), text[8:]])
        types = (ids == config.video_token_id).long()[None] * 2
        return dict(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    pixel_values_videos=pixels, video_position_ids=positions,
                    num_frames_per_video=torch.tensor([len(frames)]), mm_token_type_ids=types)
    if config.model_type == "muse_glimmer":  # per 2-frame patch `Time: t.ts` (6 tokens) + 12×12 tokens at 336 px
        pixels, grid = qwen_vl_pixels(frames, 336, 336, raster=True)
        t, h, w = grid[0].tolist()
        units = [torch.cat([text[:6], torch.full((h * w // 4,), config.video_token_id)]) for _ in range(t)]
        ids = torch.cat([text[:8], *units, text[8:]])
        return dict(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    pixel_values_videos=pixels, video_grid_thw=grid)
    if config.model_type == "molmo2":  # each frame `t.t ` (4 tokens) + start, 9×9 tokens (378 px, 3×3 pooled), end
        pixels, windows = molmo2_pixels(frames, 378, pooling=3)
        frame = torch.tensor([config.frame_start_token_id, *[config.image_patch_id] * 81, config.frame_end_token_id])
        ids = torch.cat([text[:8], *(torch.cat([text[:4], frame]) for _ in range(len(frames))), text[8:]])
        return dict(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    pixel_values_videos=pixels, video_token_pooling=windows,
                    video_grids=torch.tensor([[len(frames), 9, 9]]),
                    mm_token_type_ids=torch.isin(ids, frame).long()[None])
    if config.model_type == "internvl":  # frames as images: `FrameN: <img>` (4 tokens) + 256 tokens + `</img>`
        pixels = resize_normalize(frames, 448, 448, IMAGENET_MEAN, IMAGENET_STD)
        frame = [INTERNVL_IMAGE_START] + [config.image_token_id] * config.image_seq_length + [INTERNVL_IMAGE_END]
        video = torch.cat([torch.cat([text[:4], torch.tensor(frame)]) for _ in range(len(frames))])
        ids = torch.cat([text[:8], video, text[8:]])
        return dict(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long), pixel_values=pixels)
    visual, pixels = frame_batch_video(config, frames)
    ids = torch.cat([text[:8], torch.full((visual,), config.video_token_id), text[8:]])
    return dict(
        input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long), pixel_values_videos=pixels
    )
