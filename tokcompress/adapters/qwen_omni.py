"""Qwen-Omni: the thinker of Qwen2.5-Omni (`qwen2_5_omni_thinker`) is Qwen2.5-VL's windowed tower and M-RoPE decoder,
Qwen3-Omni's (`qwen3_omni_moe_thinker`) Qwen3-VL's tower with DeepStack over a mixture-of-experts decoder; each
beside an audio encoder. The whole models (`qwen2_5_omni`, `qwen3_omni_moe`) are compressed through their thinker,
whose `generate` theirs runs (the talker then speaks the text and sees no video). A video is vision start + its
tokens + vision end; with its audio track (`use_audio_in_video`) its temporal units sit between its audio tokens
at their times (Qwen2.5-Omni: per chunk of seconds, the chunk's units then its audio; Qwen3-Omni: each unit at its
start time). Audio tokens pass through."""

from __future__ import annotations

from .qwen2_vl import Qwen2_5_VLAdapter
from .qwen3_vl import Qwen3VLAdapter


class Qwen2_5OmniThinkerAdapter(Qwen2_5_VLAdapter):
    model_type = "qwen2_5_omni_thinker"
    grids_after_cache = False

    def tower_projections(self, attention, project):
        return project(attention.q), project(attention.k), project(attention.v)


class Qwen2_5OmniAdapter(Qwen2_5OmniThinkerAdapter):
    model_type = "qwen2_5_omni"

    def __init__(self, model):
        super().__init__(thinker(model))


class Qwen3OmniMoeThinkerAdapter(Qwen3VLAdapter):
    model_type = "qwen3_omni_moe_thinker"
    grids_after_cache = False


class Qwen3OmniMoeAdapter(Qwen3OmniMoeThinkerAdapter):
    model_type = "qwen3_omni_moe"

    def __init__(self, model):
        super().__init__(thinker(model))


def thinker(model):
    """A whole Qwen-Omni model's thinker (the model itself when given a thinker)."""
    return getattr(model, "thinker", model)
