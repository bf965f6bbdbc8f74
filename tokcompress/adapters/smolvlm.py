"""SmolVLM / SmolVLM2 (`smolvlm`): as InternVL, no video path - its processor turns a video into frames given as
images, `Frame from MM:SS:` + `<fake_token_around_image><global-img>` + one image's tokens +
`<fake_token_around_image>` per frame, and the SigLIP tower encodes every image before the prompt is read. A video
is read off the prompt the same way (two or more single-tile images at most `MAX_FRAME_GAP` text tokens apart);
each frame is an s × s grid, the pixel-shuffled patches in raster order."""

from __future__ import annotations

from .internvl import InternVLAdapter


class SmolVLMAdapter(InternVLAdapter):
    model_type = "smolvlm"
    tower_has_cls = False

    @property
    def tokens_per_frame(self) -> int:
        return self.multimodal_model.image_seq_len

    def tower_attention(self):
        return self.vision_tower.encoder.layers[-1].self_attn  # its post-norm output is what the connector takes

    def pooled_tower_scores(self, scores):
        connector = self.multimodal_model.connector
        return connector.pixel_shuffle(scores[..., None], connector.scale_factor).mean(dim=-1)
