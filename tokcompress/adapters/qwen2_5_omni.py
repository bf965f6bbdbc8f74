"""Qwen2.5-Omni: its thinker (`qwen2_5_omni_thinker`; the whole model, `qwen2_5_omni`, through its thinker) is
Qwen2.5-VL's windowed tower and M-RoPE decoder beside an audio encoder. A video is vision start + its tokens +
vision end, or with its audio track (`use_audio_in_video`) vision start + audio start + per `seconds_per_chunk`
seconds the chunk's frame units, then its audio tokens + audio end + vision end. Audio tokens pass through."""

from __future__ import annotations

from .qwen2_vl import Qwen2_5_VLAdapter


class Qwen2_5OmniThinkerAdapter(Qwen2_5_VLAdapter):
    model_type = "qwen2_5_omni_thinker"

    def tower_projections(self, attention, hidden):
        return attention.q(hidden), attention.k(hidden)


class Qwen2_5OmniAdapter(Qwen2_5OmniThinkerAdapter):
    """The whole Qwen2.5-Omni (thinker, talker, vocoder): its `generate` runs the thinker's, which the patch hooks;
    the talker speaks the thinker's text and sees no video."""

    model_type = "qwen2_5_omni"

    def __init__(self, model):
        super().__init__(model.thinker if hasattr(model, "thinker") else model)
