"""Nemotron-H Omni (`nemotron_h_omni`; NVIDIA Nemotron 3 Nano Omni): a RADIO tower encodes a video's tubelets (two
frames stacked along the channels) as a batch of images, each led by class and register tokens it drops; a 2 × 2
pixel shuffle and an MLP make each tubelet an h × w grid of tokens. Each tubelet sits in a run of its own -
`Frame 1 sampled at ... and frame 2 ...: <img>` + its tokens + `</img>` -, its placeholders the image token's. The
language model is a causal LM of its own over a Nemotron-H decoder: Mamba-2 layers (a recurrent state, no keys or
values), softmax-attention layers without positional encoding, and MoE / MLP layers, each a block of its own.

Where it departs from the stock forward: none beyond the engine's rules. The model's own token pruning (Efficient
Video Sampling, `video_pruning_rate` > 0) drops tokens inside the forward, after the placeholders are filled; a
method compresses only with it off (`evs` is the same rule, batched, at any ratio). Inside the tower, tubelets and
tokens fold as in other batched towers, the class and register tokens leading each tubelet left as they are; the
rows expand back at its last layer, before its forward drops those tokens. A method scoring at a Mamba, MoE or MLP
layer reads the next attention layer's q/k on the hidden states entering it. (The stock model takes no
images beside videos in one prompt: it scatters the images' features over every image token.)"""

from __future__ import annotations

import torch
import transformers

from ..engine import compat
from ..engine.folding import BATCHED
from ..methods.base import PromptRefused
from .base import Adapter, vit_attention_received
from .prompt import frame_run_layouts, noted_grids, units_in_place
from .qwen3_5 import ScoredByNextAttentionLayer

ATTENTION_BLOCK = "full_attention"


class NemotronHOmniAdapter(ScoredByNextAttentionLayer, Adapter):
    model_type = "nemotron_h_omni"
    tower_has_cls = True  # RADIO's first class token leads each tubelet (then the other class and register tokens)
    tower_frames = BATCHED
    tower_expands_at_last_layer = True  # the tower's forward drops the class and register rows after its layers

    def __init__(self, model):
        if not compat.NEMOTRON_TUBELETS:
            raise ValueError(
                f"tokcompress supports Nemotron-H Omni from transformers 5.24, whose model takes a call's videos as "
                f"tubelets; this is transformers {transformers.__version__}: upgrade it"
            )
        super().__init__(model)

    @property
    def video_token_id(self) -> int:
        return self.config.image_token_id  # the processor fills videos with the image token

    # ------------------------------------------------------------------ decoder
    def attention_layer_indices(self):
        return [index for index, layer in enumerate(self.layers) if layer.block_type == ATTENTION_BLOCK]

    def project_queries(self, layer, hidden, cos, sin):  # no positional encoding: cos and sin are None
        return self._heads(layer, "q_proj", hidden)

    def project_keys(self, layer, hidden, cos, sin):
        return self._heads(layer, "k_proj", hidden)

    def project_values(self, layer, hidden):
        return self._heads(layer, "v_proj", hidden)

    def _heads(self, layer, projection: str, hidden: torch.Tensor) -> torch.Tensor:
        """(heads, n, d) of the attention block scoring at `layer`, on its normed input."""
        block = self.scoring_layer[layer]
        attention = block.mixer
        states = getattr(attention, projection)(block.norm(hidden.to(block.norm.weight.dtype)))
        return states.view(len(hidden), -1, attention.head_dim).transpose(0, 1)

    # ------------------------------------------------------------------ layout
    def video_layouts(self, input_ids, call_kwargs):
        rate = self.multimodal_model.video_pruning_rate
        if rate > 0:
            raise ValueError(
                f"Nemotron-H Omni prunes video tokens itself inside its forward (video_pruning_rate={rate}): set "
                "model.video_pruning_rate = 0 to compress with tokcompress (method 'evs' ranks tokens by its rule)"
            )
        grids = self._grids(input_ids, call_kwargs)
        encoded = (call_kwargs.get("mm_encoder_outputs") or {}).get("video")
        expanded = encoded is not None and len(encoded.pooler_output) > len(encoded[compat.ENCODED_GRIDS])
        layouts = frame_run_layouts(input_ids, grids, self.video_token_id, " (a unit here: a tubelet of two frames)")
        if expanded and any(len(layout.grids) > 1 for layout in layouts):  # a prompt holds several
            raise PromptRefused(
                "a prompt holding several videos, expanded for beams or returned sequences: Nemotron-H Omni repeats "
                "each video for them rather than each prompt's videos (transformers 5.24-5.25), so a row reads another "
                "video's features, patched or not; give each prompt one video, or generate one sequence per prompt"
            )
        return layouts

    def _grids(self, input_ids, call_kwargs) -> list[tuple[int, int, int]]:
        """Per video of the call, its (tubelets, height, width) grid of tokens: from its pixels, or (generate
        encodes up front and drops them) as noted on the encoded features (features encoded before the model was
        patched carry none: their token count does not tell a grid's shape)."""
        if call_kwargs.get("pixel_values_videos") is not None:
            return self.token_grids(call_kwargs)
        return noted_grids(call_kwargs, input_ids, self.video_token_id, self.model_type, "pixel_values_videos")

    def tubelets(self, encoder_args) -> torch.Tensor:
        """The call's videos as tubelets, (videos, tubelets, 2 · 3, H, W): as the video processor hands them, or
        packed as the model packs one video's frames given as (frames, 3, H, W) (deprecated in transformers), the
        last frame repeated to fill the last tubelet."""
        pixels = encoder_args["pixel_values_videos"]
        if pixels.dim() == 5:
            return pixels
        step = self.config.video_temporal_patch_size
        pixels = torch.cat([pixels, pixels[-1:].expand(-len(pixels) % step, -1, -1, -1)])
        return pixels.reshape(1, -1, step * pixels.shape[1], *pixels.shape[-2:])

    def token_grids(self, encoder_args) -> list[tuple[int, int, int]]:
        videos, tubelets, _, height, width = self.tubelets(encoder_args).shape
        side = self.vision_tower.patch_size * round(1 / self.config.downsample_ratio)  # pixels a token spans
        return [(tubelets, height // side, width // side)] * videos

    def note_encoded(self, output, encoder_args):
        output[compat.ENCODED_GRIDS] = self.token_grids(encoder_args)

    # ------------------------------------------------------------------ tower
    def frame_signatures(self, encoder_args):  # each tubelet's patches projected, without the position table
        embeddings = self.vision_tower.embeddings
        projection, size = embeddings.video_patch_projection, embeddings.patch_size
        videos = self.tubelets(encoder_args).to(projection.weight.dtype)  # (videos, tubelets, C, H, W)
        patches = videos.unfold(3, size, size).unfold(4, size, size)  # (videos, tubelets, C, rows, cols, p, p)
        patches = patches.permute(0, 1, 3, 4, 2, 5, 6).flatten(4).flatten(2, 3)  # channel-major patches
        return list(projection(patches))

    def encode_frames(self, encode, encoder_args, keep):
        """Every kept tubelet in one tower call; each video's features (and tower rows) in place among its
        tubelets, dropped ones zeros."""
        pixels = self.tubelets(encoder_args)
        kept = torch.cat([video[units.to(pixels.device)] for video, units in zip(pixels, keep)])[None]
        output = encode(**{**encoder_args, "pixel_values_videos": kept})
        (features,) = output.pooler_output
        rows = output.last_hidden_state[0]  # (kept tubelets, tower tokens, D)
        counts, totals = [len(units) for units in keep], [pixels.shape[1]] * len(keep)
        per_unit = features.shape[0] // kept.shape[1]
        output.pooler_output = units_in_place(features.split([count * per_unit for count in counts]), keep, totals)
        tower_rows = units_in_place(rows.split(counts), keep, totals)
        output.last_hidden_state = torch.stack(tower_rows).unflatten(1, (pixels.shape[1], -1))
        return output

    def frame_counts(self, encoder_args):
        videos, tubelets = self.tubelets(encoder_args).shape[:2]
        return [tubelets] * videos

    @property
    def tower_prefix_tokens(self):
        return self.vision_tower.config.num_summary_tokens

    def tower_layers(self):
        layers = self.vision_tower.encoder.layer
        return layers, len(layers)

    def tower_layer_attention(self, layer):
        return layer.attention

    def tower_attention(self):
        return self.vision_tower.encoder.layer[-1].attention

    def tower_attention_received(self, call):  # (tubelets, tower tokens), from the first class token's row
        return vit_attention_received(self.tower_attention(), call.argument("hidden_states", 0), self.tower_has_cls)

    def tower_token_scores(self, records, input_ids, standing=None):  # one score row per tubelet it encoded
        units, grid = [], None
        for call in records:
            if call.kind == "tower":  # its pixels (tubelets, C, H, W): the patch grid of the calls that follow
                height, width = call.argument("pixel_values", 0).shape[-2:]
                grid = (height // self.vision_tower.patch_size, width // self.vision_tower.patch_size)
            elif call.kind == "attention":
                units.extend(self.pooled_tower_scores(self.tower_attention_received(call), grid))
        return units

    def pooled_tower_scores(self, scores: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(tubelets, tower tokens) → (tubelets, tokens): the class and register tokens left out, per visual token
        the mean over the 2 × 2 patches (of a `grid` of rows × columns) the pixel shuffle gathers into it."""
        patches = scores[:, self.vision_tower.config.num_summary_tokens :]
        shuffled = self.multimodal_model.pixel_shuffle(patches.reshape(-1, *grid, 1), self.config.downsample_ratio)
        return shuffled.flatten(1, 2).mean(dim=-1)
