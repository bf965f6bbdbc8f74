"""Where the engine meets the model: its hooks, and which stage each call belongs to.

- the multimodal model (`XModel.forward`): the adapter reads where the visual tokens are;
- the language model (the decoder stack): a prompt starts a generation and pre-LLM reductions shrink its
  inputs; a call that continues the generation's cache is a decoding step; the prefill's hidden states are
  scattered back to the caller's sequence length on return;
- every decoder layer: in-LLM reductions shrink the hidden states before layer k, each later layer gets the
  mask, rotary tables and position ids of the tokens it really sees, and decode-time methods make a layer
  attend to a selected subset of its KV entries.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch

from ..layout import VisualLayout
from ..methods.base import DECODE, IN_LLM, PRE_LLM, Method
from ..stats import CompressionStats
from . import compat
from .decode import next_positions, select_visual_kv, start_decode_step
from .groups import GenerationState, restore_sequence
from .prefill import begin_generation, reduce_before_layer, reduce_before_llm

if TYPE_CHECKING:
    from ..adapters.base import Adapter


class Engine:
    """Hooks a method into one model through its adapter; `detach()` removes every hook."""

    def __init__(self, adapter: Adapter, method: Method):
        implementation = compat.attention_implementation(adapter.language_model.config)
        if method.uses_proportional_attention() and "flash" in implementation:
            raise ValueError(
                f"{method.name} with proportional attention needs a float attention mask, which {implementation} "
                "cannot take; pass proportional_attention=False or load the model with attn_implementation='sdpa'"
            )
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
        if state is not None and state.continues(compat.cache_of(kwargs)) and kwargs.get("position_ids") is None:
            # Left to itself, HF would count decode positions from the (shorter) cache; continue as generate does.
            kwargs["position_ids"] = next_positions(state.last_positions, _sequence_length(args, kwargs))
            return args, kwargs
        return None

    def _on_llm_call(self, module, args, kwargs):
        if not self.active:
            self.state = None
            return None
        cache = compat.cache_of(kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            if self.state is not None and self.state.continues(cache):
                start_decode_step(self.state, kwargs)
                return args, kwargs
            self.state = None  # continuing a cache this engine did not fill: leave it alone
            return None
        return self._start_prefill(args, kwargs)

    def _start_prefill(self, args, kwargs):
        layouts, self._pending_layouts = self._pending_layouts, None
        self.state = None
        if kwargs.get("inputs_embeds") is None or layouts is None:
            self.last_stats = CompressionStats.empty(self.method, note="no input_ids: visual tokens unknown, untouched")
            return None
        if not any(layout.num_tokens for layout in layouts):
            self.last_stats = CompressionStats.empty(self.method, note="no visual tokens: passed through untouched")
            return None
        self.state = begin_generation(self.method, layouts, kwargs)
        if PRE_LLM not in self.method.stages:
            return None
        reduce_before_llm(self.method, self.spec.num_layers, self.state, kwargs)
        return args, kwargs

    def _on_llm_return(self, module, args, kwargs, output):
        state = self.state
        if state is None:
            return None
        if state.cache is None and compat.output_cache(output) is not None:
            state.cache = weakref.ref(compat.output_cache(output))
        hidden = output.last_hidden_state
        if not state.stats.finished:
            last = state.groups[-1]
            for sample, slots, origin in zip(state.stats.samples, last.visual_slots, last.origin):
                sample.kept_positions = origin[slots].tolist()
            if state.reduced:
                output.last_hidden_state = restore_sequence(hidden, last, state.full_length)
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
            method = self.method
            selects = decoding and DECODE in method.stages and layer_index >= method.decode_start_layer(self.spec)
            if decoding and not selects and not state.group_of(layer_index).owns_mask:
                return None  # the LM's own mask and rotary tables fit this layer: nothing to change
            hidden = args[0] if args else kwargs["hidden_states"]
            if not decoding and IN_LLM in method.stages:
                reduced = reduce_before_layer(method, self.adapter, state, layer_index, module, hidden, kwargs)
                hidden = hidden if reduced is None else reduced
            group = state.group_of(layer_index)
            if group.owns_mask:
                group.substitute_inputs(self.adapter.language_model.config, layer_index, hidden, kwargs, decoding)
            if selects:
                select_visual_kv(method, self.adapter, state, layer_index, module, hidden, group, kwargs)
            if not decoding:
                state.stats.record_layer(layer_index, [len(s) for s in group.visual_slots])
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook


def _sequence_length(args, kwargs) -> int:
    for name in ("input_ids", "inputs_embeds"):
        if kwargs.get(name) is not None:
            return kwargs[name].shape[1]
    return args[0].shape[1]
