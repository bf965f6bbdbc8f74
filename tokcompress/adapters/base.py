"""What the engine needs to know about one model family, and nothing more."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..engine import compat
from ..layout import VisualLayout
from ..methods.base import ModelSpec
from ..ops import attention_received, attention_row_sharpness

if TYPE_CHECKING:
    from ..engine.encoder import TowerCall


def rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on the first cos.shape[-1] dims of each head (all of them, or a part: Qwen3.5)."""
    dims = cos.shape[-1]
    if dims < states.shape[-1]:
        return torch.cat((rotate(states[..., :dims], cos, sin), states[..., dims:]), dim=-1)
    half = dims // 2
    rotated = torch.cat((-states[..., half:], states[..., :half]), dim=-1)
    return states * cos + rotated * sin


class Adapter:
    """Base adapter for multimodal models whose decoder layers follow the Llama/Qwen2 layout.

    A subclass names its `model_type` and says where the visual tokens are (`visual_layouts`). The default
    `project_queries` / `project_keys` / `project_values` fit decoders whose layers hold `input_layernorm` and a
    `self_attn` with `q_proj` / `k_proj` / `v_proj` and rotate-half RoPE (q/k/v norms where it has them);
    families that differ override them.
    """

    model_type: ClassVar[str]
    mrope: ClassVar[bool] = False  # whether the LLM takes 3-D M-RoPE positions
    packed_vision_attention: ClassVar[bool] = False  # whether the tower's attention takes packed windows (cu_seqlens)
    encoder_side: ClassVar[bool] = True  # whether a pre-encoder method can keep frames from the tower (not InternVL)
    # whether `frame_signatures` / `encode_frames` read the prompt's ids (`encoder_args[compat.PROMPT_IDS]`) to tell the
    # call's units apart (MiniCPM-V: its call packs every video's frames and slices alike); without them (the features
    # encoded on their own) the tower encodes every unit and the prefill chooses frames from their features
    encodes_by_prompt: ClassVar[bool] = False
    tower_has_cls: ClassVar[bool] = False  # whether tower tokens start with a CLS token (VisionZip reads its row)
    has_tower: ClassVar[bool] = True  # False: encoder-free, patches projected straight into the LLM (Gemma 4 Unified)
    # How the tower holds a video's frames, where an in-encoder method can fold them: BATCHED (one image per batch
    # row: the LLaVA families), PACKED (frame units back to back in one packed sequence, attention inside each:
    # Qwen-VL), None (it cannot fold them: InternVL encodes before the prompt is read).
    tower_frames: ClassVar[str | None] = None
    tower_folding_refused: ClassVar[str] = "it encodes every image before the prompt is read"  # where tower_frames
    # is None: why frames cannot fold inside the tower
    tower_token_folding_refused: ClassVar[str | None] = None  # why the tower cannot fold tokens inside frames, if not
    temporal_merge: ClassVar[int] = 1  # steps of `video_grid_thw`'s time axis in one frame unit (ERNIE-4.5-VL: 2)
    grid_rows_are_units: ClassVar[bool] = False  # whether each `video_grid_thw` row is a frame unit, not a video
    # (Kimi K2.5's chunks)
    video_pixels: ClassVar[str] = "pixel_values_videos"  # the call keyword of video pixels (InternVL: its images')
    video_modality: ClassVar[str] = "video"  # their key in pre-encoded `mm_encoder_outputs`
    rotation = staticmethod(rotate)  # how the decoder applies RoPE to (the first dims of) each head

    def __init__(self, model: nn.Module):
        self.model = model
        # XForConditionalGeneration wraps the XModel as `.model`; accept either.
        self.multimodal_model = model.model if hasattr(model, "lm_head") else model
        multimodal = self.multimodal_model
        language_model = next(getattr(multimodal, name) for name in ("language_model", "text_model")
                              if hasattr(multimodal, name))  # SmolVLM: text_model
        # the decoder, also where the language model is a causal LM of its own (Nemotron-H Omni)
        self.language_model = language_model if hasattr(language_model, "layers") else language_model.model
        self.layers = self.language_model.layers
        # Video-LLaVA has a tower for videos beside its image tower; the others one tower for both; an encoder-free
        # model its patch embedder (Gemma 4 Unified)
        towers = ("video_tower", "vision_tower", "visual", "vision_model", "embed_vision")
        self.vision_tower = next(getattr(multimodal, name) for name in towers if hasattr(multimodal, name))
        self.spec = ModelSpec(self.model_type, self.reducible_layers, self.mrope)

    @property
    def config(self):
        return self.multimodal_model.config

    @property
    def tower_prefix_tokens(self) -> int:
        """How many tokens lead each frame in the tower ahead of its patches (a CLS; RADIO's class and register
        tokens): folds inside the tower keep them as they are."""
        return int(self.tower_has_cls)

    @property
    def video_token_id(self) -> int:
        """The placeholder id of video tokens in the prompt."""
        return self.config.video_token_id

    @property
    def encodes_videos(self) -> bool:
        """Whether the model encodes videos in `get_video_features` (InternVL and SmolVLM: as images), where the
        patch stands in to record each encoding."""
        return self.video_modality == "video"

    def carries_video(self, call_kwargs: dict[str, Any]) -> bool:
        """Whether this call brings video features; without them HF treats video placeholder ids as text."""
        encoded = compat.encoded_video(call_kwargs, self.video_modality)
        return call_kwargs.get(self.video_pixels) is not None or encoded is not None

    def carries_vision(self, call_kwargs: dict[str, Any]) -> bool:
        """Whether this call brings image or video features (an M-RoPE model numbers their tokens by their grids)."""
        image = call_kwargs.get("pixel_values") is not None or compat.encoded_video(call_kwargs, "image") is not None
        return image or self.carries_video(call_kwargs)

    def visual_layouts(self, call_kwargs: dict[str, Any]) -> list[VisualLayout] | None:
        """Per sample, the layout of the video tokens of this call; None when input_ids are not given."""
        input_ids = call_kwargs.get("input_ids")
        if input_ids is None:
            return None
        if not self.carries_video(call_kwargs):
            return [VisualLayout.from_videos([], [], device=input_ids.device) for _ in input_ids]
        return self.video_layouts(input_ids, call_kwargs)

    def video_layouts(self, input_ids: torch.Tensor, call_kwargs: dict[str, Any]) -> list[VisualLayout]:
        """Per sample, the layout of the video tokens, for a call that carries video features."""
        raise NotImplementedError

    def frame_signatures(self, encoder_args: dict[str, Any]) -> list[torch.Tensor]:
        """Per video of a `get_video_features` call, (frame units, n, D): the tower's patch embeddings of each
        unit (a frame, or the frames the tower encodes together)."""
        raise NotImplementedError

    def note_encoded(self, output: Any, encoder_args: dict[str, Any]) -> None:
        """Note on a `get_video_features` output what the prefill reading it needs where its call no longer says
        (`generate` encodes up front and drops the grids; VideoLLaMA3 has nothing else to tell them by)."""

    def encode_frames(self, encode, encoder_args: dict[str, Any], keep: list[torch.Tensor]) -> Any:
        """`encode` (the stock `get_video_features`) run on the kept frame units only; its output covers every
        unit, dropped ones reading zeros, so placeholders, grids and positions stay the model's own."""
        raise NotImplementedError

    @functools.cached_property
    def kv_layers(self) -> frozenset[int]:
        """Decoder layers that cache every token's keys and values, where decode-time KV selection applies: not
        Qwen3.5's linear-attention layers or LFM3's convolutions (a recurrent state), Nemotron-H's MoE / MLP blocks
        (no cache), sliding-window layers (their cache keeps the last tokens only) or layers that read another
        layer's KV (Gemma 4's KV sharing)."""
        config = self.language_model.config
        partial = (*compat.RECURRENT_LAYERS, *compat.TOKENWISE_LAYERS, compat.SLIDING_LAYER)
        return frozenset(
            i for i in range(len(self.layers)) if compat.layer_type(config, i) not in partial and self.kv_source(i) == i
        )

    @functools.cached_property
    def sliding_llm(self) -> bool:
        """Whether any decoder layer attends in a sliding window (Gemma 4, EXAONE 4.5, Cohere, Muse, dots3)."""
        config = self.language_model.config
        return any(compat.layer_type(config, i) == compat.SLIDING_LAYER for i in range(len(self.layers)))

    @functools.cached_property
    def recurrent_llm(self) -> bool:
        """Whether any decoder layer carries a recurrent state (Qwen3.5's linear attention, LFM3's convolutions)."""
        config = self.language_model.config
        return any(compat.layer_type(config, i) in compat.RECURRENT_LAYERS for i in range(len(self.layers)))

    @property
    def reducible_layers(self) -> int:
        """How many of the first decoder layers hold every prompt token, so that a reduction may act before them
        (`spec.num_layers`: the ratio is averaged over them); later ones see the tokens of the last of them."""
        return len(self.layers)

    def kv_source(self, layer_index: int) -> int:
        """The decoder layer whose keys and values `layer_index` attends to: itself, or (KV sharing) an earlier one."""
        return layer_index

    grids_after_cache: ClassVar[bool] = True
    """Whether `generate`'s call continuing a cache says each video's frame grid (its grids, or its M-RoPE rows):
    Qwen-Omni's and Cosmos3 Edge's hand such a call one row of text positions and no grids, so a video after cached
    tokens passes through uncompressed there."""
    bidirectional_layer_types: ClassVar[tuple[str, ...]] = ()
    """Decoder layer types in which a prompt's vision blocks (`attention_blocks`) attend both ways."""
    blocks_past_window: ClassVar[bool] = False
    """Whether a vision block attends both ways past a sliding layer's window (Gemma 4 Unified's forward), or only
    inside it (Gemma 4's)."""

    def attention_blocks(self, call_kwargs: dict[str, Any]) -> torch.Tensor | None:
        """(B, L) the bidirectional attention block of each token of a multimodal-model call (-1: none), where the
        model lets vision tokens attend both ways; None where it does not."""
        return None

    def mask_scorers(self) -> list[nn.Module]:
        """Modules inside the decoder layers that add the layer's attention mask to scores of their own (dots3's DSA
        indexers rank keys with it): proportional attention's key bias, meant for the softmax, is kept from them."""
        return []

    llm_token_inputs: ClassVar[tuple[str, ...]] = ()
    """Call keywords of the language model, besides embeddings and positions, with one entry per token along dim 1
    (Gemma 4's per-layer inputs): gathered with the tokens a pre-LLM reduction keeps."""

    llm_token_ids: ClassVar[tuple[str, ...]] = ()
    """Call keywords of the language model that it hands each decoder layer as they are, with an id per token (B, L)
    (ERNIE-4.5-VL's modality ids, which route each token to text or vision experts): they follow the tokens each
    layer sees, a merged token keeping its own id."""

    layers_with_additions: int = 0
    """How many of the first decoder layers add per-token features to their output (Qwen3-VL's DeepStack)."""

    def take_layer_additions(self, llm_kwargs: dict[str, Any]) -> torch.Tensor | None:
        """The per-token features the language model would add after its first `layers_with_additions` layers,
        taken out of its call kwargs so that the engine adds them to the tokens it keeps: (B, L, layers, D)."""
        return None

    def frame_counts(self, encoder_args: dict[str, Any]) -> list[int]:
        """Per video of a `get_video_features` call, its frame units, where the tower can fold them."""
        raise NotImplementedError(f"{self.model_type}: the vision tower cannot fold frames")

    def unit_rows(self, encoder_args: dict[str, Any]) -> list[int]:
        """Per video of a `get_video_features` call, the rows of one frame unit in a PACKED tower's sequence."""
        raise NotImplementedError(f"{self.model_type}: the vision tower does not pack frames")

    def tower_layers(self) -> tuple[nn.ModuleList, int]:
        """(the tower's layers, for BATCHED towers each with its attention as `self_attn`; how many of them lead
        to the features the model takes), where the tower can fold frames: an in-encoder method folds between
        them."""
        raise NotImplementedError(f"{self.model_type}: the vision tower cannot fold frames")

    def tower_readouts(self) -> list[nn.Module]:
        """The modules inside the tower that read its rows after the layers (a PACKED tower's patch merger and
        DeepStack's mergers, Gemma 4's pooler): their input is expanded back to every frame unit (and token) before
        they run. None (empty): the tower's output is its layers' rows, expanded where it leaves the tower."""
        return []

    tower_expands_at_last_layer: ClassVar[bool] = False
    """Whether a fold expands the tower's rows back at its last layer's output rather than at its readouts' input
    (Muse Glimmer's tower moves its rows out of their window order between the two)."""

    tower_row_outputs: ClassVar[tuple[str, ...]] = ("last_hidden_state", "hidden_states")
    """The outputs of a tower with readouts that hold its rows as its layers left them (not read out): expanded back
    to every frame unit's rows after a fold."""

    tower_row_kwargs: ClassVar[tuple[str, ...]] = ()
    """Call kwargs of a BATCHED tower's layers with a row per frame and an entry per token (dims 0 and 1; a tuple:
    each of its tensors), gathered for the frames and tokens that remain after a fold (Gemma 4's 2-D rotary tables
    and patch positions). A layer's `attention_mask` follows the frames too; folding tokens builds its own."""

    def tower_real_tokens(self, encoder_args: dict[str, Any]) -> list[int] | None:
        """Per video of a `get_video_features` call, the tokens of each of its frames that are not padding, where
        a BATCHED tower pads its frames at their end (Gemma 4); None where every token is real."""
        return None

    def tower_projection_modules(self, attention: nn.Module) -> list[nn.Module]:
        """The projections inside a tower layer's attention whose outputs on its input `tower_heads` reads: hooked
        while a method folds tokens, so their outputs are reused, not computed again (default: its linear layers)."""
        return [module for module in attention.modules() if isinstance(module, nn.Linear)]

    def tower_layer_attention(self, layer: nn.Module) -> nn.Module:
        """The attention module of one of `tower_layers()` (token folding reads its input)."""
        return layer.self_attn

    def tower_row_sharpness(
        self, attention: nn.Module, hidden: torch.Tensor, kwargs: dict, project: Projection | None = None
    ) -> torch.Tensor:
        """Σ_j Ā_ij log Ā_ij of each token's head-mean attention row in one call of a tower layer's attention
        (its input `hidden` and its other call kwargs): (images, tokens) in a batched tower, (rows,) in a packed
        one."""
        return attention_row_sharpness(*self.tower_heads(attention, hidden, kwargs, project)[:2])

    def tower_heads(
        self, attention: nn.Module, hidden: torch.Tensor, kwargs: dict, project: Projection | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries, keys and values one call of a tower layer's attention computes (its input `hidden`, its
        other call kwargs; rotary embedded where the tower rotates them), per head: (images, heads, tokens, d) in a
        batched tower, (heads, rows, d) in a packed one. `project(module)`: a projection's output on `hidden`
        (default: computed again; the engine hands over what the call itself computed)."""
        return vit_heads(attention, project or applied_to(hidden))

    def tower_attention(self) -> nn.Module:
        """The attention module of the tower layer whose output becomes the visual tokens; while a method that
        ranks tokens by the tower's attention (VisionZip) is patched in, the engine records its inputs."""
        raise NotImplementedError(f"{self.model_type}: no vision-tower attention scores")

    def tower_records(self) -> dict[str, nn.Module]:
        """By kind, the modules whose calls on a prompt's videos are recorded for `tower_token_scores` while a method
        ranks tokens by the tower's attention: the tower ("tower": its call starts a prompt's records) and
        `tower_attention()` ("attention"); a family adds what else its scores need (Molmo2's patch pooler)."""
        return {"tower": self.vision_tower, "attention": self.tower_attention()}

    def tower_attention_received(self, call: TowerCall) -> torch.Tensor:
        """The attention each tower token got in one recorded `tower_attention()` call, averaged over heads (and
        over queries, or the CLS row): (sequences, tokens), or (tokens,) for a packed call, in the call's order."""
        raise NotImplementedError(f"{self.model_type}: no vision-tower attention scores")

    def tower_token_scores(
        self, records: list[TowerCall], input_ids: torch.Tensor, standing: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Per frame unit of the prompt's videos that the tower encoded (and that still stood at its end), in
        order: the attention each of its visual tokens got in `tower_attention()` (its tower tokens' scores pooled
        as the model pools them), (tokens per unit,) - or, where a video's frames differ in size, (rows, columns)
        for the top-left corner of its grid (MiniCPM-V). `records` are the tower's and that module's calls for this
        prompt, in order; `input_ids` has one row per sample; `standing`: per video, the frame units that still
        stood at the tower's end where it left some out (None: all those the tower call encoded)."""
        raise NotImplementedError(f"{self.model_type}: no vision-tower attention scores")

    def scoring_rotary(self, layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> Any:
        """The rotary tables (cos, sin) that `project_queries` / `project_keys` get at `layer`, from its call kwargs
        on the (B, L, D) `hidden`: the layer's own (None: a layer without RoPE)."""
        return kwargs.get("position_embeddings")

    def project_queries(
        self, layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None
    ) -> torch.Tensor:
        """(Hq, n, d) rotary-embedded queries (cos None: a layer without RoPE) of `layer` for the (n, D) hidden
        states entering it."""
        attention = layer.self_attn
        return self.rotated(self.heads(layer, attention.q_proj, getattr(attention, "q_norm", None), hidden), cos, sin)

    def project_keys(
        self, layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None
    ) -> torch.Tensor:
        """(Hkv, n, d) rotary-embedded keys (cos None: a layer without RoPE) of `layer` for the (n, D) hidden states
        entering it."""
        attention = layer.self_attn
        return self.rotated(self.heads(layer, attention.k_proj, getattr(attention, "k_norm", None), hidden), cos, sin)

    def cached_keys_values(self, cache: Any, layer_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Hkv, K, d) keys and values, as `project_keys` / `project_values` give them, that `cache` holds for
        decoder layer `layer_index` (Kimi K2.5's cache holds latents, expanded here)."""
        return compat.cached_entries(cache, layer_index)

    def rotated(self, states: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        """States turned by the decoder's RoPE, or as they are in a layer without it (NoPE)."""
        return states if cos is None else self.rotation(states, cos, sin)

    def project_values(self, layer: nn.Module, hidden: torch.Tensor):
        """(Hkv, n, d) values of `layer` for the (n, D) hidden states entering it (v_proj, or the keys' projection
        where a layer shares it - Gemma 4's global layers)."""
        attention = layer.self_attn
        projection = attention.v_proj if getattr(attention, "v_proj", None) is not None else attention.k_proj
        return self.heads(layer, projection, getattr(attention, "v_norm", None), hidden)

    def heads(
        self, layer: nn.Module, projection: nn.Module, norm: nn.Module | None, hidden: torch.Tensor
    ) -> torch.Tensor:
        """(heads, n, d): a projection of the layer's normed input, normed per head where the model does (Qwen3's
        q/k, Gemma 4's q/k/v)."""
        states = projection(layer.input_layernorm(hidden)).view(hidden.shape[0], -1, layer.self_attn.head_dim)
        return (states if norm is None else norm(states)).transpose(0, 1)


def feature_layer_index(config) -> int:
    """The tower layer whose output the model takes: `vision_feature_layer` k indexes hidden_states, the output
    of layer k - 1 (k < 0: of layer k). A list (features of several layers, concatenated) is refused: what reads
    the tower's attention or folds inside it acts at one layer."""
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(
            f"this model's vision_feature_layer is {layer}: its features join several tower layers, and a method "
            "that reads the vision tower's attention or folds inside it acts at one; set vision_feature_layer to one "
            "layer, or use a method acting before the tower or in the LLM (framededup, framefusion, fastv, ...)"
        )
    return layer if layer < 0 else layer - 1


def vit_attention_received(attention: nn.Module, hidden: torch.Tensor, from_first: bool) -> torch.Tensor:
    """(images, tokens) head-mean attention each token gets in a ViT attention module on its (images, tokens, D)
    input."""
    return attention_received(*vit_queries_keys(attention, applied_to(hidden)), from_first)


Projection = Callable[[nn.Module], torch.Tensor]
"""A projection module's output on an attention call's input."""


def applied_to(hidden: torch.Tensor) -> Projection:
    """Projections computed on `hidden`."""
    return lambda module: module(hidden)


def vit_queries_keys(attention: nn.Module, project: Projection) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, heads, tokens, d) queries and keys of a ViT attention module (q_proj / k_proj, q/k norms where it
    has them) from its projections of its (images, tokens, D) input."""
    identity = nn.Identity()
    queries = getattr(attention, "q_norm", identity)(project(attention.q_proj))
    keys = getattr(attention, "k_norm", identity)(project(attention.k_proj))
    return split_heads(queries, head_count(attention)), split_heads(keys, head_count(attention))


def vit_heads(attention: nn.Module, project: Projection) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Its queries and keys (`vit_queries_keys`) and its values (v_proj), per head."""
    return *vit_queries_keys(attention, project), split_heads(project(attention.v_proj), head_count(attention))


def head_count(attention: nn.Module) -> int:
    """A ViT attention module's heads, as the module names them (`num_heads`; RADIO's `num_attention_heads`)."""
    return attention.num_heads if hasattr(attention, "num_heads") else attention.num_attention_heads


def split_heads(states: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., n, H·d) → (..., H, n, d)."""
    return states.unflatten(-1, (num_heads, -1)).transpose(-3, -2)
