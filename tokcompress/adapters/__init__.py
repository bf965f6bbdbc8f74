"""Model families, keyed by `config.model_type`."""

from __future__ import annotations

from torch import nn

from .base import Adapter
from .cohere_compass import CohereCompassAdapter
from .cosmos3_edge import Cosmos3EdgeAdapter
from .dots3_note import Dots3NoteAdapter
from .ernie4_5_vl import Ernie4_5_VLAdapter
from .exaone4_5 import Exaone4_5Adapter
from .gemma4 import Gemma4Adapter
from .gemma4_unified import Gemma4UnifiedAdapter
from .glm4v import Glm4vAdapter, Glm4vMoeAdapter, Glm46VAdapter
from .hyperclovax_vision_v2 import HyperClovaXVisionV2Adapter
from .internvl import InternVLAdapter
from .kimi_k25 import KimiK25Adapter
from .lfm3_vl import Lfm3VlAdapter
from .llava_next_video import LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .llava_onevision1_5 import LlavaOnevision15Adapter
from .minicpm_v import MiniCPMOcrAdapter, MiniCPMV4_6Adapter, MiniCPMV4_7Adapter
from .molmo2 import Molmo2Adapter
from .muse_glimmer import MuseGlimmerAdapter, MuseSparkAdapter
from .nemotron_h_omni import NemotronHOmniAdapter
from .ovis2_5 import Ovis2_5Adapter
from .qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from .qwen3_5 import Qwen3_5Adapter, Qwen3_5MoeAdapter
from .qwen3_vl import Cosmos3OmniAdapter, Qwen3VLAdapter, Qwen3VLMoeAdapter
from .qwen_omni import Qwen2_5OmniAdapter, Qwen2_5OmniThinkerAdapter, Qwen3OmniMoeAdapter, Qwen3OmniMoeThinkerAdapter
from .smolvlm import SmolVLMAdapter
from .video_llama_3 import VideoLlama3Adapter
from .video_llava import VideoLlavaAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    adapter.model_type: adapter
    for adapter in (
        LlavaOnevisionAdapter, LlavaNextVideoAdapter, VideoLlavaAdapter, Qwen2VLAdapter, Qwen2_5_VLAdapter,
        Qwen3VLAdapter, Qwen3VLMoeAdapter, Qwen3_5Adapter, InternVLAdapter, Glm4vAdapter, Glm46VAdapter,
        Glm4vMoeAdapter, SmolVLMAdapter, VideoLlama3Adapter, Qwen2_5OmniThinkerAdapter, Qwen2_5OmniAdapter,
        Qwen3OmniMoeThinkerAdapter, Qwen3OmniMoeAdapter, Gemma4Adapter, Cosmos3EdgeAdapter,
        Ernie4_5_VLAdapter, CohereCompassAdapter, Molmo2Adapter,
        MuseGlimmerAdapter, Ovis2_5Adapter, Gemma4UnifiedAdapter, Qwen3_5MoeAdapter, Cosmos3OmniAdapter,
        HyperClovaXVisionV2Adapter, MuseSparkAdapter, LlavaOnevision15Adapter, Exaone4_5Adapter,
        Lfm3VlAdapter, MiniCPMV4_6Adapter, MiniCPMOcrAdapter, MiniCPMV4_7Adapter, NemotronHOmniAdapter, KimiK25Adapter,
        Dots3NoteAdapter,
    )
}


def list_models() -> list[str]:
    """The supported `config.model_type` values."""
    return sorted(ADAPTERS)


def adapter_for(model: nn.Module) -> Adapter:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None:
        raise TypeError(
            f"tokcompress.patch takes a loaded Hugging Face model (e.g. LlavaOnevisionForConditionalGeneration."
            f"from_pretrained(...)), got {type(model).__name__}: {str(model)[:80]!r}"
        )
    if model_type not in ADAPTERS:
        raise ValueError(
            f"tokcompress does not support model_type {model_type!r} ({type(model).__name__}); "
            f"supported families: {', '.join(list_models())}"
        )
    return ADAPTERS[model_type](model)


__all__ = ["ADAPTERS", "Adapter", "adapter_for", "list_models"]
