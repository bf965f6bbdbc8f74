"""Tiny models built from configs (random weights) with a byte-level vocabulary, for tests and the demo.

Token ids 0-255 are raw UTF-8 bytes, so prompts are real text and generations decode to (meaningless)
text; ids 256+ are the special tokens the models need. Nothing is downloaded.
"""

from __future__ import annotations

import math

import torch
from transformers import (
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
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
)

from .video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    clip_video_pixels,
    llava_onevision_pixels,
    qwen_vl_pixels,
    resize_normalize,
)

PAD, IMAGE, VIDEO, VISION_START, VISION_END = 256, 257, 258, 259, 260
VIDEO_START, VIDEO_END = 262, 263  # GLM-4.1V's video span (261 is the tiny checkpoint's end of turn)
VOCAB = 264

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


def tiny_qwen2_5_vl(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 64):
    """Qwen2.5-VL with a 2-block vision tower (patch 14, temporal patch 2, merge 2); M-RoPE sections fit head_dim 16."""
    config = Qwen2_5_VLConfig(
        text_config=_text_config(
            num_layers, hidden_size,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size,
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1],
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return _build(Qwen2_5_VLForConditionalGeneration, config, attn_implementation, seed)


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
        text_config=_text_config(
            num_layers, hidden_size, head_dim=16,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}, **text_extra,
        ),
        vision_config=dict(
            depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size, patch_size=16,
            temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2],
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    return _build(model_cls, config, attn_implementation, seed)


def _build(model_cls, config, attn_implementation, seed):
    torch.manual_seed(seed)
    model = model_cls._from_config(config, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None
    return model.eval()


def text_ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    """Byte-level decode; tokens that are not printable ASCII show as their id, e.g. <215>."""
    return "".join(chr(i) if 32 <= i < 127 else f"<{i}>" for i in ids)


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input_ids and attention_mask for a batch of prompts of different lengths."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
    return ids, mask


def frame_batch_video(config, clip: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(placeholder tokens, `pixel_values_videos`) of one video for the families whose tower encodes frames as
    images, as their processors make them."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    if config.model_type == "llava_onevision":  # ½ bilinear pooling, one newline after the video
        return clip.shape[0] * math.ceil(side / 2) ** 2 + 1, llava_onevision_pixels(clip, vision.image_size)
    if config.model_type == "llava_next_video":  # CLS dropped, pooled with the configured stride
        return clip.shape[0] * (side // config.spatial_pool_stride) ** 2, clip_video_pixels(clip, vision.image_size)
    if config.model_type == "video_llava":  # CLS kept, no pooling
        return clip.shape[0] * (side * side + 1), clip_video_pixels(clip, vision.image_size)
    raise ValueError(f"{config.model_type!r} does not encode a video's frames as images")


def frame_batch_inputs(model, frames: torch.Tensor | list[torch.Tensor], questions: str | list[str]) -> dict:
    """Model inputs for one video per prompt; all videos of a batch have the same frame count (as in HF)."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    rows, pixels = [], []
    for clip, question in zip(frames, questions):
        placeholders, clip_pixels = frame_batch_video(model.config, clip)
        rows.append(text_ids("user: ") + [VIDEO] * placeholders + text_ids(f"\n{question}\nassistant:"))
        pixels.append(clip_pixels)
    ids, mask = left_pad(rows)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": torch.cat(pixels)}


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
}


def qwen_vl_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], size: int = 112, patch_size: int = 14,
    fps: float | None = None, glm: bool = False,
) -> dict:
    """Model inputs for one video per prompt (videos may have different frame counts), as the Qwen-VL and GLM-4.1V
    processors lay them out: vision start + all the video's tokens + vision end (Qwen2/2.5-VL); given the `fps`,
    each temporal patch on its own: `<t seconds>` + vision start + its tokens + vision end (Qwen3-VL, Qwen3.5;
    t: the patch's mean frame time); with `glm`, video start, then per temporal patch image start + its tokens +
    image end + its first frame's whole second, then video end (GLM-4.1V)."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    patches, grids, rows = [], [], []
    for clip, question in zip(frames, questions):
        flat, grid = qwen_vl_pixels(clip, size, size, patch_size=patch_size)
        t, h, w = grid[0].tolist()
        patches.append(flat)
        grids.append(grid)
        unit = [VISION_START] + [VIDEO] * (h * w // 4) + [VISION_END]
        if glm:
            seconds = (text_ids(str(int(2 * i / (fps or 1)))) for i in range(t))
            video = [VIDEO_START] + sum((unit + second for second in seconds), []) + [VIDEO_END]
        elif fps is None:
            video = [VISION_START] + [VIDEO] * (t * h * w // 4) + [VISION_END]
        else:
            video = sum((text_ids(f"<{(2 * i + 0.5) / fps:.1f} seconds>") + unit for i in range(t)), [])
        rows.append(text_ids("user: ") + video + text_ids(f"\n{question}\nassistant:"))
    ids, mask = left_pad(rows)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values_videos": torch.cat(patches),
        "video_grid_thw": torch.cat(grids),
        "mm_token_type_ids": (ids == VIDEO).long() * 2,
    }


def internvl_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], image_size: int = 84, smolvlm: bool = False
) -> dict:
    """Model inputs for one video per prompt, as InternVL's processor lays a video out: each frame an image,
    `FrameN: <img>` + its tokens + `</img>` on its own line (vision start / end stand in for <img> / </img>). With
    `smolvlm`, as SmolVLM's: `\nMM:SS:` (its `Frame from ` left out: byte tokens are long) + fake token + global
    token + its tokens + fake token (vision start, 261, vision start), frames padded to the batch's longest video
    with blank images."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    per_frame = (image_size // 28) ** 2
    pixels, rows = [], []
    for clip, question in zip(frames, questions):
        pixels.append(resize_normalize(clip, image_size, image_size, IMAGENET_MEAN, IMAGENET_STD))
        if smolvlm:
            frame = [VISION_START, 261] + [VIDEO] * per_frame + [VISION_START]
            video = sum((text_ids(f"\n00:{i:02d}:") + frame for i in range(len(clip))), [])
        else:
            frame = [VISION_START] + [VIDEO] * per_frame + [VISION_END]
            video = sum((text_ids(f"Frame{i + 1}: ") + frame + text_ids("\n") for i in range(len(clip))), [])
        rows.append(text_ids("user: ") + video + text_ids(f"{question}\nassistant:"))
    ids, mask = left_pad(rows)
    if smolvlm:  # (batch, images, 3, H, W), shorter videos padded with all-zero images, which the model skips
        longest = max(len(clip) for clip in pixels)
        padded = torch.stack([torch.cat([p, p.new_zeros(longest - len(p), *p.shape[1:])]) for p in pixels])
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": padded}
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat(pixels)}


def video_inputs(model, frames: torch.Tensor | list[torch.Tensor], questions: str | list[str]) -> dict:
    """Inputs for one video per prompt for any tiny model (lists make a left-padded batch)."""
    if model.config.model_type == "qwen2_5_vl":
        return qwen_vl_inputs(frames, questions)
    if model.config.model_type in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5"):  # 16-px patches, timestamps at 8 fps
        return qwen_vl_inputs(frames, questions, size=128, patch_size=16, fps=8.0)
    if model.config.model_type in ("internvl", "smolvlm"):
        return internvl_inputs(frames, questions, smolvlm=model.config.model_type == "smolvlm")
    if model.config.model_type in ("glm4v", "glm4v_moe", "glm46v"):
        return qwen_vl_inputs(frames, questions, fps=2.0, glm=True)
    return frame_batch_inputs(model, frames, questions)
