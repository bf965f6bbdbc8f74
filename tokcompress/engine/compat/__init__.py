"""The compatibility seam: the only code that knows transformers' version-specific names and signatures.

transformers renames what the engine hooks every few releases; everything the engine reads from or writes
to call keywords, outputs, mask builders and caches goes through here, so a release that moves one of them
is an edit to this file. Touchpoints, from the floor (5.23) to the newest tested release (5.25):

- the cache keyword of every forward (multimodal model, language model, decoder layer, attention):
  `past_key_values` until 5.23, `cache` from 5.24 (the old name is still accepted, with a deprecation, until
  5.40). A hook sees the keyword as the caller spelt it, so both are read; a replacement is written under the
  name the call used, since a forward given both silently uses `cache`;
- the cache field of model outputs: `.past_key_values`, then `.cache` (5.24);
- the mask builders `create_causal_mask` / `create_sliding_window_causal_mask` / `create_recurrent_attention_mask`:
  their cache argument was renamed the same way (5.24), the layer type picks the builder (`config.layer_types`;
  "linear_attention" layers keep a recurrent state and take the 2-D padding mask, "indexed_attention" ones - a
  DeepSeek sparse-attention indexer beside the attention - always a mask tensor, which the indexer reads);
- the cache protocol: `cache.update(keys, values, layer_idx, ...)` gained a `kwargs=` argument (5.24), and an
  indexed layer's indexer caches its own keys through `cache.update_indexer(keys, layer_idx)`; a layer's
  keys live in `cache.layers[i].keys` (a static layer's: every preallocated slot, the first `get_seq_length()`
  filled, each layer counting its own);
- the masks `generate` builds up front for a compileable (static) cache and hands the forward instead of the 2-D
  padding mask (`prepare_inputs_for_generation`): 4-D, or a dict per layer type;
- the attention backend: `config._attn_implementation`, and `AttentionInterface`, where a registered function
  whose name contains "flash" gets packed sequences (`cu_seq_lens_q`, `max_length_q`) in one call - how the
  Qwen-VL vision attention is run without its per-window loop;
- position ids: a plain Qwen-VL forward hands the LM M-RoPE ids of shape (3, B, L), `generate` (4, B, L) with
  text positions in row 0;
- the video encoder: `get_video_features(pixel_values_videos, ...)` on the multimodal model, called by its
  forward and, up front, by `generate`; a forward given `mm_encoder_outputs={"video":
  BaseModelOutputWithPooling}` instead of `pixel_values_videos` skips it; the features are its
  `pooler_output` ((videos, tokens, D) for LLaVA-OV, a tuple of (tokens, D) per video for Qwen-VL);
- Molmo2's `video_token_pooling`: indices into each video's own patches from 5.24, into the batch's before;
- Muse Glimmer's token grouping after its tower (`get_vision_pixel_shuffle_index`, its modeling file's own);
- Qwen2.5-VL's vision window order (`transformers.vision_utils.get_vision_window_index`);
- Qwen3-VL's DeepStack: its multimodal model hands the language model `visual_pos_masks` (B, L) and
  `deepstack_visual_embeds` (one (visual tokens, D) tensor per early layer), added after those layers;
- inputs with one entry per token, which a continuation that re-feeds already cached tokens must trim;
- `generate`'s per-model helpers that an instance attribute can stand in for: `_reorder_cache` (beam search
  reorders the cache), `_expand_inputs_for_generation` (beams / returned sequences copy each sample),
  `_get_candidate_generator` (only speculative decoding asks for it), `_prepare_position_ids_for_generation`
  (the prompt's positions, before the first forward: M-RoPE models run their rope-index pass there), and
  `prepare_inputs_for_generation` (each step; it gets the whole conversation and feeds the forward the part past
  the cache - Ovis2.5's with neither a mask nor positions - with a `next_sequence_length`, except for the chunks of a
  chunked prefill, `prefill_chunk_size`, which it gets one by one without);
- model families newer than the floor (Ovis2.5: 5.25), by `model_type`.

The supported range itself (`FLOOR`, `NEWEST_TESTED`) is `tokcompress.releases`, checked on import.

The family half - one family's version flags and its modeling file's own helpers - is `compat.families`, whose
names this module re-exports.

Not touched, so not here: `rope_deltas` (left the outputs in 5.23) and LLaVA-OneVision's `video_hidden_states`
(deprecated in 5.24 for `video_outputs.pooler_output`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers.masking_utils import (
    blockwise_overlay,
    create_causal_mask,
    create_recurrent_attention_mask,
    create_sliding_window_causal_mask,
    sliding_window_overlay,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import AttentionInterface

from .families import (  # noqa: F401 - the family half of the seam, read as `compat.X` too
    KIMI_CHUNKS,
    MOLMO2_POOLING_PER_VIDEO,
    NEMOTRON_TUBELETS,
    muse_glimmer_token_rows,
    ships,
    vision_rope,
    vision_window_order,
)

# transformers renamed the cache everywhere at once (5.24); the mask builder's signature tells which name it uses.
CACHE_KEYWORD = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
_CACHE_KEYWORDS = tuple(dict.fromkeys((CACHE_KEYWORD, "past_key_values")))  # current name first

# layer types that carry a recurrent state, no KV: Qwen3.5's gated delta layers, LFM3's short convolutions
RECURRENT_LAYERS = frozenset({"linear_attention", "conv"})
# layer types that mix nothing across tokens, so take no mask and cache nothing: Nemotron-H's MoE and MLP blocks
TOKENWISE_LAYERS = frozenset({"moe", "mlp"})
SLIDING_LAYER = "sliding_attention"  # a window over the last tokens, whose cache keeps only those
# causal, its keys chosen per query by a DeepSeek sparse-attention indexer (dots3), which reads the mask tensor
INDEXED_LAYER = "indexed_attention"
_MASK_BUILDERS = {
    "full_attention": create_causal_mask,
    INDEXED_LAYER: lambda **arguments: create_causal_mask(**{**arguments, "allow_is_causal_skip": False}),
    SLIDING_LAYER: create_sliding_window_causal_mask,
    # the 2-D padding mask, None where nothing is padded
    **dict.fromkeys(RECURRENT_LAYERS, create_recurrent_attention_mask),
    **dict.fromkeys(TOKENWISE_LAYERS, lambda **_: None),
}


def cache_of(call_kwargs: dict[str, Any]) -> Any:
    """The KV cache a forward call was given, under either name, or None."""
    return next((call_kwargs[name] for name in _CACHE_KEYWORDS if call_kwargs.get(name) is not None), None)


def replace_cache(call_kwargs: dict[str, Any], cache: Any) -> None:
    """Give the call `cache` instead of the one it was given, under the keyword it was given."""
    name = next((name for name in _CACHE_KEYWORDS if call_kwargs.get(name) is not None), CACHE_KEYWORD)
    call_kwargs[name] = cache


def output_cache(output: Any) -> Any:
    """The KV cache a model output carries, or None."""
    return output.get(CACHE_KEYWORD)


def cached_entries(cache: Any, layer_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Hkv, K, d) keys and values that `cache` holds for decoder layer `layer_index` (of a static cache: its
    filled slots)."""
    layer = cache.layers[layer_index]
    filled = int(layer.get_seq_length())
    return layer.keys[:, :, :filled], layer.values[:, :, :filled]


def preallocated(cache: Any) -> bool:
    """Whether `cache` holds fixed slots from the start (a static cache), which a layer's attention reads all of."""
    return cache is not None and bool(getattr(cache, "is_compileable", False))


def static_prefill_mask(mask: Any, padding: torch.Tensor, cache: Any, layer_index: int) -> Any:
    """A prefill's mask over `padding.shape[1]` tokens made to fit a static cache's layer, which hands its attention
    every slot (a sliding layer's window, or the prompt where it is longer): the empty slots masked out. Flash
    attention takes the 2-D padding mask and cuts the keys to its width."""
    if mask is None or mask.ndim == 2:
        return padding
    missing = max(padding.shape[1], cache.layers[layer_index].max_cache_len) - mask.shape[-1]
    if missing <= 0:
        return mask
    masked = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min if mask.is_floating_point() else 0
    return torch.nn.functional.pad(mask, (0, missing), value=masked)


def is_padding_mask(mask: Any) -> bool:
    """Whether a forward's `attention_mask` is the 2-D padding mask (or None: no padding), not masks `generate`
    built up front for a static cache."""
    return mask is None or (isinstance(mask, torch.Tensor) and mask.ndim == 2)


def attention_implementation(config: Any) -> str:
    return config._attn_implementation


# Ours for a packed vision tower ("flash" in the names: its attention then hands them every window in one call,
# with `cu_seqlens`): the fused varlen kernel where it runs, else one sdpa call per window; both add the log-size
# bias of tokens folded inside the tower, passed as the attention call's `KEY_BIAS` keyword.
VARLEN_ATTENTION = "tokcompress_flash_varlen"
SEGMENT_ATTENTION = "tokcompress_flash_segments"
KEY_BIAS = "tokcompress_key_bias"


def _packed_attention_forward(module, query, key, value, attention_mask, scaling=None, *, fused: bool, **kwargs):
    """HF attention-interface glue: (1, heads, total, d) packed windows → (1, total, heads, d); grouped key/value
    heads (EXAONE 4.5's tower) repeated for the queries' heads, as HF's own interfaces do."""
    from ...ops import repeat_heads, varlen_attention

    key, value = (repeat_heads(states, query.shape[1], dim=1) for states in (key, value))
    out = varlen_attention(
        query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
        kwargs["cu_seq_lens_q"], kwargs["max_length_q"], scaling, kwargs.get(KEY_BIAS), fused,
    )
    return out[None], None


# registered once, so that a saved patched model finds them again when loaded in a fresh process
AttentionInterface.register(VARLEN_ATTENTION, functools.partial(_packed_attention_forward, fused=True))
AttentionInterface.register(SEGMENT_ATTENTION, functools.partial(_packed_attention_forward, fused=False))


def use_attention(config: Any, implementation: str) -> str:
    """Switch a config's attention implementation; returns the previous one."""
    previous, config._attn_implementation = config._attn_implementation, implementation
    return previous


def layer_type(config: Any, layer_index: int) -> str:
    """The decoder layer's attention type as the config names it (`layer_types`); full attention by default."""
    layer_types = getattr(config, "layer_types", None)
    return layer_types[layer_index] if layer_types else "full_attention"


def build_attention_mask(
    config: Any,
    layer_index: int,
    hidden: torch.Tensor,
    padding_mask: torch.Tensor,
    cache: Any,
    explicit: bool = False,
    blocks: torch.Tensor | None = None,
    blocks_past_window: bool = False,
):
    """The mask decoder layer `layer_index` expects, built by transformers' own builder for its layer type.

    explicit: always build the mask tensor (sdpa may otherwise return None and rely on `is_causal`).
    blocks: (B, L) per token its bidirectional block (-1: none; Gemma 4's vision tokens, a block per image or
    frame), whose tokens also attend to each other's later ones - inside the window of a sliding layer, or, with
    `blocks_past_window`, the whole block past it (Gemma 4 Unified's forward).
    """
    kind = layer_type(config, layer_index)
    arguments = dict(
        config=config,
        inputs_embeds=hidden,
        attention_mask=padding_mask,
        position_ids=None,
        layer_idx=layer_index,
        allow_is_causal_skip=not explicit,
        **{CACHE_KEYWORD: cache},
    )
    if blocks is None:
        return _MASK_BUILDERS[kind](**arguments)
    if preallocated(cache):  # its keys span its slots (a sliding layer's window, maybe past the prompt): no block
        slots = max(getattr(layer, "max_cache_len", 0) for layer in cache.layers)  # a KV-sharing layer holds none
        blocks = torch.nn.functional.pad(blocks, (0, slots), value=-1)
    if kind == SLIDING_LAYER and blocks_past_window:  # (causal and window) or block
        return create_sliding_window_causal_mask(**arguments, or_mask_function=blockwise_overlay(blocks))
    window = sliding_window_overlay(config.sliding_window) if kind == SLIDING_LAYER else None  # and (causal or block)
    return create_causal_mask(**arguments, or_mask_function=blockwise_overlay(blocks), and_mask_function=window)


PER_TOKEN_INPUTS = ("input_ids", "inputs_embeds", "position_ids", "token_type_ids", "mm_token_type_ids")
"""Forward inputs with one entry per token along their last sequence dimension."""

GENERATE = "generate"
REORDER_CACHE = "_reorder_cache"
EXPAND_INPUTS = "_expand_inputs_for_generation"
CANDIDATE_GENERATOR = "_get_candidate_generator"
PROMPT_POSITIONS = "_prepare_position_ids_for_generation"
PREPARE_INPUTS = "prepare_inputs_for_generation"


def is_prefill_chunk(prepare_kwargs: dict[str, Any]) -> bool:
    """Whether generate calls `prepare_inputs_for_generation` (these keywords) for one chunk of a chunked prefill."""
    return "next_sequence_length" not in prepare_kwargs


def inherited(model: Any, name: str):
    """Method `name` as the model's class defines it, past an instance attribute that stands in for it."""
    return inspect.getattr_static(type(model), name).__get__(model, type(model))


def call_inherited(model: Any, name: str, *args, **kwargs):
    return inherited(model, name)(*args, **kwargs)


def prompt_positions(model: Any, inputs: dict) -> torch.Tensor:
    """The position ids `generate` gives the prompt of `inputs` (M-RoPE models: from their grids)."""
    kwargs = {key: value for key, value in inputs.items() if key != "input_ids"}
    return call_inherited(model, PROMPT_POSITIONS, inputs["input_ids"], kwargs)


def reorder_cache(model: Any, cache: Any, beam_idx: torch.Tensor) -> Any:
    """What beam search does to reorder `cache` (the model's own `_reorder_cache`, else the cache's)."""
    if hasattr(type(model), REORDER_CACHE):
        return call_inherited(model, REORDER_CACHE, cache, beam_idx)
    cache.reorder_cache(beam_idx)
    return cache


ENCODE_VIDEOS = "get_video_features"
ENCODE_IMAGES = "get_image_features"  # InternVL and SmolVLM encode a video's frames as images
ENCODED_GRIDS = "tokcompress_video_grids"
"""Key we add to a `get_video_features` output where the prefill that reads it cannot tell its videos' grids
otherwise (`generate` encodes up front and drops the grid keywords): per video, its (frames, H, W) grid of LLM
tokens. A key, not an attribute: accelerate's device moves rebuild the output from its items."""
PROMPT_IDS = "tokcompress_prompt_ids"
"""Key under which an adapter that reads a prompt to tell its videos' units apart (`Adapter.encodes_by_prompt`) gets
the prompt's ids among a `get_video_features` call's arguments (taken out again before the stock call)."""
PREPARE_ENCODER = "_maybe_prepare_encoder_kwargs_for_generation"  # generate encodes the videos here, before its forward
ENCODING_RECORD = "tokcompress_encoding"
"""Key we add to a `get_video_features` output while a method compresses: what the encoding kept (which frame units
it encoded), so that any prefill reading those features - one `generate` hands them to, or a later forward reusing
them - drops the units the tower did not encode."""
DEEPSTACK_MASK, DEEPSTACK_FEATURES = "visual_pos_masks", "deepstack_visual_embeds"


def without_precomputed_geometry(encode: Any, encoder_args: dict[str, Any], modality: str = "video") -> dict[str, Any]:
    """A `get_video_features` call's arguments less the tower geometry its caller computed ahead for every frame
    (transformers' precomputed keywords - `video_cu_seqlens`, `video_position_ids`, `video_frame_lengths`: any
    `video_`-prefixed one the method does not name): for fewer frames, the tower computes its own."""
    named, prefix = inspect.signature(encode).parameters, f"{modality}_"
    return {name: value for name, value in encoder_args.items() if name in named or not name.startswith(prefix)}


def encoded_video(
    call_kwargs: dict[str, Any], modality: str = "video"
) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
    """The pre-encoded video features a call carries (InternVL's frames: modality "image"), or None."""
    encoded = (call_kwargs.get("mm_encoder_outputs") or {}).get(modality)
    return None if encoded is None else encoded.pooler_output


def encoding_record(call_kwargs: dict[str, Any], modality: str = "video") -> Any:
    """What the encoding of the pre-encoded video features a call carries kept (`ENCODING_RECORD`), or None."""
    encoded = (call_kwargs.get("mm_encoder_outputs") or {}).get(modality)
    return None if encoded is None else encoded.get(ENCODING_RECORD)


def encoder_output(features: torch.Tensor | tuple[torch.Tensor, ...]) -> Any:
    """What `get_video_features` returns, around the given features."""
    return BaseModelOutputWithPooling(pooler_output=features)


def bound_arguments(function: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments by name (positional ones included)."""
    bound = inspect.signature(function).bind_partial(*args, **kwargs)
    return {**bound.arguments.pop("kwargs", {}), **bound.arguments}


def without_key_bias(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """A forward pre-hook: the call with its float `attention_mask` less proportional attention's key bias (the
    positive entries: allowed keys are 0, masked ones the dtype's minimum)."""
    bound = _forward_signature(type(module)).bind(module, *args, **kwargs)
    mask = bound.arguments.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.is_floating_point():
        bound.arguments["attention_mask"] = mask.clamp_max(0)
    return bound.args[1:], bound.kwargs  # less `self`


@functools.cache
def _forward_signature(module_type: type) -> inspect.Signature:
    """A module class's `forward` signature, read once (a pre-hook binds every call of every layer with it)."""
    return inspect.signature(module_type.forward)


def positions_already_seen(last_seen: torch.Tensor, positions: torch.Tensor | None) -> int | None:
    """How many tokens at `positions` lie at or before `last_seen` (the last position a generation saw).

    Position ids come as 1-D (B, L), generate's M-RoPE (4, B, L) with the sequence position in row 0, or, when
    generate continues text after a video, (1, B, L) text positions shifted by `rope_deltas` (equal to the
    M-RoPE rows of a text token). A plain forward's (3, B, L) ids carry no sequence position: None.
    """
    if positions is None or positions.ndim != last_seen.ndim:
        return None
    if positions.ndim == 2:
        return int(last_seen[0, -1] - positions[0, 0]) + 1
    if positions.shape[0] == 4 and last_seen.shape[0] == 4:
        return int(last_seen[0, 0, -1] - positions[0, 0, 0]) + 1
    if positions.shape[0] == 1:
        return int(last_seen[-1, 0, -1] - positions[0, 0, 0]) + 1
    return None


def mrope_grid_rows(position_ids: torch.Tensor) -> torch.Tensor:
    """The temporal / height / width rows of M-RoPE ids ((3, B, L), or (4, B, L) with text rows first)."""
    return position_ids[-3:]


class SelectedKV:
    """Stands in for the cache inside one layer's attention: stores the new entries, returns only selected ones.

    `index` (B, K') lists, per sample, the cache slots to read (this step's new entries included).
    """

    def __init__(self, cache: Any, index: torch.Tensor):
        self.cache = cache
        self.index = index

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = self.cache.update(key_states, value_states, layer_idx, *args, **kwargs)
        # keys and values may differ in width (MLA caches a latent and a RoPE'd key part)
        return tuple(
            states.gather(2, self.index[:, None, :, None].expand(-1, states.shape[1], -1, states.shape[-1]))
            for states in (keys, values)
        )

    def update_indexer(self, keys, layer_idx):
        """An indexed layer's indexer keys (B, K, d): stored, and the selected ones returned, as the attention's."""
        keys = self.cache.update_indexer(keys, layer_idx)
        return keys.gather(1, self.index[:, :, None].expand(-1, -1, keys.shape[-1]))

    def __getattr__(self, name):
        return getattr(self.cache, name)
