"""A generation's state: everything the engine remembers between a prompt's prefill and its decoding steps, kept
on the KV cache the generation fills."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..methods.base import Method
from ..stats import CompressionStats
from .groups import TokenGroup

STATE_ATTRIBUTE = "_tokcompress_generation"
"""Attribute of a KV cache that holds the state of the generation that filled it."""
IDENTITY_STATS_ATTRIBUTE = "_tokcompress_identity_stats"
"""Attribute of a KV cache that an uncompressed generation (ratio 1, `none`) filled: its stats, which count its
decoding steps."""


@dataclass
class GenerationState:
    """Everything the engine remembers between the prefill and the decoding steps of one generation.

    It lives on the generation's KV cache (`attach`), so it follows the cache: multi-turn chats that pass
    the cache back, copies of the cache, interleaved generations and threads each find their own.
    """

    method: Method  # what started it, which its later steps keep to (a patch changed since applies to new prompts)
    groups: list[TokenGroup]
    full_length: int  # length of the uncompressed sequence so far (prompt + generated)
    stats: CompressionStats
    last_positions: torch.Tensor  # (..., B, 1) position ids of the last token the LLM saw, as the caller counts
    position_shift: torch.Tensor | None = None  # (B, 1) subtracted from the caller's positions (re-indexed prompt)
    memories: list[dict] = field(default_factory=list)  # per row, for methods
    decode_memories: list[dict] = field(default_factory=list)
    reduced: bool = False  # whether any group differs from the caller's sequence
    layer_additions: torch.Tensor | None = None  # (B, W, layers, D) added after the first layers (prefill only)

    def group_of(self, layer: int) -> TokenGroup:
        return next(g for g in reversed(self.groups) if g.start_layer <= layer)

    def attach(self, cache: Any) -> None:
        setattr(cache, STATE_ATTRIBUTE, self)

    @staticmethod
    def of(cache: Any) -> GenerationState | None:
        """The state of the generation that filled `cache`, whichever patch started it."""
        return getattr(cache, STATE_ATTRIBUTE, None) if cache is not None else None

    def take_in_prefix(self) -> int:
        """After a prompt that followed cached tokens: they become its first tokens (`TokenGroup.take_in_prefix`).
        Returns how many there were."""
        prefix = self.groups[0].prefix
        cached = 0 if prefix is None else prefix.shape[1]
        for group in self.groups:
            group.take_in_prefix()
        self.full_length += cached
        return cached

    def reorder(self, rows: torch.Tensor) -> None:
        """Follow beam search: row i of every per-row record becomes old row rows[i]."""
        for group in self.groups:
            group.reorder(rows)
        self.last_positions = self.last_positions.index_select(-2, rows.to(self.last_positions.device))
        if self.position_shift is not None:
            self.position_shift = self.position_shift[rows.to(self.position_shift.device)]
        order = rows.tolist()
        self.memories = [dict(self.memories[i]) for i in order]
        self.decode_memories = [dict(self.decode_memories[i]) for i in order]
