"""Latency and memory of compressed Video-LLMs against the uncompressed model and the ideal.

For each frame count × method × ratio: prefill (time to first token: vision encoder + LLM prefill), decode
time per token, end-to-end generate time, peak GPU memory, and the **ideal** - the same model's vision
encoder on the share of the clip the method encoded, then the model's own `generate()` (no hooks) on the
prompt's text plus as many visual tokens as the method kept (its layer-averaged count). Both go through
`generate()`, so measured − ideal is tokcompress's overhead and nothing else.

    python eval/bench_latency.py --model llava-onevision-7b --frames 32 64 --device cuda    # random 7B weights
    python eval/bench_latency.py --model /path/to/checkpoint --frames 32                    # real weights
    python eval/bench_latency.py --model small --frames 32 --ratios 0.15 0.3 --device cpu   # the committed CPU runs
    python eval/bench_latency.py --model small-qwen2.5-vl --frames 32 --ratios 0.15 0.3 --device cpu \
        --methods stock none tome fastv framefusion framededup earlytom vidtldr flowcut visionzip holitom

Writes eval/results/latency_<model>_<device>.csv and three plots (latency vs ratio, with the ideal of the
LLM-side methods; speed-up vs frames; where the prefill's time goes). Peak memory is a GPU figure (NaN on
the CPU).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import torch
import transformers
from tqdm import tqdm
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

import tokcompress
from tokcompress.adapters import adapter_for
from tokcompress.ideal import ideal_inputs
from tokcompress.methods import build_method, method_spec
from tokcompress.timing import median_ms, timed_generate
from tokcompress.tiny import frame_batch_video
from tokcompress.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    gemma4_pixels,
    molmo2_pixels,
    qwen_vl_pixels,
    read_frames,
    resize_normalize,
    sample_clip,
)

RESULTS = Path(__file__).parent / "results"
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
STOCK = "stock"  # the unpatched model, as users run it
BASELINES = ("none", STOCK)  # measured once, at ratio 1
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


def measure(model, inputs: dict, new_tokens: int, repeats: int, device: str) -> dict:
    return timed_generate(model, inputs, new_tokens, repeats, device)


def measure_ideal(
    model, inputs: dict, visual_kept: int, new_tokens: int, repeats: int, device: str, encoded: float = 1.0
) -> dict:
    """The vision encoder on the clip (on the `encoded` fraction of its frame units, as the method did), then the
    model's own generate() on text + `visual_kept` tokens (at their original M-RoPE positions, which it computes
    from the prompt's grids where it has them): the measured run's path, without hooks."""
    _, prepare = ideal_inputs(model, inputs, visual_kept, encoded)
    timing = timed_generate(model, prepare, new_tokens, repeats, device)
    return {f"ideal_{key}": value for key, value in timing.items() if key != "end_to_end_ms"}


def measure_stock(model, inputs: dict, new_tokens: int, repeats: int, device: str) -> dict:
    """The model as users run it, no patch at all (Qwen-VL: stock sdpa's loop over vision windows, where `none`
    takes the packed varlen path); its ideal is itself."""
    encode, _ = ideal_inputs(model, inputs, 0)
    measured = measure(model, inputs, new_tokens, repeats, device)
    ideal = {f"ideal_{key}": value for key, value in measured.items() if key != "end_to_end_ms"}
    return dict(compression_ms=0.0, encoder_ms=round(median_ms(encode, repeats, device), 3), encoder_ratio=1.0,
                **measured, **ideal)


def measure_method(model, inputs: dict, method: str, ratio: float, visual_in: int, args) -> dict:
    """A patched run, then the ideal for what it kept and encoded."""
    name, knobs = method_spec(method)
    with tokcompress.compress(model, name, ratio=None if name == "none" else ratio, **knobs) as handle:
        measured = measure(model, inputs, args.new_tokens, args.repeats, args.device)
        stats = handle.stats  # of the last timed generate
    kept = round(stats.achieved_ratio * visual_in)
    encoded = statistics.mean(s.encoder_ratio for s in stats.samples)
    ideal = measure_ideal(model, inputs, kept, args.new_tokens, args.repeats, args.device, encoded)
    return dict(
        achieved_ratio=stats.achieved_ratio, compression_ms=round(stats.compression_seconds * 1e3, 3),
        encoder_ms=round(stats.encoder_seconds * 1e3, 3), encoder_ratio=round(encoded, 4), **measured, **ideal,
    )


def run(args) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    model = named_model(args.model, dtype, args.device)
    clip = sample_clip(args.clip)
    rows = []
    jobs = [(f, m, r) for f in args.frames for m in args.methods for r in ([1.0] if m in BASELINES else args.ratios)]
    torch.set_grad_enabled(False)
    for frames, method, ratio in tqdm(jobs, desc="latency", unit="run"):
        inputs = {k: v.to(args.device) for k, v in video_inputs(model, read_frames(clip, frames)).items()}
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        visual_in = int((inputs["input_ids"] == adapter_for(model).video_token_id).sum())
        if method == STOCK:
            timing = measure_stock(model, inputs, args.new_tokens, args.repeats, args.device)
        else:
            timing = measure_method(model, inputs, method, ratio, visual_in, args)
        achieved = timing.pop("achieved_ratio", 1.0)
        rows.append(dict(
            model=args.model, device=device_name(args.device), dtype=args.dtype, frames=frames, method=method,
            ratio=ratio, new_tokens=args.new_tokens, visual_in=visual_in,
            visual_kept_layer_mean=round(achieved * visual_in),
            achieved_ratio=round(achieved, 4), **timing,
            prefill_overhead_ms=timing["prefill_ms"] - timing["ideal_prefill_ms"],
        ))
    return rows


def device_name(device: str) -> str:
    return torch.cuda.get_device_name().replace(" ", "-") if device == "cuda" else "cpu"


def write(rows: list[dict], out: Path, stem: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    return path


def plot(rows: list[dict], out: Path, stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in BASELINES]
    style = {m: dict(color=plt.get_cmap("tab20")(i % 20), marker="os^Dv"[i // 20 % 5]) for i, m in enumerate(methods)}
    frames = sorted({r["frames"] for r in rows})
    baseline = {r["frames"]: r for r in rows if r["method"] == "none"}
    figure, axes = plt.subplots(1, len(frames), figsize=(5 * len(frames) + 2, 4.5), squeeze=False)
    for axis, count in zip(axes[0], frames):
        for method in methods:
            points = sorted(
                (r["ratio"], r["prefill_ms"]) for r in rows if r["method"] == method and r["frames"] == count
            )
            axis.plot(*zip(*points), label=method, **style[method])
        llm_side = [r for r in rows if r["method"] not in BASELINES and r["frames"] == count
                    and float(r.get("encoder_ratio", 1.0)) >= 0.999]  # their ideals share a full tower
        ratios = sorted({r["ratio"] for r in llm_side})
        ideal = [statistics.median(r["ideal_prefill_ms"] for r in llm_side if r["ratio"] == x) for x in ratios]
        if ratios:
            axis.plot(ratios, ideal, linestyle="--", color="black", label="ideal (LLM-side methods)")
        if count in baseline:
            axis.axhline(baseline[count]["prefill_ms"], color="gray", linestyle=":", label="none")
        stock = [r for r in rows if r["method"] == STOCK and r["frames"] == count]
        if stock:
            axis.axhline(stock[0]["prefill_ms"], color="brown", linestyle=":", label="stock (unpatched)")
        axis.set(title=f"{count} frames", xlabel="ratio", ylabel="prefill ms (median)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.suptitle(f"prefill latency vs ratio - {rows[0]['model']} on {rows[0]['device']}")
    figure.tight_layout()
    figure.savefig(out / f"{stem}_vs_ratio.png", dpi=110)
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for method in methods:
        for ratio, line in zip(sorted({r["ratio"] for r in rows if r["method"] == method}), ("-", "--", ":", "-.")):
            points = sorted((r["frames"], baseline[r["frames"]]["prefill_ms"] / r["prefill_ms"])
                            for r in rows if r["method"] == method and r["ratio"] == ratio and r["frames"] in baseline)
            axis.plot(*zip(*points), linestyle=line, label=f"{method} @ {ratio:g}", **style[method])
    axis.set(xlabel="frames", ylabel="prefill speed-up vs none", title=f"{rows[0]['model']} on {rows[0]['device']}")
    axis.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    figure.savefig(out / f"{stem}_speedup.png", dpi=110)


def plot_breakdown(rows: list[dict], out: Path, stem: str) -> None:
    """Where the time to first token goes, per run: vision encoder, compression, the rest of the prefill
    (the LLM), next to the decode time of the following tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['method']}@{r['ratio']:g}, {r['frames']}f" for r in rows]
    encoder = [r["encoder_ms"] for r in rows]
    compression = [r["compression_ms"] for r in rows]
    llm = [max(r["prefill_ms"] - e - c, 0.0) for r, e, c in zip(rows, encoder, compression)]
    decode = [r["decode_ms_per_token"] * (r["new_tokens"] - 1) for r in rows]
    figure, axis = plt.subplots(figsize=(max(6, 0.55 * len(rows)), 4))
    bottom = [0.0] * len(rows)
    for values, name in (
        (encoder, "vision encoder"), (compression, "compression"), (llm, "LLM prefill"), (decode, "decode")
    ):
        axis.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    axis.set(ylabel="ms (median run)", title=f"where time goes - {rows[0]['model']} on {rows[0]['device']}")
    axis.tick_params(axis="x", rotation=70, labelsize=7)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / f"{stem}_breakdown.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="small", help=", ".join(MODEL_NAMES) + ", or a checkpoint path"
    )
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument(
        "--methods", nargs="+", default=[STOCK, "none", *(m for m in tokcompress.list_methods() if m != "none")],
        help=f"registered methods (knobs as flowcut:inner_prune=0), compositions (framededup+fastv), and '{STOCK}': "
             "the unpatched model (Qwen-VL: stock sdpa vision windows)",
    )
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.15, 0.3, 0.5])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clip", default="bigbuckbunny.mp4")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.device == "cpu" and args.model in MODEL_NAMES and not args.model.startswith("small"):
        parser.error(f"{args.model} is a real shape (billions of random weights, tens of GB in float32): on the CPU "
                     "use --model small or small-qwen2.5-vl; the real shapes run on a GPU (eval/gpu/run.sh)")
    for method in args.methods:  # every spec checked before the first (long) run, not when its turn comes
        if method != STOCK:
            try:
                name, knobs = method_spec(method)
                build_method(name, **knobs)
            except (TypeError, ValueError) as error:
                parser.error(f"{method}: {error}")
    rows = run(args)
    stem = f"latency_{Path(args.model).name}_{device_name(args.device)}"
    print(f"wrote {write(rows, args.out, stem)}")
    plot(rows, args.out, stem)
    plot_breakdown(rows, args.out, stem)
    for row in rows:
        print(f"{row['frames']:3d} frames {row['method']:12s} r={row['ratio']:<5g} prefill {row['prefill_ms']:9.1f} ms "
              f"(ideal {row['ideal_prefill_ms']:9.1f})  decode {row['decode_ms_per_token']:7.2f} ms/token "
              f"(ideal {row['ideal_decode_ms_per_token']:7.2f})  peak {row['peak_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
