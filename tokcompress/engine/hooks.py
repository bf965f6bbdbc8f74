"""Where the engine meets the model: its hooks, and which stage each call belongs to.

- the multimodal model (`XModel.forward`): the adapter reads where the visual tokens are; a call that
  continues a generation's cache gets the positions (and only the tokens) that generation has not seen
  (continuation.py), whatever patch is in place then;
- the language model (the decoder stack): a prompt starts a generation and pre-LLM reductions shrink its
  inputs; a call that continues the generation's cache is a decoding step; the prefill's hidden states are
  scattered back to the caller's sequence length on return;
- every decoder layer: in-LLM reductions shrink the hidden states before layer k, each later layer gets the
  mask, rotary tables and position ids of the tokens it really sees, and decode-time methods make a layer
  attend to a selected subset of its KV entries;
- `generate`'s helpers on the model, for which the engine stands in (stand_ins.py).

A generation's state lives on its KV cache; the forward in progress is tracked per thread. So generations
that interleave, run in threads, or continue a copied cache never see each other's state, and a deep copy
or pickle of a patched model carries a whole, independent patch.
"""

from __future__ import annotations

import functools
import threading
import warnings
from typing import TYPE_CHECKING

import torch

from ..methods.base import DECODE, IN_LLM, Method
from ..ops.varlen import varlen_available
from ..stats import CompressionStats
from . import compat
from .continuation import CONTINUING, Continuations
from .decode import record_decode_reads, select_visual_kv, start_decode_step
from .encoder import TowerCall
from .folding import check_tower_use, folds_in_tower, hook_tower_folding, tower_attends_by_size
from .prefill import reduce_before_layer
from .prompts import Prompt, Prompts
from .stand_ins import StandIns
from .state import IDENTITY_STATS_ATTRIBUTE, GenerationState
from .training import Labels

if TYPE_CHECKING:
    from ..adapters.base import Adapter


class Engine(Continuations, Labels, Prompts, StandIns):
    """Hooks a method into one model through its adapter; `detach()` removes every hook."""

    def __init__(self, adapter: Adapter, method: Method, varlen_vision: bool = True):
        implementation = compat.attention_implementation(adapter.language_model.config)
        if method.uses_proportional_attention() and "flash" in implementation:
            raise ValueError(
                f"{method.name} with proportional attention needs a float attention mask, which {implementation} "
                "cannot take; pass proportional_attention=False or load the model with attn_implementation='sdpa'"
            )
        check_tower_use(method, adapter)
        self.adapter = adapter
        self.method = method
        self.spec = adapter.spec
        self.kv_layers = adapter.kv_layers  # where decode-time KV selection applies
        self._last_stats = CompressionStats.empty(method, note="no forward pass yet")
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._stand_ins: list[tuple] = []
        self._local = threading.local()
        self.varlen_vision = varlen_vision
        self._vision_attention: str | None = None  # the tower's own implementation while ours stands in

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> None:
        try:
            self._hooks.append(
                self.adapter.multimodal_model.register_forward_pre_hook(self._on_model_call, with_kwargs=True)
            )
            # a forward that stops before its LLM (an error in the tower, a refused prompt) must not leave its
            # prompt for a later encoding to read (MiniCPM-V's get_video_features would split its videos by it)
            self._hooks.append(
                self.adapter.multimodal_model.register_forward_hook(self._after_model_call, always_call=True)
            )
            top = self.adapter.model  # the model computing a training loss (a patch of model.model: none is)
            self._hooks.append(top.register_forward_pre_hook(self._hold_labels, with_kwargs=True))
            self._hooks.append(top.register_forward_hook(self._release_labels, always_call=True))
            lm = self.adapter.language_model
            self._hooks.append(lm.register_forward_pre_hook(self._on_llm_call, with_kwargs=True))
            self._hooks.append(lm.register_forward_hook(self._on_llm_return, with_kwargs=True))
            for index, layer in enumerate(self.adapter.layers):
                hook = functools.partial(self._on_layer, index)
                self._hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
            for index, layer in enumerate(self.adapter.layers[: self.adapter.layers_with_additions]):
                self._hooks.append(layer.register_forward_hook(functools.partial(self._after_layer, index)))
            if self.method.uses_proportional_attention():
                for module in self.adapter.mask_scorers():
                    self._hooks.append(module.register_forward_pre_hook(compat.without_key_bias, with_kwargs=True))
            if self.method.uses_tower_attention():
                for kind, module in self.adapter.tower_records().items():
                    hook = functools.partial(self._record_tower_call, kind)
                    self._hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            if folds_in_tower(self.method, self.adapter):
                self._hooks.extend(hook_tower_folding(self.method, self.adapter))
            self._install_stand_ins()
            self._choose_vision_attention()
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._remove_stand_ins()
        self._restore_vision_attention()

    def use_method(self, method: Method) -> None:
        """Apply `method` (the same one at another ratio) from the next forward on."""
        self.method = method
        self._restore_vision_attention()
        self._choose_vision_attention()

    def _choose_vision_attention(self) -> None:
        implementation = self._packed_vision_attention()
        if implementation is not None:
            self._vision_attention = compat.use_attention(self.adapter.vision_tower.config, implementation)

    def _restore_vision_attention(self) -> None:
        if self._vision_attention is not None:
            compat.use_attention(self.adapter.vision_tower.config, self._vision_attention)
            self._vision_attention = None

    def _packed_vision_attention(self) -> str | None:
        """Ours for a packed tower's attention, or None to leave the stock one: the fused varlen kernel where it
        runs (unless turned off), else one sdpa call per window length where tokens fold inside the tower with
        their mass at a ratio below 1 (the stock path would drop their proportional attention; at ratio 1 the
        tower is the stock one, bit for bit). Elsewhere stock sdpa's call per window stays: batching the windows
        of a length is the same math, but measured on the CPU no faster (the attention itself dominates)."""
        if self.varlen_vision and (fused := fused_vision_attention(self.adapter)) is not None:
            return fused
        if not self.adapter.packed_vision_attention:
            return None
        if tower_attends_by_size(self.method, self.adapter) and self.method.compresses():
            return compat.SEGMENT_ATTENTION
        return None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_local"]  # per-thread bookkeeping of forwards in progress: none survives a copy
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @property
    def active(self) -> bool:
        return self.method.compresses()

    @property
    def last_stats(self) -> CompressionStats:
        """Stats of this thread's last forward or generation (of any thread's, if this one ran none)."""
        return getattr(self._local, "last_stats", None) or self._last_stats

    @last_stats.setter
    def last_stats(self, stats: CompressionStats) -> None:
        self._local.last_stats = self._last_stats = stats

    def _record_tower_call(self, kind: str, module, args, kwargs):
        """Keep the inputs of the tower's call on a prompt's videos (InternVL: on its images, the frames among
        them) for the prefill; each such call encodes the whole prompt, so it replaces what an earlier one left."""
        if not self.active or (self.adapter.encodes_videos and not getattr(self._local, "encoding_videos", False)):
            return None
        if kind == "tower":
            self._local.tower_calls = []
        self._local.tower_calls.append(TowerCall(kind, args, kwargs))
        return None

    # ------------------------------------------------------------------ hooks
    def _on_model_call(self, module, args, kwargs):
        cache = compat.cache_of(kwargs)
        cached = 0 if cache is None else cache.get_seq_length()
        # set by generate() for the prompt it prepared; a plain forward has one row per sample
        generate_rows = getattr(self._local, "generate_rows", None)
        generate_padding = getattr(self._local, "generate_padding", None)
        conversation = getattr(self._local, "conversation_length", None)  # set by generate for this step
        self._local.generate_rows = self._local.generate_padding = self._local.conversation_length = None
        # its videos, if any, are encoded whole where no prefill follows to compress them
        uncompressed = self._why_uncompressed(cache) if cached else None
        self._local.continuing = uncompressed is not None
        # a compressed generation continues as it started, whatever patch is in place now (another method or ratio)
        state = GenerationState.of(cache) if cached else None
        if state is not None:
            return self._continue_generation(state, args, kwargs, conversation)
        try:
            layouts = self.adapter.visual_layouts(kwargs)
        except ValueError as refusal:  # a prompt no method can read; the identity passes it through all the same
            if self.active:
                raise
            self.last_stats = CompressionStats.empty(self.method, note=f"passed through untouched: {refusal}")
            return None
        has_video = bool(layouts) and any(layout.num_tokens for layout in layouts)
        if layouts is None and self.active and self.adapter.carries_video(kwargs):
            warnings.warn(
                f"tokcompress: {self.method.name} compresses nothing here: the model was given inputs_embeds, not "
                "input_ids, so nothing tells where the video tokens are; pass input_ids"
            )
        if self._local.continuing and self.active:  # after a cache whose tokens it cannot compress behind
            self._refuse_features_missing_frames(kwargs, CONTINUING)
            if layouts:
                self._note_later_video(None, layouts, uncompressed, generate_rows or 1)
            return None
        if not self.active:
            self._refuse_features_missing_frames(kwargs, "the model no longer compresses (ratio 1): encode the video "
                                                         "again, or set the ratio back")
            if has_video:
                stats = CompressionStats.identity(self.method, layouts, self.spec.num_layers, generate_rows or 1)
                stats.num_layers = len(self.adapter.layers)
                self.last_stats = stats
            elif not cached:
                self.last_stats = CompressionStats.empty(self.method, note="no video tokens: passed through untouched")
            self._local.identity_prompt = not cached or has_video
            return None
        if not cached or has_video:  # a prompt (or a video after cached tokens)
            self._refuse_router_logits(kwargs)
            rows, input_ids = generate_rows or 1, kwargs.get("input_ids")
            padding = kwargs.get("attention_mask")
            if generate_rows is not None and not compat.is_padding_mask(padding):  # built for a static cache
                padding = generate_padding if _fits(generate_padding, input_ids) else padding
            model_masks = (padding, self.adapter.attention_blocks(kwargs))
            self._local.prompt = Prompt(layouts, rows, generate_rows is not None, input_ids, model_masks, cached)
            if kwargs.get(self.adapter.video_pixels) is not None:
                self._local.encoded = None  # this forward encodes its videos itself
            elif (carried := compat.encoding_record(kwargs, self.adapter.video_modality)) is not None:
                self._local.encoded = carried  # pre-encoded features: what their encoding kept, however often reused
        return None

    def _after_model_call(self, module, args, output):
        self._local.prompt, self._local.continuing, self._local.identity_prompt = None, False, False

    def _refuse_router_logits(self, kwargs) -> None:
        """A ValueError naming the fix where a mixture-of-experts forward is asked for its router logits: their
        load-balancing loss weighs every layer's rows by the whole prompt's mask, and a layer here routes only the
        tokens it keeps (the stock function fails on the lengths, and the logits would not line up with positions)."""
        config = self.adapter.language_model.config
        if kwargs.get("output_router_logits", getattr(config, "output_router_logits", False)):
            raise ValueError(
                f"output_router_logits is not supported while {self.method.name} compresses: each layer routes only "
                f"the visual tokens it keeps, so the router logits and their load-balancing loss no longer line up "
                f"with the prompt; pass output_router_logits=False (or set the text config's to False; generation "
                f"needs none), or unpatch for the auxiliary loss"
            )

    def _on_llm_call(self, module, args, kwargs):
        self._local.state = None
        cache = compat.cache_of(kwargs)
        continuing = cache is not None and cache.get_seq_length() > 0
        state = GenerationState.of(cache) if continuing else None
        if state is None and not self.active:
            encoded, self._local.encoded = getattr(self._local, "encoded", None), None
            if encoded is not None:  # the identity's stats time the vision tower too
                self.last_stats.encoder_time.add(encoded.take_times()[1])
            self._add_image_encoding(self.last_stats)
            # a prompt (or a video after cached tokens) has stats of its own, which go on the cache it fills; any
            # other call continues an uncompressed generation's, counting its steps
            prompt = getattr(self._local, "identity_prompt", False) or not continuing
            identity = None if prompt else getattr(cache, IDENTITY_STATS_ATTRIBUTE, None)
            if identity is not None:
                identity.decode_steps += 1
                self.last_stats = identity
            self._local.identity_prompt = prompt
            return None
        if continuing:
            if state is None:  # a cache no compressed generation filled: a prompt after it, or left alone
                prompt = getattr(self._local, "prompt", None)
                return self._start_prefill(args, kwargs) if prompt is not None and prompt.cached else None
            self._local.state = state
            self.last_stats = state.stats
            blocks, self._local.chunk_blocks = getattr(self._local, "chunk_blocks", None), None
            padding, self._local.chunk_padding = getattr(self._local, "chunk_padding", None), None
            start_decode_step(state, kwargs, self.adapter, blocks, padding)
            return args, kwargs
        return self._start_prefill(args, kwargs)

    def _on_llm_return(self, module, args, kwargs, output):
        state = getattr(self._local, "state", None)
        if state is None:
            cache = compat.output_cache(output)
            if getattr(self._local, "identity_prompt", False) and cache is not None:
                setattr(cache, IDENTITY_STATS_ATTRIBUTE, self.last_stats)
            self._local.identity_prompt = False
            return None
        self._local.state = None
        hidden = output.last_hidden_state
        if not state.stats.finished:
            self._finish_prefill(state, output)
        else:  # as many tokens as it was fed (after KV sharing it may return the last one only)
            fed = kwargs.get("inputs_embeds")
            fed = kwargs.get("input_ids") if fed is None else fed
            state.full_length += (hidden if fed is None else fed).shape[1]
            state.stats.decode_steps += 1
            if DECODE in state.method.stages:
                record_decode_reads(state, self.adapter, functools.partial(self._selects_kv, state.method))
        return output

    def _on_layer(self, layer_index: int, module, args, kwargs):
        state = getattr(self._local, "state", None)
        if state is None:
            return None
        method, adapter = state.method, self.adapter
        decoding = state.stats.finished
        mask_layer = adapter.kv_source(layer_index)  # whose keys it reads: its own, or those it shares
        selects = decoding and DECODE in method.stages and self._selects_kv(method, mask_layer)
        if decoding and not selects and not state.group_of(layer_index).owns_mask:
            return None  # the LM's own mask and rotary tables fit this layer: nothing to change
        hidden = args[0] if args else kwargs["hidden_states"]
        reducible = layer_index < self.spec.num_layers  # later layers (KV sharing) follow the last reducible one
        if not decoding and IN_LLM in method.stages and reducible:
            reduced = reduce_before_layer(method, adapter, state, layer_index, module, hidden, kwargs)
            hidden = hidden if reduced is None else reduced
        group = state.group_of(layer_index)
        if group.owns_mask:
            group.substitute_inputs(adapter, layer_index, mask_layer, hidden, kwargs, decoding)
            if not decoding and hidden.shape[1] == group.width:  # the layer's per-token inputs
                if len(args) > 1:
                    args = (args[0], group.at_slots(args[1]), *args[2:])
                for name in adapter.llm_token_ids:
                    if kwargs.get(name) is not None:
                        kwargs[name] = group.at_slots(kwargs[name], ids=True)
        if selects and mask_layer == layer_index:
            select_visual_kv(method, adapter, state, layer_index, module, hidden, group, kwargs)
        elif selects and group.kv_selection is not None:  # it reads the selected keys of the layer it shares them with
            kwargs["attention_mask"] = group.kv_selection[1]
        if not decoding and reducible:
            state.stats.record_layer(layer_index, [len(s) for s in group.visual_slots])
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 4 and mask.shape[-2] > hidden.shape[1]:
            kwargs["attention_mask"] = mask[..., -hidden.shape[1] :, :]  # the LM computes its last tokens only
        if args:
            args = (hidden, *args[1:])
        else:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    def _selects_kv(self, method: Method, layer_index: int) -> bool:
        """Whether decode-time selection makes this layer (one that caches its own KV) read selected entries."""
        return layer_index >= method.decode_start_layer(self.spec) and layer_index in self.kv_layers

    def _after_layer(self, layer_index: int, module, args, output):
        """Adds the model's per-token features after one of its first layers (DeepStack), to the tokens kept."""
        state = getattr(self._local, "state", None)
        if state is None or state.layer_additions is None:
            return None
        return output + state.layer_additions[:, :, layer_index].to(output.dtype)


def fused_vision_attention(adapter: Adapter) -> str | None:
    """The fused varlen kernel for a packed tower's windows where it runs here (CUDA, half precision), which a patch
    puts in place of stock sdpa's loop over them; None elsewhere."""
    if adapter.packed_vision_attention and varlen_available(next(adapter.vision_tower.parameters())):
        return compat.VARLEN_ATTENTION
    return None


def _fits(padding: torch.Tensor | None, input_ids: torch.Tensor | None) -> bool:
    """Whether a 2-D padding mask noted for a prompt has its shape (None: no padding, which fits any)."""
    return padding is None or input_ids is None or padding.shape == input_ids.shape
