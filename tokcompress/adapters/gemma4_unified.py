"""Gemma 4 Unified: Gemma 4's decoder and prompt layout without a vision tower. Each model patch (k × k of the
processor's patches) is a token: normed, projected and given its factorized (x, y) position embedding, then
projected into the LLM (`embed_vision`). Nothing encodes the frames, so the visual tokens are all the prefill's
work - compression is the only lever on it.

Its forward lets a vision block (a frame) attend both ways in every layer, global ones too, and whole in a sliding
layer even where it is longer than the window (Gemma 4 keeps global layers causal and a block inside the window;
the stock `generate` with a static cache builds Gemma 4's masks instead - tokcompress follows the forward).

Where it departs from the stock forward: as Gemma 4's decoder (tokcompress/adapters/gemma4.py). Methods that rank
tokens by the vision tower's attention (visionzip, prumerge, holitom, fastvid, earlytom) are refused, and there is
no tower to fold frames or tokens inside; framededup drops frames before they are embedded."""

from __future__ import annotations

from ..engine import compat
from .gemma4 import Gemma4Decoder


class Gemma4UnifiedAdapter(Gemma4Decoder):
    model_type = "gemma4_unified"
    has_tower = False
    # its forward builds the vision blocks into every layer's mask, whole past a sliding layer's window (Gemma 3's
    # rule; Gemma 4 keeps global layers causal and a block inside the window)
    bidirectional_layer_types = (compat.SLIDING_LAYER, "full_attention")
    blocks_past_window = True

    def patch_embeddings(self, pixels):
        embedder = self.vision_tower  # its patch embedder
        pixels = pixels.to(embedder.patch_dense.weight.dtype)
        return embedder.patch_ln2(embedder.patch_dense(embedder.patch_ln1(pixels)))
