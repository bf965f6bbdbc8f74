"""Tiny models built from configs (random weights) with a byte-level vocabulary, for tests and the demo.

Token ids 0-255 are raw UTF-8 bytes, so prompts are real text and generations decode to (meaningless)
text; ids 256+ are the special tokens the models need. Nothing is downloaded. Their prompts and pixels come
from `tiny_inputs` and `tiny_packed_inputs` (reachable here too; `tiny.video_inputs(model, frames, question)` picks
the family's). One builder per family:
`frames` holds those whose tower encodes frames as a batch of images, `qwen` and `packed` those whose tower packs
them into one sequence (the Qwen-VL families, the others), `latent` those with a multi-head latent attention
decoder, `common` what they are built from.
"""

from __future__ import annotations

import torch

from ..engine import compat
from ..tiny_inputs import (  # noqa: F401 - the prompts and pixels of these models, here too for `tiny.X` callers
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
    nemotron_h_omni_inputs,
    text_ids,
)
from ..tiny_packed_inputs import (  # noqa: F401 - as above
    ernie_inputs,
    kimi_k25_inputs,
    minicpm_v_inputs,
    muse_glimmer_inputs,
    omni_audio_tokens,
    qwen_omni_inputs,
    qwen_vl_inputs,
    video_llama_3_inputs,
)
from .frames import (  # noqa: F401 - public builders
    GEMMA4_LARGE,
    tiny_gemma4,
    tiny_gemma4_unified,
    tiny_internvl,
    tiny_llava_next_video,
    tiny_llava_onevision,
    tiny_molmo2,
    tiny_nemotron_h_omni,
    tiny_smolvlm,
    tiny_video_llava,
)
from .latent import tiny_dots3_note, tiny_kimi_k25  # noqa: F401 - public builders
from .packed import (  # noqa: F401 - public builders
    tiny_cohere_compass,
    tiny_cosmos3_edge,
    tiny_ernie4_5_vl_moe,
    tiny_exaone4_5,
    tiny_glm4v,
    tiny_glm4v_moe,
    tiny_glm46v,
    tiny_hyperclovax_vision_v2,
    tiny_lfm3_vl,
    tiny_llava_onevision1_5,
    tiny_minicpm_ocr,
    tiny_minicpmv4_6,
    tiny_minicpmv4_7,
    tiny_muse_glimmer,
    tiny_muse_spark,
    tiny_ovis2_5,
    tiny_video_llama_3,
)
from .qwen import (  # noqa: F401 - public builders
    tiny_cosmos3_omni,
    tiny_qwen2_5_omni_thinker,
    tiny_qwen2_5_vl,
    tiny_qwen3_5,
    tiny_qwen3_5_moe,
    tiny_qwen3_omni_moe_thinker,
    tiny_qwen3_vl,
    tiny_qwen3_vl_moe,
)

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
    "gemma4_unified": tiny_gemma4_unified,
    "qwen3_5_moe": tiny_qwen3_5_moe,
    "cosmos3_omni": tiny_cosmos3_omni,
    "hyperclovax_vision_v2": tiny_hyperclovax_vision_v2,
    "muse_spark": tiny_muse_spark,
    "exaone4_5": tiny_exaone4_5,
    "lfm3_vl": tiny_lfm3_vl,
    "minicpmv4_6": tiny_minicpmv4_6,
    "minicpmv4_7": tiny_minicpmv4_7,
    "minicpm_ocr": tiny_minicpm_ocr,
    "dots3_note": tiny_dots3_note,
}
if compat.ships("ovis2_5"):  # transformers 5.25+
    TINY_MODELS["ovis2_5"] = tiny_ovis2_5
if compat.ships("llava_onevision1_5"):  # transformers 5.25+
    TINY_MODELS["llava_onevision1_5"] = tiny_llava_onevision1_5
if compat.NEMOTRON_TUBELETS:  # transformers 5.24+: videos as tubelets
    TINY_MODELS["nemotron_h_omni"] = tiny_nemotron_h_omni
if compat.KIMI_CHUNKS:  # transformers 5.24+: a video's features split per chunk
    TINY_MODELS["kimi_k25"] = tiny_kimi_k25

QWEN3_LAYOUT = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "cosmos3_omni", "cohere_compass")  # Qwen3-VL's


def video_inputs(model, frames: torch.Tensor | list[torch.Tensor], questions: str | list[str]) -> dict:
    """Inputs for one video per prompt for any tiny model (lists make a left-padded batch)."""
    if model.config.model_type == "qwen2_5_vl":
        return qwen_vl_inputs(frames, questions)
    if model.config.model_type in ("hyperclovax_vision_v2", "exaone4_5"):  # 1-D positions: no token types
        return {k: v for k, v in qwen_vl_inputs(frames, questions).items() if k != "mm_token_type_ids"}
    if model.config.model_type in ("llava_onevision1_5", "dots3_note"):  # one frame a unit (2-D patches), 1-D positions
        inputs = qwen_vl_inputs(frames, questions, temporal_patch_size=1)
        return {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    if model.config.model_type in QWEN3_LAYOUT:  # 16 px, 8 fps
        return qwen_vl_inputs(frames, questions, size=128, patch_size=16, fps=8.0)
    if model.config.model_type == "lfm3_vl":  # Qwen3-VL's layout, 1-D positions: no token types
        inputs = qwen_vl_inputs(frames, questions, size=128, patch_size=16, fps=8.0)
        return {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    if model.config.model_type == "cosmos3_edge":  # 16-px patches, one frame a unit, timestamps at 2 fps
        return qwen_vl_inputs(
            frames, questions, size=128, patch_size=16, fps=2.0, temporal_patch_size=1, channels_last=True
        )
    if model.config.model_type == "ernie4_5_vl_moe":
        return ernie_inputs(frames, questions)
    if model.config.model_type in ("internvl", "smolvlm"):
        return internvl_inputs(frames, questions, smolvlm=model.config.model_type == "smolvlm")
    if model.config.model_type in ("glm4v", "glm4v_moe", "glm46v"):
        return qwen_vl_inputs(frames, questions, fps=2.0, glm=True)
    if model.config.model_type == "video_llama_3":
        return video_llama_3_inputs(frames, questions)
    if model.config.model_type in ("gemma4", "gemma4_unified"):
        return gemma4_inputs(frames, questions, unified=model.config.model_type == "gemma4_unified")
    if model.config.model_type in ("muse_glimmer", "muse_spark"):
        return muse_glimmer_inputs(frames, questions)
    if model.config.model_type == "ovis2_5":  # 16-px patches, one frame a unit, the video's tokens in one run
        return qwen_vl_inputs(frames, questions, size=128, patch_size=16, temporal_patch_size=1, siglip_norm=True)
    if model.config.model_type in ("minicpmv4_6", "minicpm_ocr"):
        if model.config.downsample_mode == "4x":  # MiniCPM-OCR's default: a token per 2 × 2 patches
            return minicpm_v_inputs(frames, questions, (112, 112), (1, 2), (112, 56), "4x")
        return minicpm_v_inputs(frames, questions)
    if model.config.model_type == "minicpmv4_7":  # canvas M-RoPE reads the token types
        inputs = minicpm_v_inputs(frames, questions)
        return {**inputs, "mm_token_type_ids": (inputs["input_ids"] == VIDEO).long() * 2}
    if model.config.model_type == "nemotron_h_omni":
        return nemotron_h_omni_inputs(frames, questions)
    if model.config.model_type == "kimi_k25":
        return kimi_k25_inputs(frames, questions)
    if model.config.model_type == "molmo2":
        return molmo2_inputs(frames, questions, per_video_pooling=compat.MOLMO2_POOLING_PER_VIDEO)
    if model.config.model_type in ("qwen2_5_omni_thinker", "qwen3_omni_moe_thinker"):
        return qwen_omni_inputs(frames, questions, qwen3=model.config.model_type == "qwen3_omni_moe_thinker")
    return frame_batch_inputs(model, frames, questions)
