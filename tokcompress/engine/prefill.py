"""Prefill reductions: shrink `inputs_embeds` before layer 0 (pre-LLM) and the hidden states before layer k (in-LLM).

Kept tokens keep their original positions: position ids and rotary tables are gathered with the tokens, so
decoding continues from the original positions and each layer's KV cache holds exactly what that layer saw.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch

from ..layout import VisualLayout
from ..methods.base import PRE_LLM, LayerBudget, LayerSample, Method, TokenReduction
from ..ops import few_query_attention
from ..stats import CompressionStats
from . import compat
from .groups import (
    TokenGroup,
    compact,
    gather_ids,
    gather_slots,
    llm_attention_mask,
    rotary_rows,
    write_merged,
)
from .state import GenerationState

if TYPE_CHECKING:
    from ..adapters.base import Adapter


def begin_generation(
    method: Method,
    layouts: list[VisualLayout],
    kwargs: dict[str, Any],
    rows_per_sample: int = 1,
    generating: bool = False,
    model_masks: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    cached: int = 0,
) -> GenerationState:
    """The state of a generation whose prompt enters the language model with these call kwargs.

    rows_per_sample: how many batch rows `generate` made of each sample (beams, returned sequences).
    generating: whether `generate` runs it, which reads the last position of every row.
    model_masks: the 2-D padding mask of the multimodal model's call (or of the prompt `generate` prepared, where it
        built the masks up front for a static cache) and the bidirectional blocks of its tokens (or None), for where
        the language model gets masks built already (Gemma 4: one per layer type; a static cache's).
    cached: how many tokens the cache holds before this prompt (a video after a cached system prompt): the 2-D
        padding mask covers them too, and the groups attend to them as their `prefix`.
    """
    mask, blocks = kwargs.get("attention_mask"), None
    if not compat.is_padding_mask(mask) and model_masks is not None:
        mask, blocks = model_masks
    if not compat.is_padding_mask(mask):
        raise ValueError(
            "tokcompress needs the 2-D padding mask; a forward given 4-D masks built beforehand cannot be compressed "
            "(generate() with a static cache is supported: it builds them itself)"
        )
    if generating and mask is not None and bool((mask[:, -1] == 0).any()):
        raise ValueError(
            "generate() got a right-padded batch: the last position of a padded row is a pad token, which "
            "compression does not compute. Pad on the left (processor / tokenizer padding_side='left')."
        )
    embeds = kwargs["inputs_embeds"]
    batch, length = embeds.shape[:2]
    device = embeds.device
    origin = torch.arange(length, device=device).expand(batch, length)
    mask = torch.ones(batch, length, dtype=torch.long, device=device) if mask is None else mask.long()
    prefix, attention = None, mask[:, -length:]
    if cached:  # the cached tokens' columns (real, where the mask covers this call's tokens only)
        prefix = torch.nn.functional.pad(mask[:, :-length], (cached + length - mask.shape[1], 0), value=1)
    group = TokenGroup(
        start_layer=0,
        origin=origin,
        attention_mask=attention,
        visual_slots=[layout.positions for layout in layouts],
        layouts=layouts,
        sizes=[torch.ones(layout.num_tokens, device=device) for layout in layouts],
        blocks=None if blocks is None else blocks[:, -length:].to(device),
        prefix=prefix,
    )
    if kwargs.get("position_ids") is None and cached:  # HF would count on from the cache, as a prompt's tokens do
        kwargs["position_ids"] = origin + cached
    positions = origin if kwargs.get("position_ids") is None else kwargs["position_ids"]
    last = positions[..., -1:]  # a row for every sample (EXAONE 4.5 builds one row, arange(L), for them all)
    return GenerationState(
        method=method,
        groups=[group],
        full_length=length,
        stats=CompressionStats.begin(method, layouts, rows_per_sample),
        last_positions=last.expand(*last.shape[:-2], batch, 1),
        memories=[{} for _ in layouts],
        decode_memories=[{} for _ in layouts],
    )


def reduce_before_llm(
    method: Method, adapter: Adapter, state: GenerationState, kwargs: dict[str, Any], encoded: list | None = None
) -> None:
    """Shrink the language model's call kwargs before layer 0: first to the tokens of the frame units the vision
    tower encoded (`encoded`: per row, their indices in its layout), then by the method's pre-LLM reductions."""
    embeds = kwargs["inputs_embeds"]
    positions = kwargs.get("position_ids")
    positions = state.groups[0].origin if positions is None else positions
    layers = adapter.spec.num_layers
    with state.stats.timed(embeds.device):
        if encoded is not None:
            drops = [TokenReduction.prune(kept) for kept in encoded]
            embeds, positions = _compact_inputs(state, drops, embeds, positions, kwargs, adapter)
        if PRE_LLM in method.stages:
            group = state.groups[0]
            reductions = [
                method.reduce_pre_llm(
                    embeds[b, slots], layout, LayerBudget(method.ratio, state.stats.sample_of_row(b).visual_in, layers)
                )
                if layout.num_tokens
                else None
                for b, (slots, layout) in enumerate(zip(group.visual_slots, group.layouts))
            ]
            proportional = method.uses_proportional_attention()
            embeds, positions = _compact_inputs(state, reductions, embeds, positions, kwargs, adapter, proportional)
        if method.reindexes_positions():  # 1-D positions: kept tokens numbered as if nothing had been dropped
            keys = state.groups[0].keys_mask  # after the cached tokens, if any
            contiguous = (keys.cumsum(-1) - 1).clamp_min(0)[:, keys.shape[1] - embeds.shape[1] :]
            state.position_shift = positions[..., -1:] - contiguous[..., -1:]
            positions = contiguous
        kwargs["inputs_embeds"], kwargs["position_ids"] = embeds, positions
        group = state.groups[0]
        kwargs["attention_mask"] = llm_attention_mask(adapter, group, embeds, compat.cache_of(kwargs), group.blocks)
        state.reduced = True


def _compact_inputs(
    state: GenerationState, reductions, embeds, positions, kwargs, adapter: Adapter, proportional: bool = False
):
    """Apply per-row reductions to the prompt's single token group; returns the gathered embeds and positions, and
    gathers the language model's other per-token inputs (the adapter's `llm_token_inputs`, `llm_token_ids`) in
    `kwargs` alike."""
    group = state.groups[0]
    new_group, slot_index = compact(group, reductions, 0, proportional)
    state.groups = [new_group]
    _reduce_layer_additions(state, group, reductions, slot_index)
    for name in adapter.llm_token_inputs:
        if kwargs.get(name) is not None:
            kwargs[name] = _follow_tokens(kwargs[name], group, reductions, slot_index)
    for name in adapter.llm_token_ids:
        if kwargs.get(name) is not None:
            kwargs[name] = gather_ids(kwargs[name], slot_index.to(kwargs[name].device), fill=0)
    embeds = gather_slots(write_merged(embeds, group, reductions), slot_index, fill=0.0)
    return embeds, gather_ids(positions, slot_index, fill=0)


def _follow_tokens(features: torch.Tensor, group: TokenGroup, reductions, slot_index) -> torch.Tensor:
    """(B, L, ...) per-token features after the reductions: kept, dropped or merged (size-weighted) as their tokens."""
    flat = write_merged(features.flatten(2), group, reductions)
    return gather_slots(flat, slot_index, fill=0.0).unflatten(2, features.shape[2:])


def _reduce_layer_additions(state: GenerationState, group: TokenGroup, reductions, slot_index) -> None:
    """The features added after the first layers follow their tokens: kept, dropped or merged alike."""
    if state.layer_additions is not None:
        state.layer_additions = _follow_tokens(state.layer_additions, group, reductions, slot_index)


def reduce_before_layer(
    method: Method, adapter: Adapter, state: GenerationState, layer_index: int, layer, hidden, kwargs
) -> torch.Tensor | None:
    """The hidden states entering `layer` after the method's in-LLM reductions, or None if it left them alone."""
    group = state.groups[-1]
    samples = _layer_samples(method, adapter, state, layer_index, layer, hidden, group, kwargs)
    if all(sample is None for sample in samples):
        return None
    with state.stats.timed(hidden.device):
        reductions = [method.reduce_in_llm(s) if s is not None else None for s in samples]
        for sample in samples:
            if sample is not None and method.in_llm_finished(sample):
                sample.memory["finished"] = True
        if all(r is None for r in reductions):
            return None
        new_group, slot_index = compact(group, reductions, layer_index, method.uses_proportional_attention())
        _reduce_layer_additions(state, group, reductions, slot_index)
        hidden = gather_slots(write_merged(hidden, group, reductions), slot_index, fill=0.0)
        lm_slots = group.lm_slots if group.lm_slots is not None else torch.arange(group.width, device=hidden.device)
        new_group.lm_slots = gather_ids(lm_slots.expand(len(slot_index), -1), slot_index, fill=-1)
        state.groups.append(new_group)
        state.reduced = True
    return hidden


def _layer_samples(method, adapter, state, layer_index, layer, hidden, group, kwargs) -> list[LayerSample | None]:
    budget_spent = state.stats.spent_before(layer_index)
    num_layers = adapter.spec.num_layers
    position_embeddings = group.at_slots(adapter.scoring_rotary(layer, hidden, kwargs))
    cached_keys = None  # after cached tokens, their keys at this layer: queries attend to them too
    if group.prefix is not None:
        cached_keys = adapter.cached_keys_values(compat.cache_of(kwargs), adapter.kv_source(layer_index))[0]
    samples: list[LayerSample | None] = []
    for b, slots in enumerate(group.visual_slots):
        layout = group.layouts[b]
        memory = state.memories[b]
        if not layout.num_tokens or memory.get("finished"):
            samples.append(None)
            continue
        visual_in = state.stats.sample_of_row(b).visual_in
        budget = LayerBudget(method.ratio, visual_in, num_layers, layer_index, budget_spent[b])

        valid = group.real_slots(b)
        question_slots = (valid & (group.origin[b] > group.origin[b, slots].max())).nonzero().squeeze(1)

        def attention_to_visual(num_queries: int, b=b, slots=slots, valid=valid) -> torch.Tensor:
            query_slots = valid.nonzero().squeeze(1)[-num_queries:]
            scores = _query_attention(adapter, layer, hidden, position_embeddings, group, b, query_slots, cached_keys)
            return scores.mean(dim=0)[slots]

        def question_attention(rows=None, b=b, slots=slots, question_slots=question_slots) -> torch.Tensor:
            query_slots = question_slots if rows is None else question_slots[rows]
            scores = _query_attention(
                adapter, layer, hidden, position_embeddings, group, b, query_slots, cached_keys, head_mean=False
            )
            return scores[..., slots]

        @functools.cache  # the q/k and the values of one set of rows: one host read for both
        def projected(last_and_visual: bool, b=b, slots=slots, valid=valid) -> torch.Tensor:
            """The slots whose projections a method reads, in sequence order: every real one, or the visual ones
            and the last."""
            real = valid.nonzero().squeeze(1)
            return torch.cat([slots, real[-1:]]) if last_and_visual else real

        def queries_and_keys(last_and_visual=False, b=b, slots=slots, projected=projected) -> tuple[torch.Tensor, ...]:
            rows = projected(last_and_visual)
            cos, sin = rotary_rows(position_embeddings, b, rows)
            queries = adapter.project_queries(layer, hidden[b, rows], cos, sin)
            return queries, adapter.project_keys(layer, hidden[b, rows], cos, sin), torch.searchsorted(rows, slots)

        def values(last_and_visual=False, b=b, projected=projected) -> torch.Tensor:
            return adapter.project_values(layer, hidden[b, projected(last_and_visual)])

        samples.append(LayerSample(
            layer_index, hidden[b, slots], layout, budget, memory, attention_to_visual,
            hidden[b, question_slots], question_attention, queries_and_keys, values,
        ))
    return samples


def _query_attention(
    adapter, layer, hidden, position_embeddings, group, b, query_slots, cached_keys=None, head_mean=True
):
    """Attention of sample b's tokens at `query_slots` over all its slots at this layer: (rows, W) head-mean,
    or (heads, rows, W). `cached_keys` (B, Hkv, K, d): the keys a cache holds before the group's slots (its
    `prefix`), which the queries attend to as well."""
    valid = group.real_slots(b)
    queries = adapter.project_queries(layer, hidden[b, query_slots], *rotary_rows(position_embeddings, b, query_slots))
    keys = adapter.project_keys(layer, hidden[b], *rotary_rows(position_embeddings, b))
    mask = valid[None, :] & (torch.arange(group.width, device=hidden.device)[None, :] <= query_slots[:, None])
    if cached_keys is None:
        return few_query_attention(queries, keys, mask, head_mean)
    cached = cached_keys.shape[-2]  # a sliding layer's cache holds the last tokens only
    keys = torch.cat([cached_keys[b].to(keys.dtype), keys], dim=-2)
    mask = torch.cat([group.prefix[b, -cached:].bool().expand(len(query_slots), -1), mask], dim=1) if cached else mask
    return few_query_attention(queries, keys, mask, head_mean)[..., cached:]
