"""Applies reductions to a running Hugging Face forward pass.

The engine is the one place that knows transformers' decoder mechanics. It hooks three places:

- the multimodal model (`XModel.forward`): the adapter reads where the visual tokens are;
- the language model (the decoder stack): pre-LLM reductions shrink `inputs_embeds`, the 2-D padding mask
  and the position ids before layer 0; during decoding the mask is swapped for the reduced one and the
  hidden states of the prefill are scattered back to the caller's sequence length afterwards;
- every decoder layer: in-LLM reductions shrink the hidden states before layer k, and each later layer
  gets the mask, rotary embeddings and position ids of the tokens it really sees; decode-time methods
  make a layer attend to a selected subset of its KV entries.

A run of layers that sees the same tokens shares a `TokenGroup`: per sample, the original sequence index
of every slot, left-padded to the batch's longest row, so ragged keep-counts are padded and masked, never
forced equal, and the last slot is always the last real token (what `generate` reads). Kept tokens keep
their original positions, so decoding continues from the original positions and each layer's KV cache
holds exactly the tokens that layer saw.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from .layout import VisualLayout
from .methods.base import (
    DECODE,
    IN_LLM,
    PRE_LLM,
    DecodeSample,
    LayerBudget,
    LayerSample,
    Method,
    TokenReduction,
)
from .ops import few_query_attention, weighted_merge
from .stats import CompressionStats

if TYPE_CHECKING:
    from .adapters.base import Adapter

MASK_BUILDERS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


@dataclass
class TokenGroup:
    """The tokens seen by decoder layers [start_layer, next group's start)."""

    start_layer: int
    origin: torch.Tensor  # (B, W) index into the LLM input sequence, -1 for padding slots
    attention_mask: torch.Tensor  # (B, W + generated) 2-D padding mask, grows while decoding
    visual_slots: list[torch.Tensor]  # per sample, slot of each current visual token (layout order)
    layouts: list[VisualLayout]  # per sample, layout of the current visual tokens
    sizes: list[torch.Tensor]  # per sample, how many original tokens each visual token stands for
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None  # None: the LM's own
    position_ids: torch.Tensor | None = None  # the `position_ids` kwarg decoder layers get
    step_mask: Any = None  # this step's mask (built once per step, shared by the group's layers)
    kv_selection: tuple[torch.Tensor, Any] | None = None  # this step's selected KV slots and their mask

    @property
    def width(self) -> int:
        return self.origin.shape[1]


@dataclass
class GenerationState:
    """Everything the engine remembers between the prefill and the decoding steps of one generation."""

    groups: list[TokenGroup]
    cache: weakref.ref | None  # the generation's KV cache, weakly: the engine never keeps a cache alive
    full_length: int  # length of the uncompressed sequence so far (prompt + generated)
    stats: CompressionStats
    last_positions: torch.Tensor | None = None  # (..., B, 1) position ids of the last token the LLM saw
    memories: list[dict] = field(default_factory=list)  # per sample, for methods
    decode_memories: list[dict] = field(default_factory=list)
    reduced: bool = False  # whether any group differs from the caller's sequence

    def group_of(self, layer: int) -> TokenGroup:
        return next(g for g in reversed(self.groups) if g.start_layer <= layer)


class Engine:
    """Hooks a method into one model through its adapter; `detach()` removes every hook."""

    def __init__(self, adapter: Adapter, method: Method):
        self.adapter = adapter
        self.method = method
        self.spec = adapter.spec
        self.state: GenerationState | None = None
        self.last_stats = CompressionStats.empty(method, note="no forward pass yet")
        self._pending_layouts: list[VisualLayout] | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> None:
        try:
            self._hooks.append(
                self.adapter.multimodal_model.register_forward_pre_hook(self._on_model_call, with_kwargs=True)
            )
            lm = self.adapter.language_model
            self._hooks.append(lm.register_forward_pre_hook(self._on_llm_call, with_kwargs=True))
            self._hooks.append(lm.register_forward_hook(self._on_llm_return, with_kwargs=True))
            for index, layer in enumerate(self.adapter.layers):
                self._hooks.append(layer.register_forward_pre_hook(self._layer_hook(index), with_kwargs=True))
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.state = None

    @property
    def active(self) -> bool:
        return bool(self.method.stages) and self.method.ratio < 1

    # ------------------------------------------------------------------ hooks
    def _on_model_call(self, module, args, kwargs):
        if not self.active:
            layouts = self.adapter.visual_layouts(kwargs)
            if layouts and any(layout.num_tokens for layout in layouts):  # a prompt, not a decoding step
                self.last_stats = CompressionStats.identity(self.method, layouts, self.spec.num_layers)
            return None
        self._pending_layouts = self.adapter.visual_layouts(kwargs)
        state = self.state
        if state is not None and self._continues(state, kwargs.get("past_key_values")) and kwargs.get("position_ids") is None:
            # Left to itself, HF would count decode positions from the (shorter) cache; continue as generate does.
            kwargs["position_ids"] = _next_positions(state.last_positions, _sequence_length(args, kwargs))
            return args, kwargs
        return None

    def _on_llm_call(self, module, args, kwargs):
        if not self.active:
            self.state = None
            return None
        cache = kwargs.get("past_key_values")
        if cache is not None and cache.get_seq_length() > 0:
            if self.state is not None and self._continues(self.state, cache):
                return self._start_decode_step(args, kwargs)
            self.state = None  # continuing a cache this engine did not fill: leave it alone
            return None
        return self._start_prefill(args, kwargs)

    def _on_llm_return(self, module, args, kwargs, output):
        state = self.state
        if state is None:
            return None
        if state.cache is None and getattr(output, "past_key_values", None) is not None:
            state.cache = weakref.ref(output.past_key_values)
        hidden = output.last_hidden_state
        if not state.stats.finished:
            last = state.groups[-1]
            for sample, slots, origin in zip(state.stats.samples, last.visual_slots, last.origin):
                sample.kept_positions = origin[slots].tolist()
            if state.reduced:
                output.last_hidden_state = self._restore_sequence(hidden, state)
            state.stats.finished = True
            self.last_stats = state.stats
        else:
            state.full_length += hidden.shape[1]
            state.stats.decode_steps += 1
        if state.cache is None:  # no cache: nothing to continue
            self.state = None
        return output

    def _layer_hook(self, layer_index: int):
        def hook(module, args, kwargs):
            state = self.state
            if state is None:
                return None
            decoding = state.stats.finished
            selects = decoding and DECODE in self.method.stages and layer_index >= self._decode_start
            if decoding and not selects and state.group_of(layer_index) is state.groups[0]:
                return None  # the LM's own mask and rotary tables fit this layer: nothing to change
            hidden = args[0] if args else kwargs["hidden_states"]
            if not decoding and IN_LLM in self.method.stages:
                reduced = self._maybe_reduce_in_llm(layer_index, module, hidden, kwargs)
                hidden = hidden if reduced is None else reduced
            group = state.group_of(layer_index)
            if group is not state.groups[0]:  # the LM built masks and rotary tables for group 0 itself
                self._substitute_group_inputs(group, layer_index, hidden, kwargs, decoding)
            if selects:
                self._select_decode_kv(layer_index, module, hidden, group, kwargs)
            if not decoding:
                state.stats.record_layer(layer_index, [len(s) for s in group.visual_slots])
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook

    # ------------------------------------------------------------------ prefill
    def _start_prefill(self, args, kwargs):
        layouts = self._pending_layouts
        self._pending_layouts = None
        self.state = None
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or layouts is None:
            self.last_stats = CompressionStats.empty(self.method, note="no input_ids: visual tokens unknown, untouched")
            return None
        if not any(layout.num_tokens for layout in layouts):
            self.last_stats = CompressionStats.empty(self.method, note="no visual tokens: passed through untouched")
            return None
        mask = kwargs.get("attention_mask")
        if mask is not None and (isinstance(mask, dict) or mask.ndim != 2):
            raise ValueError(
                "tokcompress needs the 2-D padding mask; precomputed 4-D masks (e.g. from a static cache) "
                "are not supported. Use the default dynamic cache."
            )
        batch, length = embeds.shape[:2]
        device = embeds.device
        origin = torch.arange(length, device=device).expand(batch, length)
        attention = mask.long() if mask is not None else torch.ones(batch, length, dtype=torch.long, device=device)
        stats = CompressionStats.begin(self.method, layouts)
        group = TokenGroup(
            start_layer=0,
            origin=origin,
            attention_mask=attention,
            visual_slots=[layout.positions for layout in layouts],
            layouts=layouts,
            sizes=[torch.ones(layout.num_tokens, device=device) for layout in layouts],
        )
        self.state = GenerationState(
            groups=[group],
            cache=weakref.ref(kwargs["past_key_values"]) if kwargs.get("past_key_values") is not None else None,
            full_length=length,
            stats=stats,
            memories=[{} for _ in layouts],
            decode_memories=[{} for _ in layouts],
        )
        positions = kwargs.get("position_ids")
        positions = origin if positions is None else positions
        self.state.last_positions = positions[..., -1:]
        if PRE_LLM not in self.method.stages:
            return None
        started = _clock(device)
        reductions = [
            self.method.reduce_pre_llm(
                embeds[b, layout.positions], layout, LayerBudget(self.method.ratio, layout.num_tokens, self.spec.num_layers)
            )
            if layout.num_tokens
            else None
            for b, layout in enumerate(layouts)
        ]
        new_group, slot_index = self._apply(group, reductions, start_layer=0)
        embeds = _gather_slots(self._write_merged(embeds, group, reductions), slot_index, fill=0.0)
        kwargs["position_ids"] = _gather_slots(positions, slot_index, fill=0)
        kwargs["inputs_embeds"] = embeds
        kwargs["attention_mask"] = new_group.attention_mask
        self.state.groups = [new_group]
        self.state.reduced = True
        stats.compression_seconds += _clock(device) - started
        return args, kwargs

    def _maybe_reduce_in_llm(self, layer_index, layer, hidden, kwargs):
        state = self.state
        group = state.groups[-1]
        samples = self._layer_samples(layer_index, layer, hidden, group, kwargs)
        if all(sample is None for sample in samples):
            return None
        started = _clock(hidden.device)
        reductions = [self.method.reduce_in_llm(s) if s is not None else None for s in samples]
        for sample in samples:
            if sample is not None and self.method.in_llm_finished(sample):
                sample.memory["finished"] = True
        if all(r is None for r in reductions):
            state.stats.compression_seconds += _clock(hidden.device) - started
            return None
        new_group, slot_index = self._apply(group, reductions, start_layer=layer_index)
        hidden = _gather_slots(self._write_merged(hidden, group, reductions), slot_index, fill=0.0)
        cos, sin = group.position_embeddings or kwargs["position_embeddings"]
        new_group.position_embeddings = (_gather_slots(cos, slot_index, 0.0), _gather_slots(sin, slot_index, 0.0))
        base_ids = group.position_ids if group is not state.groups[0] else kwargs.get("position_ids")
        new_group.position_ids = _gather_slots(base_ids, slot_index, 0) if base_ids is not None else None
        state.groups.append(new_group)
        state.reduced = True
        state.stats.compression_seconds += _clock(hidden.device) - started
        return hidden

    def _layer_samples(self, layer_index, layer, hidden, group, kwargs) -> list[LayerSample | None]:
        state = self.state
        budget_spent = state.stats.spent_before(layer_index)
        samples: list[LayerSample | None] = []
        position_embeddings = group.position_embeddings or kwargs["position_embeddings"]
        for b, slots in enumerate(group.visual_slots):
            layout = group.layouts[b]
            memory = state.memories[b]
            if not layout.num_tokens or memory.get("finished"):
                samples.append(None)
                continue
            budget = LayerBudget(
                self.method.ratio, state.stats.samples[b].visual_in, self.spec.num_layers, layer_index, budget_spent[b]
            )

            def attention_to_visual(num_queries: int, b=b, slots=slots) -> torch.Tensor:
                scores = self._last_query_attention(layer, hidden, position_embeddings, group, b, num_queries)
                return scores[slots]

            samples.append(LayerSample(layer_index, hidden[b, slots], layout, budget, memory, attention_to_visual))
        return samples

    def _last_query_attention(self, layer, hidden, position_embeddings, group, b, num_queries):
        """Head-mean attention of sample b's last `num_queries` real tokens over all its slots, at this layer."""
        valid = _real_slots(group, b, group.width)
        query_slots = valid.nonzero().squeeze(1)[-num_queries:]
        cos, sin = (_row(t, b) for t in position_embeddings)
        queries = self.adapter.project_queries(layer, hidden[b, query_slots], cos[query_slots], sin[query_slots])
        keys = self.adapter.project_keys(layer, hidden[b], cos, sin)
        causal = torch.arange(group.width, device=hidden.device)[None, :] <= query_slots[:, None]
        return few_query_attention(queries, keys, valid[None, :] & causal).mean(dim=0)

    def _apply(self, group: TokenGroup, reductions, start_layer: int):
        """Compact the group by the per-sample reductions; returns the new group and the slot index (B, W')."""
        device = group.origin.device
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
            others = _real_slots(group, b, group.width)
            others[slots] = False
            rows.append(torch.cat([others.nonzero().squeeze(1), kept_visual[-1]]).sort().values)
        slot_index = _left_padded(rows)
        width = slot_index.shape[1]
        visual_slots = []
        for b, row in enumerate(rows):
            new_slot_of = torch.full((group.width,), -1, dtype=torch.long, device=device)
            new_slot_of[row] = torch.arange(width - len(row), width, device=device)
            visual_slots.append(new_slot_of[kept_visual[b]])
        new_group = TokenGroup(
            start_layer=start_layer,
            origin=_gather_slots(group.origin, slot_index, fill=-1),
            attention_mask=(slot_index >= 0).long(),
            visual_slots=visual_slots,
            layouts=layouts,
            sizes=sizes,
        )
        return new_group, slot_index

    @staticmethod
    def _write_merged(hidden, group, reductions):
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

    def _restore_sequence(self, hidden, state):
        """Scatter the final hidden states back to the caller's sequence length (dropped tokens read zero)."""
        group = state.groups[-1]
        batch = hidden.shape[0]
        restored = hidden.new_zeros(batch, state.full_length, hidden.shape[-1])
        keep = group.origin >= 0
        rows = torch.arange(batch, device=hidden.device)[:, None].expand_as(group.origin)
        restored[rows[keep], group.origin[keep]] = hidden[keep]
        return restored

    # ------------------------------------------------------------------ decoding
    @staticmethod
    def _continues(state: GenerationState, cache) -> bool:
        return cache is not None and state.cache is not None and cache is state.cache() and state.stats.finished

    def _start_decode_step(self, args, kwargs):
        state = self.state
        embeds = kwargs["inputs_embeds"]
        batch, length = embeds.shape[:2]
        device = embeds.device
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            new_columns = mask[:, -length:].long().to(device)
        else:
            new_columns = torch.ones(batch, length, dtype=torch.long, device=device)
        for group in state.groups:
            group.attention_mask = torch.cat([group.attention_mask, new_columns], dim=1)
            group.step_mask = None
            group.kv_selection = None
        kwargs["attention_mask"] = state.groups[0].attention_mask
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = _next_positions(state.last_positions, length)
        state.last_positions = kwargs["position_ids"][..., -1:]
        return args, kwargs

    def _substitute_group_inputs(self, group, layer_index, hidden, kwargs, decoding):
        if decoding:
            if group.step_mask is None:
                group.step_mask = self._build_mask(group, hidden, kwargs, layer_index)
            kwargs["attention_mask"] = group.step_mask
            return
        if group.start_layer == layer_index:
            group.step_mask = self._build_mask(group, hidden, kwargs, layer_index)
        kwargs["attention_mask"] = group.step_mask
        kwargs["position_embeddings"] = group.position_embeddings
        if "position_ids" in kwargs:
            kwargs["position_ids"] = group.position_ids

    def _build_mask(self, group, hidden, kwargs, layer_index):
        config = self.adapter.language_model.config
        layer_types = getattr(config, "layer_types", None)
        builder = MASK_BUILDERS[layer_types[layer_index] if layer_types else "full_attention"]
        return builder(
            config=config,
            inputs_embeds=hidden,
            attention_mask=group.attention_mask,
            past_key_values=kwargs.get("past_key_values"),
            position_ids=None,
            layer_idx=layer_index,
        )

    @property
    def _decode_start(self) -> int:
        return self.method.decode_start_layer(self.spec)

    def _select_decode_kv(self, layer_index, layer, hidden, group, kwargs):
        """Make this layer's attention read only the selected visual KV entries (plus all others)."""
        state = self.state
        cache = kwargs.get("past_key_values")
        if cache is None:
            return
        started = _clock(hidden.device)
        if group.kv_selection is None:  # once per step and group, at its first selecting layer
            keys = cache.layers[layer_index].keys  # (B, Hkv, K, d), before this step's update
            slots = self._decode_selection(layer, hidden, keys, group, kwargs)
            implementation = self.adapter.language_model.config._attn_implementation
            mask = select_key_mask(kwargs.get("attention_mask"), slots.clamp_min(0), slots >= 0, implementation)
            group.kv_selection = (slots.clamp_min(0), mask)
        index, mask = group.kv_selection
        kwargs["past_key_values"] = SelectedKV(cache, index)
        kwargs["attention_mask"] = mask
        state.stats.compression_seconds += _clock(hidden.device) - started

    def _decode_selection(self, layer, hidden, keys, group, kwargs):
        state = self.state
        batch, past = keys.shape[0], keys.shape[2]
        steps = hidden.shape[1]
        cos, sin = kwargs["position_embeddings"]
        rows, read = [], []
        for b in range(batch):
            valid = group.attention_mask[b, :past].bool()
            slots = group.visual_slots[b]
            queries = self.adapter.project_queries(layer, hidden[b], _row(cos, b), _row(sin, b))
            attention = few_query_attention(queries, keys[b], valid[None, :]).mean(dim=0)
            chosen = slots[self.method.select_decode_kv(DecodeSample(attention[slots], state.decode_memories[b]))]
            is_visual = torch.zeros(past, dtype=torch.bool, device=keys.device)
            is_visual[slots] = True
            others = (valid & ~is_visual).nonzero().squeeze(1)
            new = torch.arange(past, past + steps, device=keys.device)
            rows.append(torch.cat([torch.cat([others, chosen]).sort().values, new]))
            read.append(len(chosen))
        state.stats.record_decode_read(read, self._decode_start)
        return _left_padded(rows)


class SelectedKV:
    """Stands in for the cache inside one layer's attention: stores the new entries, returns only selected ones."""

    def __init__(self, cache, index: torch.Tensor):
        self.cache = cache
        self.index = index

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = self.cache.update(key_states, value_states, layer_idx, *args, **kwargs)
        index = self.index[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1])
        return keys.gather(2, index), values.gather(2, index)

    def __getattr__(self, name):
        return getattr(self.cache, name)


def select_key_mask(mask, index: torch.Tensor, valid: torch.Tensor, attn_implementation: str):
    """The layer's attention mask restricted to the key columns `index` (invalid columns masked out)."""
    if mask is None:
        if bool(valid.all()):
            return None
        if attn_implementation == "eager":
            blocked = torch.finfo(torch.float32).min
            return torch.where(valid, 0.0, blocked)[:, None, None, :]
        if "flash" in attn_implementation:
            return valid.long()
        return valid[:, None, None, :]
    columns = index.view(index.shape[0], *([1] * (mask.ndim - 2)), index.shape[1])
    columns = columns.expand(*mask.shape[:-1], index.shape[1])
    selected = mask.gather(-1, columns)
    keep = valid.view_as(index).view(index.shape[0], *([1] * (mask.ndim - 2)), index.shape[1])
    if selected.dtype == torch.bool:
        return selected & keep
    if selected.is_floating_point():
        return selected.masked_fill(~keep, torch.finfo(selected.dtype).min)
    return selected * keep


def _reduced_sizes(sizes: torch.Tensor, reduction: TokenReduction) -> torch.Tensor:
    if reduction.merge_into is None:
        return sizes[reduction.keep]
    used = reduction.merge_into >= 0
    new = torch.zeros(reduction.keep.numel(), dtype=sizes.dtype, device=sizes.device)
    return new.index_add_(0, reduction.merge_into[used], sizes[used])


def _gather_slots(tensor: torch.Tensor, slot_index: torch.Tensor, fill) -> torch.Tensor:
    """Gather along the sequence dimension: (..., B, L[, D]) → (..., B, W'); slots -1 read `fill`.

    Handles hidden states (B, L, D), rotary tables (B or 1, L, D), masks (B, L) and 1-D or M-RoPE
    position ids ((B, L), (3, B, L), (4, B, L)).
    """
    batch, width = slot_index.shape
    index = slot_index.clamp_min(0)
    pad = slot_index < 0
    if tensor.is_floating_point():  # hidden states and rotary tables: (B or 1, L, D)
        tensor = tensor.expand(batch, -1, -1)
        out = tensor.gather(1, index[:, :, None].expand(-1, -1, tensor.shape[-1]))
        return out.masked_fill(pad[:, :, None], fill)
    lead = tensor.shape[:-2]
    tensor = tensor.expand(*lead, batch, tensor.shape[-1])
    out = tensor.gather(-1, index.expand(*lead, batch, width))
    return out.masked_fill(pad.expand(*lead, batch, width), fill)


def _left_padded(rows: list[torch.Tensor]) -> torch.Tensor:
    """(B, W) rows of slot indices, left-padded with -1 so the last slot is always each row's last token."""
    width = max(len(row) for row in rows)
    padded = torch.full((len(rows), width), -1, dtype=torch.long, device=rows[0].device)
    for b, row in enumerate(rows):
        padded[b, width - len(row) :] = row
    return padded


def _real_slots(group: TokenGroup, b: int, width: int) -> torch.Tensor:
    """(width,) bool: the slots of sample b that hold a real (unpadded) token."""
    return group.attention_mask[b, :width].bool() & (group.origin[b, :width] >= 0)


def _row(table: torch.Tensor, b: int) -> torch.Tensor:
    """Sample b's row of a (B or 1, L, D) rotary table."""
    return table[b if table.shape[0] > 1 else 0]


def _next_positions(last: torch.Tensor, length: int) -> torch.Tensor:
    """Position ids of `length` new tokens after `last` (..., B, 1), in any layout (1-D or M-RoPE rows)."""
    return last + torch.arange(1, length + 1, device=last.device)


def _sequence_length(args, kwargs) -> int:
    for name in ("input_ids", "inputs_embeds"):
        if kwargs.get(name) is not None:
            return kwargs[name].shape[1]
    return args[0].shape[1]


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
