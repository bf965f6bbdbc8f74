"""Prompts entering the language model: the prefill of a compressed generation starts (its tower scores, its
state, its pre-LLM reductions) and finishes (the caller's sequence restored, the stats, the state on the cache)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from ..layout import VisualLayout
from ..methods.base import PRE_ENCODER, PRE_LLM
from ..stats import CompressionStats, Timer
from . import compat
from .encoder import (
    TowerCall,
    frames_chosen_from_features,
    layouts_with_tower_scores,
    refuse_unencoded_last_tokens,
    tokens_encoded,
)
from .groups import computed_positions, last_real_slots, llm_attention_mask, restore_sequence
from .prefill import begin_generation, reduce_before_llm
from .state import GenerationState

if TYPE_CHECKING:
    from ..adapters.base import Adapter
    from ..methods.base import Method


class Prompt(NamedTuple):
    """What the multimodal model's call tells the language model's call about the prompt in flight."""

    layouts: list[VisualLayout] | None
    rows_per_sample: int  # rows generate() made of each sample
    generating: bool
    input_ids: torch.Tensor | None
    model_masks: tuple  # the multimodal model's 2-D padding mask and its tokens' bidirectional blocks (or None)
    cached: int  # tokens in the cache before it (a video after a cached system prompt), which its layers attend to


class Prompts:
    """The Engine's handling of a prompt's prefill (a mixin: it shares the engine's adapter, method and per-thread
    state)."""

    adapter: Adapter
    method: Method

    def _start_prefill(self, args, kwargs):
        prompt, self._local.prompt = getattr(self._local, "prompt", None), None
        encoded, self._local.encoded = getattr(self._local, "encoded", None), None
        if kwargs.get("inputs_embeds") is None or prompt is None or prompt.layouts is None:
            self.last_stats = CompressionStats.empty(self.method, note="no input_ids: visual tokens unknown, untouched")
        elif not any(layout.num_tokens for layout in prompt.layouts):
            self.last_stats = CompressionStats.empty(self.method, note="no video tokens: passed through untouched")
        else:
            return self._compress_prompt(prompt, encoded, args, kwargs)
        self._add_image_encoding(self.last_stats)
        return None

    def _compress_prompt(self, prompt: Prompt, encoded, args, kwargs):
        if getattr(self._local, "in_generate", False) and compat.cache_of(kwargs) is None:
            raise ValueError(
                f"generate(use_cache=False) is not supported with {self.method.name} at ratio {self.method.ratio:g}: "
                "without a cache every step is a new prompt, compressed again (in-LLM choices change from step to "
                "step, decoding-time selection never runs); generate with the cache (use_cache=True, the default)"
            )
        layouts, scoring = prompt.layouts, Timer()
        if self.method.uses_tower_attention():  # the calls of the encoding these features came from, once
            records, self._local.tower_calls = getattr(self._local, "tower_calls", []), []
            records = encoded.take_tower_calls() if encoded is not None else records
            with scoring.measure(kwargs["inputs_embeds"].device):
                layouts = self._with_tower_scores(records, prompt, encoded)
        state = begin_generation(
            self.method, layouts, kwargs, prompt.rows_per_sample, prompt.generating, prompt.model_masks, prompt.cached
        )
        state.stats.compression_time.add(scoring)
        self._local.state = state
        state.layer_additions = self.adapter.take_layer_additions(kwargs)  # added below, to the kept tokens
        if encoded is not None:
            compression_time, encoder_time = encoded.take_times()
            state.stats.compression_time.add(compression_time)
            state.stats.encoder_time.add(encoder_time)
        self._add_image_encoding(state.stats)
        if PRE_ENCODER in self.method.stages and (encoded is None or not encoded.units):  # the tower saw every frame
            encoded = frames_chosen_from_features(self.method, kwargs["inputs_embeds"], layouts, prompt.rows_per_sample)
            state.stats.compression_time.add(encoded.take_times()[0])
        kept = tokens_encoded(encoded, layouts, prompt.rows_per_sample)
        if kept is not None and not encoded.from_features:
            refuse_unencoded_last_tokens(self.method, kept, layouts, last_real_slots(state.groups[0]))
            state.stats.has_tower = self.adapter.has_tower
            for sample, (_, fraction) in zip(state.stats.samples, kept[:: prompt.rows_per_sample]):
                sample.encoder_ratio = fraction
        if PRE_LLM not in self.method.stages and kept is None:
            group, cache = state.groups[0], compat.cache_of(kwargs)
            if group.blocks is not None and compat.preallocated(cache):
                # generate built the masks for a static cache with the model's class rule, which may not be its
                # forward's (Gemma 4 Unified's): the layers before an in-LLM reduction take ours, as those after
                embeds = kwargs["inputs_embeds"]
                kwargs["attention_mask"] = llm_attention_mask(self.adapter, group, embeds, cache, group.blocks)
            return args, kwargs
        reduce_before_llm(self.method, self.adapter, state, kwargs, kept and [tokens for tokens, _ in kept])
        return args, kwargs

    def _add_image_encoding(self, stats: CompressionStats) -> None:
        """The image encoder's time since the last prefill (a family encoding a video's frames as images)."""
        timer, self._local.image_encoding = getattr(self._local, "image_encoding", None), None
        if timer is not None:
            stats.encoder_time.add(timer)

    def _with_tower_scores(self, records: list[TowerCall], prompt: Prompt, encoded) -> list[VisualLayout]:
        if not records:
            raise RuntimeError(
                f"{self.method.name} ranks tokens by the vision tower's attention, but no tower call was seen for this "
                "prompt: pass the pixels to the forward or generate() (not features encoded before patching, nor "
                "features whose tower attention an earlier forward already read)"
            )
        rows = prompt.rows_per_sample
        with torch.no_grad():
            encoded_units = encoded.keep if encoded is not None and self.adapter.encoder_side else None
            scores = self.adapter.tower_token_scores(records, prompt.input_ids[::rows], encoded_units)
        return layouts_with_tower_scores(prompt.layouts, scores, encoded_units, rows)

    def _finish_prefill(self, state: GenerationState, output) -> None:
        """The prefill's hidden states back at the caller's positions (dropped ones zero), its stats, and its state
        on the cache it filled."""
        state.layer_additions = None
        for group in state.groups:
            group.end_prefill()
        if state.reduced:
            hidden = output.last_hidden_state
            origin = computed_positions(state.groups[-1], hidden.shape[1])
            output.last_hidden_state = restore_sequence(hidden, origin, state.full_length)
            self._ignore_uncomputed(origin, state.full_length)
        cached = state.take_in_prefix()
        state.stats.num_layers = len(self.adapter.layers)
        _finish_prefill_stats(state, cached)
        self.last_stats = state.stats
        cache = compat.output_cache(output)
        if cache is not None:
            state.attach(cache)


def _finish_prefill_stats(state: GenerationState, cached: int) -> None:
    """Kept positions in the caller's sequence; each layer's positions, of the `cached` tokens before it not (its
    outputs hold this call's tokens only)."""
    stats, last = state.stats, state.groups[-1]
    rows = stats.rows_per_sample
    for sample, slots, origin in zip(stats.samples, last.visual_slots[::rows], last.origin[::rows]):
        sample.kept_positions = origin[slots].tolist()
    if state.reduced:
        stats.layer_positions = [(group.start_layer, group.origin[:, cached:]) for group in state.groups]
    stats.finished = True
