"""Molmo2 (AI2): a ViT encodes a video's frames as a batch of images; the outputs of two of its layers, side by
side, are read by a cross-attention pooler (each token attends to a window of its frame's patches, listed in
`video_token_pooling`) and added to the placeholder embeddings. Each frame sits on its own, `t.t ` + frame start +
its tokens + frame end, and every visual token of a prompt attends to all the others (and to the frames' start and
end tokens) both ways, in every decoder layer. The decoder is Qwen3's (pre-norm, q and k normed per head: Molmo2-8B,
-4B) or OLMo's (each sublayer's output normed, q and k normed across all heads: Molmo2-O), with scaled RoPE in some
layers and unscaled in the others.

Where it departs from the stock forward: none beyond the engine's rules. A merged token stays in the prompt's
visual block; a later turn that brings a video of its own attends inside it both ways, as the stock prefill of
that chunk. VisionZip reads the deepest of the two layers the pooler takes, a token's score the mean of its
window's patches; AIM's token graph reads a layer's attention causally, without the block (the text queries other
methods score with see every visual token either way)."""

from __future__ import annotations

import torch

from ..engine import compat
from ..engine.folding import BATCHED
from ..ops import attention_received
from .base import Adapter, applied_to
from .prompt import frame_run_layouts, noted_grids, units_in_place

VISUAL_TYPE = 1  # `mm_token_type_ids` of the visual tokens and their frames' start and end tokens


class Molmo2Adapter(Adapter):
    model_type = "molmo2"
    bidirectional_layer_types = ("full_attention",)  # every layer: the visual block attends both ways
    tower_frames = BATCHED

    def attention_blocks(self, call_kwargs):
        types = call_kwargs.get("mm_token_type_ids")
        return None if types is None else torch.where(types == VISUAL_TYPE, 0, -1)  # one block for all of them

    def heads(self, layer, projection, norm, hidden):
        """q / k / v of a layer that norms its sublayers' input (Molmo2-8B) or output (Molmo2-O: the attention sees
        its input as it is); q and k normed per head, or across all of them before the heads split."""
        attention = layer.self_attn
        states = projection(hidden if layer.norm_after else layer.input_layernorm(hidden))
        across = norm is not None and attention.qk_norm_type == "olmo"
        states = (norm(states) if across else states).view(hidden.shape[0], -1, attention.head_dim)
        return (states if norm is None or across else norm(states)).transpose(0, 1)

    # ------------------------------------------------------------------ layout
    def video_layouts(self, input_ids, call_kwargs):
        hint = " (with video_use_col_tokens off, as the processor has it: a frame's tokens in one run)"
        return frame_run_layouts(input_ids, self._grids(input_ids, call_kwargs), self.video_token_id, hint)

    def _grids(self, input_ids, call_kwargs) -> list[tuple[int, int, int]]:
        """Per video of the call, its (frames, height, width) grid of tokens: `video_grids`, or (generate encodes
        up front and drops them) as noted on the encoded features."""
        if call_kwargs.get("video_grids") is not None:
            return self.token_grids(call_kwargs)
        return noted_grids(call_kwargs, input_ids, self.video_token_id, "Molmo2", "video_grids")

    def token_grids(self, encoder_args) -> list[tuple[int, int, int]]:
        return [tuple(grid) for grid in encoder_args["video_grids"].tolist()]

    def note_encoded(self, output, encoder_args):
        output[compat.ENCODED_GRIDS] = self.token_grids(encoder_args)

    # ------------------------------------------------------------------ tower
    def frame_counts(self, encoder_args):
        return encoder_args["video_grids"][:, 0].tolist()

    def frame_signatures(self, encoder_args):  # the patches' projection, without the position table all frames share
        embed = self.vision_tower.patch_embedding
        embedded = embed(encoder_args["pixel_values_videos"].to(embed.weight.dtype))  # (frames, patches, D)
        return list(embedded.split(self.frame_counts(encoder_args)))

    def encode_frames(self, encode, encoder_args, keep):
        """The kept frames' pixels, and their tokens' pooling windows moved to where those frames now sit."""
        pixels, windows = encoder_args["pixel_values_videos"], encoder_args["video_token_pooling"]
        counts, grids = self.frame_counts(encoder_args), self.token_grids(encoder_args)
        firsts = torch.tensor([0, *counts]).cumsum(0)
        kept = torch.cat([frames.cpu() + first for frames, first in zip(keep, firsts.tolist())])
        new_frame = torch.full((int(firsts[-1]),), -1)
        new_frame[kept] = torch.arange(len(kept))  # per frame of the call, its place among the kept ones
        kept_counts = torch.tensor([len(frames) for frames in keep])
        new_first = (kept_counts.cumsum(0) - kept_counts).repeat_interleave(torch.tensor(counts))  # of its video
        if not compat.MOLMO2_POOLING_PER_VIDEO:
            new_first = torch.zeros_like(new_first)  # indices run over the whole call's patches
        token_frame = torch.arange(len(new_frame)).repeat_interleave(
            torch.tensor([h * w for t, h, w in grids for _ in range(t)])
        )
        tokens = (new_frame[token_frame] >= 0).to(windows.device)
        base = (new_frame - new_first)[token_frame[tokens.cpu()]].to(windows.device)[:, None] * pixels.shape[1]
        kept_windows = windows[tokens]
        output = encode(**{
            **encoder_args,
            "pixel_values_videos": pixels[kept.to(pixels.device)],
            "video_token_pooling": torch.where(kept_windows >= 0, base + kept_windows % pixels.shape[1], -1),
            "video_grids": torch.tensor([(len(frames), h, w) for frames, (_, h, w) in zip(keep, grids)]).to(
                encoder_args["video_grids"]
            ),
        })
        output.pooler_output = units_in_place(output.pooler_output, keep, counts)
        return output

    @property
    def _feature_layers(self) -> list[int]:
        """The tower layers whose outputs the pooler reads (`vision_feature_layer` k: layer k, or the k-th last)."""
        depth = len(self.vision_tower.layers)
        return [layer % depth for layer in self.config.adapter_config.vision_feature_layer]

    def tower_layers(self):
        return self.vision_tower.layers, max(self._feature_layers) + 1

    def tower_heads(self, attention, hidden, kwargs, project=None):
        project = project or applied_to(hidden)

        def heads(projection):  # (images, heads, patches, d)
            return project(projection).unflatten(-1, (-1, attention.head_dim)).transpose(1, 2)

        queries, keys, values = heads(attention.q_proj), heads(attention.k_proj), heads(attention.v_proj)
        groups = queries.shape[1] // keys.shape[1]
        return queries, keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)

    def tower_attention(self):
        return self.vision_tower.layers[max(self._feature_layers)].self_attn

    def tower_records(self):
        return {**super().tower_records(), "pooling": self.multimodal_model.multi_modal_projector}

    def tower_attention_received(self, call):  # (frames, patches)
        queries, keys, _ = self.tower_heads(self.tower_attention(), call.argument("hidden_states", 0), call.kwargs)
        return attention_received(queries, keys)

    def tower_token_scores(self, records, input_ids, standing=None):
        """One row per frame the tower's attention ran on: each token's mean over its window of patches (every
        frame's windows are the first frame's, moved to its patches, as the processor makes them)."""
        frames_encoded = next(call for call in records if call.kind == "tower").argument("pixel_values", 0).shape[0]
        all_windows = next(call for call in records if call.kind == "pooling").argument("pooled_patches_idx", 1)
        windows = all_windows[: len(all_windows) // frames_encoded]  # (tokens of a frame, window)
        valid = windows >= 0
        frames = []
        for call in records:
            if call.kind == "attention":
                received = self.tower_attention_received(call)[:, windows.clamp_min(0)] * valid
                frames.extend(received.sum(dim=-1) / valid.sum(dim=-1).clamp_min(1))
        return frames
