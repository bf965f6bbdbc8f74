"""Token groups: which tokens a run of decoder layers sees, and the slot gathering that keeps them consistent.

A run of layers that sees the same tokens shares a `TokenGroup`: per sample, the original sequence index
of every slot, left-padded to the batch's longest row, so ragged keep-counts are padded and masked, never
forced equal, and the last slot is always the last real token (what `generate` reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..layout import VisualLayout
from ..methods.base import TokenReduction
from ..ops import weighted_merge
from . import compat

if TYPE_CHECKING:
    from ..adapters.base import Adapter

@dataclass
class TokenGroup:
    """The tokens seen by decoder layers [start_layer, next group's start)."""

    start_layer: int
    origin: torch.Tensor  # (B, W) index into the LLM input sequence, -1 for padding slots
    attention_mask: torch.Tensor  # (B, W + generated) 2-D padding mask, grows while decoding
    visual_slots: list[torch.Tensor]  # per sample, slot of each current visual token (layout order)
    layouts: list[VisualLayout]  # per sample, layout of the current visual tokens
    sizes: list[torch.Tensor]  # per sample, how many original tokens each visual token stands for
    # (B, W) each slot's token in the language model's input (-1: padding), whose per-token tensors the LM hands
    # every layer (rotary tables, position ids, per-layer inputs): None where the group is that input itself
    lm_slots: torch.Tensor | None = None
    blocks: torch.Tensor | None = None  # (B, W) bidirectional attention block of each slot (-1: none), where used
    # (B, keys) a continuation chunk's blocks over the keys it reads (cached slots -1), where it brings vision blocks
    step_blocks: torch.Tensor | None = None
    key_bias: torch.Tensor | None = None  # (B, W) added to attention logits per key slot (proportional attention)
    # (B, P) the padding mask of the P cached tokens before its slots, while a prefill follows a cache (a video after a
    # cached system prompt): its layers attend to them too; `take_in_prefix` makes them the group's first slots
    prefix: torch.Tensor | None = None
    step_masks: dict[tuple[str, bool], Any] = field(default_factory=dict)  # this step's mask per (layer type, sliced)
    kv_selection: tuple[torch.Tensor, Any] | None = None  # this step's selected KV slots and their mask
    kv_chosen: list[int] | None = None  # this step's selection: per row, how many visual entries it chose
    _gathered: dict[int, tuple] = field(default_factory=dict)  # id(LM tensor) -> (it, gathered at lm_slots)

    @property
    def width(self) -> int:
        return self.origin.shape[1]

    @property
    def owns_mask(self) -> bool:
        """Whether its layers need a mask other than the one the language model builds for its input."""
        return self.lm_slots is not None or self.key_bias is not None

    def at_slots(self, value: Any, ids: bool = False) -> Any:
        """A per-token tensor the language model hands its layers - features along dim 1 (rotary tables, per-layer
        inputs; a tuple of them), or `ids` along the last (position ids) - for this group's slots: gathered at
        `lm_slots` (once per tensor: the LM hands every layer the same one), else as it is."""
        if self.lm_slots is None or value is None:
            return value
        if isinstance(value, tuple):
            return tuple(self.at_slots(part, ids) for part in value)
        cached = self._gathered.get(id(value))
        if cached is None or cached[0] is not value:
            slots = self.lm_slots.to(value.device)
            gathered = gather_ids(value, slots, 0) if ids else gather_slots(value, slots, 0.0)
            cached = self._gathered[id(value)] = (value, gathered)
        return cached[1]

    @property
    def keys_mask(self) -> torch.Tensor:
        """(B, keys) the padding mask of every key its layers attend to: the cached prefix's, then its slots'."""
        return self.attention_mask if self.prefix is None else torch.cat([self.prefix, self.attention_mask], dim=1)

    def over_keys(self, per_slot: torch.Tensor | None, fill) -> torch.Tensor | None:
        """A per-slot tensor (B, W) over every key its layers attend to: `fill` for the cached prefix's."""
        if self.prefix is None or per_slot is None:
            return per_slot
        return torch.nn.functional.pad(per_slot, (self.prefix.shape[1], 0), value=fill)

    def take_in_prefix(self) -> None:
        """After a prefill that followed a cache: the cached tokens become the group's first slots (positions 0..P-1
        of the conversation), so its decoding steps, and the stats, read the whole conversation as one prompt."""
        if self.prefix is None:
            return
        batch, cached = self.prefix.shape
        device = self.origin.device
        before = torch.arange(cached, device=device).expand(batch, cached)
        self.origin = torch.cat([before, torch.where(self.origin >= 0, self.origin + cached, -1)], dim=1)
        self.visual_slots = [slots + cached for slots in self.visual_slots]
        self.layouts = [layout.shifted(cached) for layout in self.layouts]
        self.lm_slots, self.blocks = self.over_keys(self.lm_slots, -1), self.over_keys(self.blocks, -1)
        self.key_bias = self.over_keys(self.key_bias, 0.0)
        self.attention_mask, self.prefix = self.keys_mask, None

    def end_prefill(self) -> None:
        """Let go of what only the prefill reads (its masks, the LM's tables gathered at the slots): the cache keeps
        this group alive for the whole generation."""
        self.step_masks, self._gathered = {}, {}

    def real_slots(self, b: int) -> torch.Tensor:
        """(W,) bool: the slots of sample b that hold a real (unpadded) token."""
        return self.attention_mask[b, : self.width].bool() & (self.origin[b] >= 0)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i becomes old row rows[i] (beam search reordering its hypotheses)."""
        order = rows.tolist()
        rows = rows.to(self.origin.device)
        self.origin, self.attention_mask = self.origin[rows], self.attention_mask[rows]
        self.visual_slots = [self.visual_slots[i] for i in order]
        self.layouts = [self.layouts[i] for i in order]
        self.sizes = [self.sizes[i] for i in order]
        for name in ("key_bias", "lm_slots", "blocks"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[rows])
        self.step_masks, self.kv_selection, self.step_blocks, self._gathered = {}, None, None, {}

    def substitute_inputs(
        self, adapter: Adapter, layer_index: int, mask_layer: int, hidden: torch.Tensor, kwargs: dict, decoding: bool
    ) -> None:
        """Give a layer of this group the mask (and, in prefill, the rotary tables and positions) of its tokens.

        mask_layer: the layer whose keys it attends to (itself, or the earlier layer whose KV it shares). A prefill's
        masks are built for the group's whole width, independent of the cache (a generation's prefill starts on an
        empty one; a static cache's empty slots are masked out), or, after cached tokens (`prefix`), over those
        keys too. In the adapter's `bidirectional_layer_types` a prompt's vision blocks attend both ways
        (`blocks_past_window`: past a sliding window too). A recurrent (linear-attention, convolution) layer gets the
        group's padding mask, which zeroes its padding slots; as they are on the left, its state starts from them
        unchanged. Proportional attention biases softmax layers."""
        if not decoding and self.start_layer == layer_index:
            self.step_masks = {}
        config = adapter.language_model.config
        kind = compat.layer_type(config, mask_layer)
        # the LM computes its last tokens only (KV sharing); after cached tokens its mask is the full one's last rows
        # (_on_layer cuts them): the layer it shares keys with has cached this prefill's, so the cache miscounts
        sliced = not decoding and hidden.shape[1] < self.width and self.prefix is None
        if (kind, sliced) not in self.step_masks:
            cache = compat.cache_of(kwargs)
            attends = kind not in compat.RECURRENT_LAYERS | compat.TOKENWISE_LAYERS  # a softmax layer
            static = not decoding and compat.preallocated(cache) and attends
            width_of = hidden if decoding else hidden[:, -1:].expand(-1, self.width, -1)
            after_cache = decoding or self.prefix is not None  # keys: the cached ones, then these
            biased = self.key_bias is not None and attends
            bidirectional = kind in adapter.bidirectional_layer_types
            blocks = (self.step_blocks if decoding else self.over_keys(self.blocks, -1)) if bidirectional else None
            mask = compat.build_attention_mask(  # explicit where sdpa's is_causal would not fit (fewer rows than keys)
                config, mask_layer, width_of, self.keys_mask, cache if after_cache else None,
                explicit=biased or sliced or static, blocks=blocks, blocks_past_window=adapter.blocks_past_window,
            )
            if static:  # its layers read their slots, the empty ones too
                mask = compat.static_prefill_mask(mask, self.attention_mask, cache, mask_layer)
            if biased:  # the keys so far: the cached ones (all ever cached, for a sliding layer) and this step's
                keys = cache.get_seq_length(mask_layer) + hidden.shape[1] if decoding else self.keys_mask.shape[1]
                mask = with_key_bias(mask, self.over_keys(self.key_bias, 0.0), hidden.dtype, keys)
            self.step_masks[kind, sliced] = mask
        kwargs["attention_mask"] = self.step_masks[kind, sliced]
        if decoding or self.lm_slots is None or hidden.shape[1] < self.width:
            return  # the LM's own rotary tables, positions and per-layer inputs fit (its last tokens, where it sliced)
        if "position_embeddings" in kwargs:  # none in a decoder without positional encoding (Nemotron-H)
            kwargs["position_embeddings"] = self.at_slots(kwargs["position_embeddings"])
        if "position_ids" in kwargs:
            kwargs["position_ids"] = self.at_slots(kwargs["position_ids"], ids=True)


def llm_attention_mask(adapter: Adapter, group: TokenGroup, embeds: torch.Tensor, cache: Any, blocks):
    """The mask for the language model's call on `embeds` over the group's keys: its 2-D padding mask, which the
    model builds its own masks from, or, where vision blocks attend both ways (`blocks`, per key: which the model
    cannot build from that), the mask of each layer type (one mask where its config names no layer types: such a
    model takes one built mask as it is, not a dict)."""
    if blocks is None:
        return group.keys_mask
    blocks = blocks if blocks.shape[1] != group.width else group.over_keys(blocks, -1)  # a prefill's: over its slots
    config = adapter.language_model.config
    first_of_type: dict[str, int] = {}
    for index in range(len(adapter.layers)):
        first_of_type.setdefault(compat.layer_type(config, index), index)
    masks = {
        kind: compat.build_attention_mask(
            config, layer, embeds, group.keys_mask, cache,
            blocks=blocks if kind in adapter.bidirectional_layer_types else None,
            blocks_past_window=adapter.blocks_past_window,
        )
        for kind, layer in first_of_type.items()
    }
    return masks if getattr(config, "layer_types", None) else next(iter(masks.values()))


def compact(group: TokenGroup, reductions: list[TokenReduction | None], start_layer: int, proportional: bool = False):
    """Compact the group by the per-sample reductions; returns the new group and the slot index (B, W').

    proportional: give merged tokens proportional attention (log of their size added to their keys' logits).
    A row's last token survives at its place, visual or not (not folded into another; tokens a method folded into it
    stay): the next token is predicted from it (a prompt may end with its video).
    """
    device = group.origin.device
    reductions = _keeping_last_tokens(group, reductions)
    rows, kept_visual, layouts, sizes = [], [], [], []
    for b, reduction in enumerate(reductions):
        slots = group.visual_slots[b]
        if reduction is None:
            kept_visual.append(slots)
            layouts.append(group.layouts[b])
            sizes.append(group.sizes[b])
        else:
            kept_visual.append(slots[reduction.keep])
            layouts.append(group.layouts[b].select(reduction.keep))
            sizes.append(_reduced_sizes(group.sizes[b], reduction))
        others = group.real_slots(b)
        others[slots] = False
        rows.append(torch.cat([others.nonzero().squeeze(1), kept_visual[-1]]).sort().values)
    slot_index = left_padded(rows)
    width = slot_index.shape[1]
    visual_slots = []
    for b, row in enumerate(rows):
        new_slot_of = torch.full((group.width,), -1, dtype=torch.long, device=device)
        new_slot_of[row] = torch.arange(width - len(row), width, device=device)
        visual_slots.append(new_slot_of[kept_visual[b]])
    new_group = TokenGroup(
        start_layer=start_layer,
        origin=gather_ids(group.origin, slot_index, fill=-1),
        attention_mask=(slot_index >= 0).long(),
        visual_slots=visual_slots,
        layouts=layouts,
        sizes=sizes,
        blocks=None if group.blocks is None else gather_ids(group.blocks, slot_index, fill=-1),
        prefix=group.prefix,
    )
    if proportional and any(bool((s != 1).any()) for s in sizes):
        bias = torch.zeros(slot_index.shape, dtype=torch.float32, device=device)
        for b, (slots, size) in enumerate(zip(visual_slots, sizes)):
            bias[b, slots] = size.float().log()
        new_group.key_bias = bias
    return new_group, slot_index


def last_real_slots(group: TokenGroup) -> torch.Tensor:
    """(B,) each row's last slot holding a real token (left padding: the last column; right padding too)."""
    real = group.attention_mask[:, : group.width].bool() & (group.origin >= 0)
    return torch.where(real, torch.arange(group.width, device=real.device), -1).max(dim=1).values


def _keeping_last_tokens(group: TokenGroup, reductions: list[TokenReduction | None]) -> list[TokenReduction | None]:
    """The reductions with each row's last real slot (left padding: the last column; right padding too) kept where it
    is a visual token."""
    reduced = [b for b, reduction in enumerate(reductions) if reduction is not None and len(group.visual_slots[b])]
    if not reduced:
        return reductions
    last = last_real_slots(group)
    ending = torch.stack([(group.visual_slots[b] == last[b]).any() for b in reduced]).tolist()  # one sync
    reductions = list(reductions)
    for b, ends in zip(reduced, ending):
        if ends:
            slots = group.visual_slots[b]
            reductions[b] = reductions[b].keeping(int((slots == last[b]).nonzero()), len(slots))
    return reductions


def with_key_bias(mask: torch.Tensor, key_bias: torch.Tensor, dtype: torch.dtype, keys: int) -> torch.Tensor:
    """An additive float mask: `mask` (bool, True = attend, or already additive) plus a per-key bias.

    key_bias (B, W) covers the group's slots, the first of the `keys` keys so far; keys past them (tokens generated
    since) get no bias. The mask's columns are the last keys (a sliding layer's cache holds only its window), or a
    static cache's slots, the first `keys` of them filled.
    """
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    columns = max(keys, mask.shape[-1])
    bias = torch.nn.functional.pad(key_bias, (0, columns - key_bias.shape[1]))[:, columns - mask.shape[-1] :]
    return mask + bias[:, None, None, :].to(dtype)


def write_merged(hidden: torch.Tensor, group: TokenGroup, reductions: list[TokenReduction | None]) -> torch.Tensor:
    """Hidden states with each kept visual token replaced by the size-weighted mean of what folds into it."""
    if all(r is None or r.merge_into is None for r in reductions):
        return hidden
    hidden = hidden.clone()
    for b, reduction in enumerate(reductions):
        if reduction is None or reduction.merge_into is None:
            continue
        slots = group.visual_slots[b]
        merged, _ = weighted_merge(hidden[b, slots], group.sizes[b], reduction.merge_into, reduction.keep.numel())
        hidden[b, slots[reduction.keep]] = merged
    return hidden


def computed_positions(group: TokenGroup, computed: int) -> torch.Tensor:
    """(B, computed) the caller's position of each slot whose output the language model computed (-1: padding): all
    the group's, or, where it computed only its last tokens (after KV sharing), its last slots."""
    return group.origin[:, group.width - computed :]


def restore_sequence(hidden: torch.Tensor, origin: torch.Tensor, full_length: int) -> torch.Tensor:
    """Scatter hidden states computed at `origin` (`computed_positions`) back to the caller's sequence length
    (dropped tokens read zero)."""
    batch = hidden.shape[0]
    restored = hidden.new_zeros(batch, full_length, hidden.shape[-1])
    keep = origin >= 0
    rows = torch.arange(batch, device=hidden.device)[:, None].expand_as(origin)
    restored[rows[keep], origin[keep]] = hidden[keep]
    return restored


def gather_slots(tensor: torch.Tensor, slot_index: torch.Tensor, fill) -> torch.Tensor:
    """Per-token features along the sequence: hidden states (B, L, D), rotary tables (B or 1, L, D) → (B, W', D);
    slots -1 read `fill`."""
    index = slot_index.clamp_min(0)
    tensor = tensor.expand(len(slot_index), -1, -1)
    out = tensor.gather(1, index[:, :, None].expand(-1, -1, tensor.shape[-1]))
    return out.masked_fill((slot_index < 0)[:, :, None], fill)


def gather_ids(tensor: torch.Tensor, slot_index: torch.Tensor, fill) -> torch.Tensor:
    """Per-token ids along the sequence: masks and origins (B, L), 1-D or M-RoPE position ids ((B, L), (3, B, L),
    (4, B, L); integer or, as Qwen3-Omni's, float) → (..., B, W'); slots -1 read `fill`."""
    batch, width = slot_index.shape
    lead = tensor.shape[:-2]
    tensor = tensor.expand(*lead, batch, tensor.shape[-1])
    out = tensor.gather(-1, slot_index.clamp_min(0).expand(*lead, batch, width))
    return out.masked_fill((slot_index < 0).expand(*lead, batch, width), fill)


def left_padded(rows: list[torch.Tensor]) -> torch.Tensor:
    """(B, W) rows of slot indices, left-padded with -1 so the last slot is always each row's last token."""
    width = max(len(row) for row in rows)
    padded = torch.full((len(rows), width), -1, dtype=torch.long, device=rows[0].device)
    for b, row in enumerate(rows):
        padded[b, width - len(row) :] = row
    return padded


def sample_row(table: torch.Tensor, b: int) -> torch.Tensor:
    """Sample b's row of a (B or 1, L, D) rotary table."""
    return table[b if table.shape[0] > 1 else 0]


def rotary_rows(tables: tuple[torch.Tensor, torch.Tensor] | None, b: int, rows: torch.Tensor | None = None):
    """(cos, sin) of sample b (at `rows`, or all) from a layer's rotary tables; (None, None) for a layer without
    RoPE (NoPE: Cohere's global layers)."""
    if tables is None:
        return None, None
    return tuple(sample_row(t, b) if rows is None else sample_row(t, b)[rows] for t in tables)


def _reduced_sizes(sizes: torch.Tensor, reduction: TokenReduction) -> torch.Tensor:
    if reduction.merge_into is None:
        return sizes[reduction.keep]
    used = reduction.merge_into >= 0
    new = torch.zeros(reduction.keep.numel(), dtype=sizes.dtype, device=sizes.device)
    return new.index_add_(0, reduction.merge_into[used], sizes[used])
