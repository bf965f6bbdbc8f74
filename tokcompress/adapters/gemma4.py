"""Gemma 4: each frame of a video sits on its own, `MM:SS <boi>` + its tokens + `<eoi>`, over a decoder of sliding-
window and global layers (each type with its own rotary table), per-layer inputs (E2B / E4B), KV sharing (the last
layers reuse the keys and values of the last unshared layer of their type) and, where the config says "vision",
vision blocks (an image, a frame) that attend both ways inside sliding layers. Its tower encodes a video's frames as
a batch of images, each padded to the processor's patch budget, and pools k × k patches to one token by position:
folding inside it gathers each layer's 2-D rotary tables and patch positions with the frames and patches that
remain, leaves the padding out, and expands the layers' output back before the pooler. `Gemma4Decoder` holds what
Gemma 4 Unified, which has no tower, shares (tokcompress/adapters/gemma4_unified.py).

Where it departs from the stock forward: tokens a method drops leave the sliding windows too (a window spans the
last kept tokens, as in the model's sliding cache); a merged token keeps its kept token's per-layer input and
rotary rows; reductions act before the first layer that stores KV for sharing at the latest (`reducible_layers`),
and in-LLM scores read a sliding layer's attention without its window."""

from __future__ import annotations

import functools

import torch

from ..engine import compat
from ..engine.folding import BATCHED
from ..ops import attention_received
from .base import Adapter, applied_to
from .prompt import frame_run_layouts, noted_grids, units_in_place

VISION_TYPES = (1, 2)  # `mm_token_type_ids` of image and video tokens


class Gemma4Decoder(Adapter):
    """What Gemma 4 and Gemma 4 Unified share: the decoder, the prompt's frames, and frames dropped before they are
    encoded (`video_position_ids`: each patch's (x, y), -1 padding at each frame's end)."""

    bidirectional_layer_types = (compat.SLIDING_LAYER,)  # global layers stay causal (HF's rule for Gemma 4)
    llm_token_inputs = ("per_layer_inputs",)
    patches_per_token_side: int = 1  # the side of the square of position-id patches a token pools

    def __init__(self, model):
        super().__init__(model)
        if self.language_model.config.use_bidirectional_attention == "all":
            raise ValueError(
                f"{self.model_type} with use_bidirectional_attention='all' attends to every token both ways (an "
                "encoder): tokcompress compresses decoders, whose last token reads the prompt"
            )

    @functools.cached_property
    def _kv_sources(self) -> list[int]:
        """Per decoder layer, the layer whose KV it reads: a sharing layer the last storing one of its type."""
        modes, kinds = self.language_model.config.kv_sharing_modes, self.language_model.config.layer_types
        stores = {kinds[i]: i for i, mode in enumerate(modes) if mode == "store"}  # the last of each type
        return [stores[kinds[i]] if mode == "reuse" else i for i, mode in enumerate(modes)]

    @property
    def reducible_layers(self):
        shared = [source for i, source in enumerate(self._kv_sources) if source != i]  # layers whose KV others read
        return min(shared) + 1 if shared else len(self._kv_sources)

    def kv_source(self, layer_index):
        return self._kv_sources[layer_index]

    def attention_blocks(self, call_kwargs):
        types = call_kwargs.get("mm_token_type_ids")
        if types is None or self.language_model.config.use_bidirectional_attention != "vision":
            return None  # the stock forward attends causally too
        vision = torch.isin(types, torch.tensor(VISION_TYPES, device=types.device))
        starts = vision & ~torch.nn.functional.pad(vision[:, :-1], (1, 0))
        return torch.where(vision, starts.long().cumsum(dim=1) - 1, -1)

    def project_queries(self, layer, hidden, cos, sin):
        queries = super().project_queries(layer, hidden, cos, sin)
        return queries * (layer.self_attn.scaling * queries.shape[-1] ** 0.5)  # its scale is 1, the scores' 1/√d

    # ------------------------------------------------------------------ layout
    def video_layouts(self, input_ids, call_kwargs):
        return frame_run_layouts(input_ids, self._grids(input_ids, call_kwargs), self.video_token_id)

    def _grids(self, input_ids, call_kwargs) -> list[tuple[int, int, int]]:
        """Per video of the call, its (frames, height, width) grid of tokens: from the patch positions, or (generate
        encodes up front and drops them) as noted on the encoded features."""
        if call_kwargs.get("video_position_ids") is not None:
            return self.token_grids(call_kwargs)
        fix = "video_position_ids and num_frames_per_video"
        return noted_grids(call_kwargs, input_ids, self.video_token_id, self.model_type, fix)

    def token_grids(self, encoder_args) -> list[tuple[int, int, int]]:
        """(frames, height, width) per video, from `video_position_ids` ((x, y) per patch, -1 padding) and
        `num_frames_per_video`."""
        extent = (encoder_args["video_position_ids"].amax(dim=1) + 1) // self.patches_per_token_side  # (frames, 2)
        grids = []
        for frames in extent.split(self.frame_counts(encoder_args)):
            (width, height), *others = frames.tolist()
            if any(other != [width, height] for other in others):
                raise ValueError("a Gemma 4 video whose frames differ in size (its processor sizes them alike)")
            grids.append((len(frames), height, width))
        return grids

    def note_encoded(self, output, encoder_args):
        output[compat.ENCODED_GRIDS] = self.token_grids(encoder_args)

    # ------------------------------------------------------------------ frames before they are encoded
    def frame_signatures(self, encoder_args):  # the patches' projection, without the position table all frames share
        embedded = self.patch_embeddings(encoder_args["pixel_values_videos"])  # (frames, patches, D)
        real = (encoder_args["video_position_ids"] != -1).all(dim=-1).sum(dim=1).tolist()
        return [
            video[:, : real[first]]  # the processor pads every frame at its end
            for video, first in zip(embedded.split(self.frame_counts(encoder_args)), self._first_frames(encoder_args))
        ]

    def patch_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(frames, patches, D): each patch projected as the model first projects it, before positions."""
        raise NotImplementedError

    def encode_frames(self, encode, encoder_args, keep):
        counts = self.frame_counts(encoder_args)
        index = torch.cat([frames + first for frames, first in zip(keep, self._first_frames(encoder_args))])
        index = index.to(encoder_args["pixel_values_videos"].device)
        kept = {
            **encoder_args,
            "pixel_values_videos": encoder_args["pixel_values_videos"][index],
            "video_position_ids": encoder_args["video_position_ids"][index],
            "num_frames_per_video": torch.tensor([len(frames) for frames in keep]),
        }
        output = encode(**kept)
        output.pooler_output = units_in_place(output.pooler_output, keep, counts)
        return output

    def frame_counts(self, encoder_args):
        counts = encoder_args["num_frames_per_video"]
        return counts.tolist() if isinstance(counts, torch.Tensor) else list(counts)

    def _first_frames(self, encoder_args) -> list[int]:
        counts = self.frame_counts(encoder_args)
        return [sum(counts[:v]) for v in range(len(counts))]


class Gemma4Adapter(Gemma4Decoder):
    model_type = "gemma4"
    tower_frames = BATCHED
    tower_row_kwargs = ("position_embeddings", "position_ids")
    tower_row_outputs = ("hidden_states",)  # its last_hidden_state is read out: pooled, standardised

    @property
    def patches_per_token_side(self):
        return self.config.vision_config.pooling_kernel_size

    # ------------------------------------------------------------------ tower
    def patch_embeddings(self, pixels):
        projection = self.vision_tower.patch_embedder.input_proj
        return projection(2 * (pixels.to(projection.weight.dtype) - 0.5))  # as the tower scales its input

    def tower_layers(self):
        layers = self.vision_tower.encoder.layers
        return layers, len(layers)

    def tower_readouts(self):
        return [self.vision_tower.pooler]

    def tower_real_tokens(self, encoder_args):  # the real patches lead each frame, padding follows
        real = (encoder_args["video_position_ids"] != -1).all(dim=-1).sum(dim=1)
        return real[self._first_frames(encoder_args)].tolist()

    def tower_projection_modules(self, attention):  # clippable: a clamp around each linear layer
        return [attention.q_proj, attention.k_proj, attention.v_proj]

    def tower_heads(self, attention, hidden, kwargs, project=None):
        """Queries scaled so that the usual 1/√d gives its logits (its scale is 1: q and k are normed)."""
        project = project or applied_to(hidden)
        cos, sin = kwargs["position_embeddings"]
        positions = kwargs["position_ids"]

        def heads(projection, norm, rotated):  # (images, heads, patches, d)
            states = norm(project(projection).unflatten(-1, (-1, attention.head_dim)))
            return (compat.vision_rope(states, cos, sin, positions) if rotated else states).transpose(1, 2)

        queries = heads(attention.q_proj, attention.q_norm, True) * (attention.scaling * attention.head_dim**0.5)
        keys, values = heads(attention.k_proj, attention.k_norm, True), heads(attention.v_proj, attention.v_norm, False)
        groups = queries.shape[1] // keys.shape[1]
        return queries, keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)

    def tower_attention(self):
        return self.vision_tower.encoder.layers[-1].self_attn

    def tower_attention_received(self, call):  # (frames, patches): attention each real patch got, 0 on padding
        positions = call.argument("position_ids", 3)
        rotary = {"position_embeddings": call.argument("position_embeddings", 1), "position_ids": positions}
        queries, keys, _ = self.tower_heads(self.tower_attention(), call.argument("hidden_states", 0), rotary)
        real = (positions != -1).all(dim=-1).sum(dim=1)  # the real patches lead, padding follows
        received = torch.zeros(positions.shape[:2], device=queries.device)
        for count in real.unique().tolist():  # frames of one size at once: every row attends to their real patches
            frames = (real == count).nonzero().squeeze(1)
            received[frames, :count] = attention_received(queries[frames], keys[frames, :, :count])
        return received

    def tower_token_scores(self, records, input_ids, standing=None):  # one score row per frame it encoded
        kernel = self.patches_per_token_side
        frames = []
        for call in records:
            if call.kind == "attention":  # pooled as the tower pools its patches: k × k of them a token, by position
                positions = call.argument("position_ids", 3)
                extent = (positions.amax(dim=1) + 1) // kernel  # (frames, 2): tokens across, down
                cell = positions.clamp_min(0) // kernel  # padding adds its 0 to token 0
                token = cell[..., 1] * extent[:, None, 0] + cell[..., 0]
                received = self.tower_attention_received(call)
                pooled = torch.zeros_like(received).scatter_add_(1, token, received) / kernel**2
                frames.extend(row[:count] for row, count in zip(pooled, extent.prod(dim=1).tolist()))
        return frames
