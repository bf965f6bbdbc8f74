"""What a patch does in place of `generate`'s helpers on the model, installed as instance attributes that show the
stock method's signature (generate inspects it to pick the arguments it passes):

- beam search reorders a generation's state with its cache;
- sample expansion (beams, returned sequences) is counted, and the prompt's 2-D padding mask noted before generate
  builds 4-D masks for a static cache (generate itself forgets both when it returns, or fails before its forward);
- each step's inputs: the length of the conversation generate holds is noted (it feeds the part past the cache,
  which is shorter than what the generation saw);
- speculative decoding and chunked prefill are refused while the method compresses;
- a family that encodes videos up front (`generate` does, before the prompt's forward) encodes them through the
  engine, so pre- and in-encoder stages run there.
"""

from __future__ import annotations

import inspect

import torch

from ..stats import Timer
from . import compat
from .encoder import encode_videos
from .state import GenerationState


class StandIns:
    """The Engine's stand-ins for generate's helpers (a mixin: they share the engine's adapter, method and
    per-thread state)."""

    def _install_stand_ins(self) -> None:
        model, multimodal = self.adapter.model, self.adapter.multimodal_model
        stand_ins = [
            (model, compat.GENERATE, self._generate),
            (model, compat.REORDER_CACHE, self._reorder_beams),
            (model, compat.EXPAND_INPUTS, self._expand_samples),
            (model, compat.CANDIDATE_GENERATOR, self._refuse_speculative_decoding),
            (model, compat.PREPARE_INPUTS, self._prepare_step_inputs),
        ]
        if self.adapter.encodes_videos:
            stand_ins.append((multimodal, compat.ENCODE_VIDEOS, self._encode_videos))
        else:  # a video's frames go through the image encoder: timed there
            stand_ins.append((multimodal, compat.ENCODE_IMAGES, self._encode_images))
        if self.adapter.encodes_by_prompt:
            stand_ins.append((model, compat.PREPARE_ENCODER, self._encode_for_generation))
        # only where the class has the method (a patch of `model.model`, which cannot generate, adds none) - but the
        # beam reordering generate calls only if present; one the instance already holds (the caller's own wrapper)
        # is chained to, and put back after
        generates = hasattr(type(model), compat.GENERATE)
        self._stand_ins = [
            (module, name, _StandIn(method, module, name), vars(module).get(name))
            for module, name, method in stand_ins
            if hasattr(type(module), name) or (name == compat.REORDER_CACHE and generates)
        ]
        for module, name, stand_in, _ in self._stand_ins:
            setattr(module, name, stand_in)

    def _remove_stand_ins(self) -> None:
        for module, name, stand_in, held in self._stand_ins:
            if vars(module).get(name) is stand_in:
                if held is None:
                    delattr(module, name)
                else:
                    setattr(module, name, held)
        self._stand_ins = []

    def _stood_in(self, module, name: str):
        """What a stand-in stands in for: the instance's own callable it found there, else the class's method."""
        held = next((held for m, n, _, held in self._stand_ins if m is module and n == name), None)
        return held if held is not None else compat.inherited(module, name)

    def _generate(self, *args, **kwargs):
        """generate, after which nothing it noted for its prompt lingers: a call that fails between expanding its
        inputs and its first forward (a prompt past max_length, stop strings without a tokenizer) would otherwise
        hand its beam count to the next plain forward. It notes that it runs: without a cache (`use_cache=False`,
        however set) its prompt's prefill is refused, as every step would be a new prompt, compressed again."""
        cache = compat.cache_of(kwargs)
        ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
        # its videos are encoded whole where no prefill compresses them after: its prefill gets embeddings, no ids
        # to find them by (even beside the ids), or they continue a cache no prompt can be compressed behind
        embeds = kwargs.get("inputs_embeds") is not None or ids is None or ids.is_floating_point()
        self._local.generate_encodes_whole = embeds or (
            cache is not None and cache.get_seq_length() > 0 and self._why_uncompressed(cache) is not None
        )
        self._local.in_generate = True
        try:
            return self._stood_in(self.adapter.model, compat.GENERATE)(*args, **kwargs)
        finally:
            self._local.generate_rows = self._local.generate_padding = self._local.conversation_length = None
            self._local.generate_encodes_whole = self._local.in_generate = False

    def _reorder_beams(self, cache, beam_idx):
        cache = compat.reorder_cache(self.adapter.model, cache, beam_idx)
        state = GenerationState.of(cache)
        if state is not None:
            state.reorder(beam_idx)
        return cache

    def _expand_samples(self, *args, **kwargs):
        self._local.generate_rows = kwargs.get("expand_size", 1)  # generate() is preparing its prompt
        input_ids, model_kwargs = self._stood_in(self.adapter.model, compat.EXPAND_INPUTS)(*args, **kwargs)
        self._local.generate_padding = model_kwargs.get("attention_mask")  # before it builds masks for a static cache
        return input_ids, model_kwargs

    def _prepare_step_inputs(self, input_ids, *args, **kwargs):
        if compat.is_prefill_chunk(kwargs) and self.active:
            self._local.generate_rows = self._local.generate_padding = None  # no prompt follows
            raise ValueError(
                f"chunked prefill (prefill_chunk_size) is not supported with {self.method.name} at ratio "
                f"{self.method.ratio:g}: the method reads a prompt's videos whole, and a chunk holds part of one (or "
                "of the conversation already cached); generate without it - compressing already shrinks the prefill"
            )
        self._local.conversation_length = input_ids.shape[1]  # for the forward that follows
        return self._stood_in(self.adapter.model, compat.PREPARE_INPUTS)(input_ids, *args, **kwargs)

    def _refuse_speculative_decoding(self, *args, **kwargs):
        if self.active:
            self._local.generate_rows = self._local.generate_padding = None  # no prompt follows
            raise ValueError(
                f"speculative decoding (assistant_model / prompt_lookup_num_tokens) is not supported with "
                f"{self.method.name} at ratio {self.method.ratio:g}: draft tokens would join the prompt the method "
                "scores and the cache is cropped behind its back; generate without them, or unpatch first"
            )
        return self._stood_in(self.adapter.model, compat.CANDIDATE_GENERATOR)(*args, **kwargs)

    def _encode_for_generation(self, inputs_tensor, model_kwargs, *args, **kwargs):
        """generate encodes the videos before its first forward: that encoding reads the prompt from here (not embeds:
        no ids to read; a later turn that no prefill compresses behind its cache has its videos encoded whole)."""
        prompt_ids = None if inputs_tensor.is_floating_point() else inputs_tensor
        self._local.generate_prompt_ids = prompt_ids
        try:
            prepare = self._stood_in(self.adapter.model, compat.PREPARE_ENCODER)
            return prepare(inputs_tensor, model_kwargs, *args, **kwargs)
        finally:
            self._local.generate_prompt_ids = None

    def _encode_videos(self, *args, **kwargs):
        encode = self._stood_in(self.adapter.multimodal_model, compat.ENCODE_VIDEOS)
        prompt = getattr(self._local, "prompt", None)  # a forward in progress, whose videos these are
        prompt_ids = getattr(self._local, "generate_prompt_ids", None)
        prompt_ids = prompt.input_ids if prompt_ids is None and prompt is not None else prompt_ids
        # a forward (or generate) given embeddings, no ids: nothing tells its LLM where the videos are; a call
        # continuing a cache no prompt is compressed behind: no prefill follows to remove what the tower skips. Either
        # way, the tower encodes every frame
        readable = prompt is None or prompt.input_ids is not None or prompt_ids is not None
        whole = getattr(self._local, "generate_encodes_whole", False) or getattr(self._local, "continuing", False)
        self._local.encoding_videos = True
        try:
            output, encoded = encode_videos(
                self.method, self.adapter, encode, args, kwargs, prompt_ids, readable and not whole
            )
        finally:
            self._local.encoding_videos = False
        # the tower's calls on these videos go with the record of their encoding, however late its features are read
        encoded.tower_calls, self._local.tower_calls = getattr(self._local, "tower_calls", []), []
        self._local.encoded = encoded
        return output


    def _encode_images(self, *args, **kwargs):
        """The image encoder of a family that encodes a video's frames as images, timed for the stats (the next
        prefill's `encoder_seconds`)."""
        encode = self._stood_in(self.adapter.multimodal_model, compat.ENCODE_IMAGES)
        pixels = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        timer = getattr(self._local, "image_encoding", None) or Timer()
        with timer.measure(pixels.device if pixels is not None else torch.device("cpu")):
            output = encode(*args, **kwargs)
        self._local.image_encoding = timer
        return output


class _StandIn:
    """Calls `method` in place of `module.<name>`, showing the stock method's signature (generate inspects it)."""

    def __init__(self, method, module, name: str):
        self.method, self.module, self.name = method, module, name

    def __call__(self, *args, **kwargs):
        return self.method(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(compat.inherited(self.module, self.name))
