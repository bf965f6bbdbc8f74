"""Tiny models built from configs (random weights) with a byte-level vocabulary, for tests and the demo.

Token ids 0-255 are raw UTF-8 bytes, so prompts are real text and generations decode to (meaningless)
text; ids 256+ are the special tokens the models need. Nothing is downloaded. Their prompts and pixels come
from `tiny_inputs` (reachable here too: `tiny.video_inputs(model, frames, question)`). One builder per family:
`frames` holds those whose tower encodes frames as a batch of images, `packed` those whose tower packs them into
one sequence, `common` what both are built from.
"""

from __future__ import annotations

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
    minicpm_v_inputs,
    molmo2_inputs,
    muse_glimmer_inputs,
    nemotron_h_omni_inputs,
    omni_audio_tokens,
    qwen_omni_inputs,
    qwen_vl_inputs,
    text_ids,
    video_inputs,
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
from .packed import (  # noqa: F401 - public builders
    tiny_cohere_compass,
    tiny_cosmos3_edge,
    tiny_cosmos3_omni,
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
    tiny_qwen2_5_omni_thinker,
    tiny_qwen2_5_vl,
    tiny_qwen3_5,
    tiny_qwen3_5_moe,
    tiny_qwen3_omni_moe_thinker,
    tiny_qwen3_vl,
    tiny_qwen3_vl_moe,
    tiny_video_llama_3,
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
}
if compat.ships("ovis2_5"):  # transformers 5.25+
    TINY_MODELS["ovis2_5"] = tiny_ovis2_5
if compat.ships("llava_onevision1_5"):  # transformers 5.25+
    TINY_MODELS["llava_onevision1_5"] = tiny_llava_onevision1_5
if compat.NEMOTRON_TUBELETS:  # transformers 5.24+: videos as tubelets
    TINY_MODELS["nemotron_h_omni"] = tiny_nemotron_h_omni
