"""Cosmos3 Edge (NVIDIA): Qwen2-VL's layout and model over a packed SigLIP2 tower and a Llama decoder. Each frame of a
video sits on its own, `<t seconds>` + vision start + (H/m)·(W/m) merged patches + vision end (one frame a temporal
unit); 3-D interleaved M-RoPE positions stay the original ones. The tower attends inside each frame, has no rotary
tables (a learned position grid, resized to each frame, is added to the patch embeddings), and its post-layernorm
output goes through the model's projector, which merges 2 × 2 patches (block-major in the tower's rows)."""

from __future__ import annotations

from .qwen2_vl import Qwen2VLAdapter, SiglipTower


class Cosmos3EdgeAdapter(SiglipTower, Qwen2VLAdapter):
    model_type = "cosmos3_edge"
    grids_after_cache = False
    tower_rotary = False

    def patch_embeddings(self, pixels):
        """The patches' linear embedding, without the position grid (resized per frame, the same for every frame of a
        video: frames compare alike without it)."""
        embedding = self.vision_tower.embeddings.patch_embedding
        return embedding(pixels.to(embedding.weight.dtype))
