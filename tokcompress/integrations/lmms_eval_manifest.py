"""The `lmms_eval.models` entry point: one manifest per compression-aware wrapper."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmms_eval.models.registry_v2 import ModelManifest

_MODULE = "tokcompress.integrations.lmms_eval"


def manifests() -> list[ModelManifest]:
    """`--model tokcompress_<stock name>`; chat classes are lmms-eval's default where the stock one has them."""
    # imported here, not above: lmms-eval's registry loads this entry point while it initialises, so importing
    # this module first would re-enter it half-initialised
    from lmms_eval.models.registry_v2 import ModelManifest

    wrappers = {
        "llava_hf": ("LlavaHf", "LlavaHfChat"),
        "qwen2_5_vl": ("Qwen2_5_VL", "Qwen2_5_VLChat"),
        "qwen2_vl": ("Qwen2_VL", None),
        "qwen3_vl": ("Qwen3_VL", "Qwen3_VLChat"),
        "qwen3_5": ("Qwen3_5", "Qwen3_5Chat"),
        "internvl_hf": (None, "InternVLHfChat"),
        "glm4v": ("GLM4V", None),
        "gemma4": ("Gemma4", None),
    }
    return [
        ModelManifest(
            model_id=f"tokcompress_{stock}",
            simple_class_path=f"{_MODULE}.{simple}" if simple else None,
            chat_class_path=f"{_MODULE}.{chat}" if chat else None,
            aliases=(f"tc_{stock}",),
        )
        for stock, (simple, chat) in wrappers.items()
    ]
