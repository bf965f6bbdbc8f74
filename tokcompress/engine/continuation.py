"""Calls that continue a KV cache - each decoding step, a conversation's next turn, a hand-written loop - as the
multimodal model gets them.

A cache no compressed generation filled (a cached system prompt, a first turn without video) holds every token at
every layer: a video after it is compressed as a prompt's, its layers attending to the cached tokens too (except
where `_why_uncompressed` says why not). A compressed generation's cache continues as the generation started,
whatever patch is in place now: fed only the tokens it has not seen, at the positions it counts. Video or images
such a call brings pass through uncompressed (its layers cached different tokens, so no prefill can be shared over
them): the tower encodes them whole, a warning and the stats say so, and features whose encoding left frame units
out are refused."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from ..layout import VisualLayout
from ..stats import CompressionStats
from . import compat
from .decode import new_token_columns, next_positions, skip_tokens_already_cached
from .state import GenerationState

if TYPE_CHECKING:
    from ..adapters.base import Adapter
    from ..methods.base import Method

CONTINUING = (
    "this call continues a cache, and no prefill follows to drop them: encode the video again, or pass its pixels"
)

# why a compressed generation's next turn passes its video through
AFTER_COMPRESSION = "the layers of the compressed conversation before it cached different tokens"


class Continuations:
    """The Engine's handling of calls that continue a cache (a mixin: they share the engine's adapter, method and
    per-thread state)."""

    adapter: Adapter
    method: Method

    def _why_uncompressed(self, cache) -> str | None:
        """Why a call continuing `cache` cannot compress the video it brings; None where it can."""
        if GenerationState.of(cache) is not None:
            return AFTER_COMPRESSION
        if compat.preallocated(cache):
            return "a static cache is filled prompt by prompt"
        if not self.adapter.grids_after_cache:
            return f"{self.adapter.model_type}'s generate hands a call after cached tokens no frame grids"
        if self.adapter.recurrent_llm:
            return (
                "the language model's recurrent layers would carry their state through the padding compression "
                "leaves between the cache and the video"
            )
        if self.adapter.sliding_llm:
            return (
                "the language model's sliding-window layers would count the padding compression leaves between the "
                "cache and the video in their window, and may no longer hold cached tokens its scores read"
            )
        if self.method.reads_every_prompt_token():
            return f"{self.method.name} ranks by every prompt token's attention, and the cached ones' are not at hand"
        return None

    def _refuse_features_missing_frames(self, kwargs, why: str) -> None:
        """A ValueError where a call brings video features whose encoding left frame units out of the tower (zeros
        in their place) or folded them (copies), with no prefill to drop those: the LLM would read them."""
        carried = compat.encoding_record(kwargs, self.adapter.video_modality)
        if carried is not None and (carried.keep is not None or carried.layer_share is not None):
            raise ValueError(
                "these video features were encoded while a method left frame units out of the vision tower or folded "
                f"them (zeros or copies in their place), and {why}"
            )

    def _note_later_video(
        self, state: GenerationState | None, layouts: list[VisualLayout], why: str, rows: int = 1
    ) -> None:
        """A call continuing a cache brings video tokens, which pass through uncompressed (`why`): the stats and a
        warning say so. `rows`: generate's rows of a sample (beams), where no state tells."""
        rows = state.stats.rows_per_sample if state is not None else rows
        count = sum(layout.num_tokens for layout in layouts[::rows])
        if not count:
            return
        warnings.warn(
            f"tokcompress: {count} video tokens continue a cached conversation and are not compressed ({why}); to "
            "compress them, send the conversation without the cache, or the video in the call that fills it"
        )
        if state is None:  # the cache holds no compressed generation: these stats are the call's own
            self.last_stats = state_stats = CompressionStats.empty(self.method, note="")
        else:
            state_stats = state.stats
        state_stats.later_visual += count

    def _continue_generation(self, state: GenerationState, args, kwargs, conversation: int | None):
        """A call that continues a compressed generation's cache: fed only the tokens it has not seen, at the
        positions it counts."""
        skip_tokens_already_cached(state, kwargs, conversation, self.adapter.llm_token_ids)
        fed = _sequence_length(args, kwargs)
        if fed > 1:  # a chunk (a one-token decoding step brings no video, nor vision blocks)
            self._refuse_features_missing_frames(kwargs, CONTINUING)
            try:
                layouts = self.adapter.visual_layouts(kwargs)
            except ValueError:  # no layout to read: it passes through, as every continuation's tokens do
                layouts = None
            if layouts:
                self._note_later_video(state, layouts, AFTER_COMPRESSION)
        # the vision blocks of a continuation that brings its own, and its padding, read here: a model may hand its
        # LLM a built mask instead of the 2-D one (Molmo2's)
        self._local.chunk_blocks = self.adapter.attention_blocks(kwargs) if fed > 1 else None
        last = state.last_positions
        new_columns = new_token_columns(kwargs.get("attention_mask"), last.shape[-2], fed, last.device)
        self._local.chunk_padding = new_columns
        given = kwargs.get("position_ids") is not None  # generate's; a hand-written call leaves them to HF
        if not self.adapter.mrope or not self.adapter.carries_vision(kwargs) or not given:
            # The chunk continues the generation from the last position it saw: HF would count from the (shorter)
            # cache, and for M-RoPE it may re-derive the earlier video's ids without its grid. An image or video of
            # its own in an M-RoPE model takes the ids generate computes from its grid.
            kwargs["position_ids"] = next_positions(last, new_columns)
        return args, kwargs


def _sequence_length(args, kwargs) -> int:
    for name in ("input_ids", "inputs_embeds"):
        if kwargs.get(name) is not None:
            return kwargs[name].shape[1]
    return args[0].shape[1]
