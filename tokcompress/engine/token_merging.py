"""Tokens folded inside every frame of a vision tower (`TokenMerging`), for one encoder call: size-tracked or
pruned, with proportional attention in the later layers where they carry mass, and the tower's output expanded back
to every token of the grid."""

from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING

import torch

from ..methods.base import Method, TokenFolding, TowerTokens
from ..ops import attention_row_sharpness, weighted_merge
from . import compat
from .folding import TowerFolding, rows_through_layers
from .rows import PackedRows

if TYPE_CHECKING:
    from ..adapters.base import Adapter


class TokenMerging(TowerFolding):
    """Inside every frame, tokens fold together after the method's merge layers, size-tracked, and the tower's
    output is expanded back to every token of the grid, each reading the token it folded into - so the model's
    own feature selection, pooling and merger run unchanged.

    The method sees one block per video: its frames' current tokens (a leading CLS never folds; a batched tower's
    padding at the end of a frame - Gemma 4's - is left out and goes at the first merge). A batched tower's frames
    then hold the most tokens any video kept, a video that kept fewer filling its rows with masked keys. Where
    tokens fold with their mass (`Method.folds_with_mass`), every later layer adds log(size) to each key's attention
    logits (proportional attention): a batched tower through a float mask, a packed one through the `compat.KEY_BIAS`
    keyword its attention (ours: the engine puts it in) reads. A folded token keeps its kept token's place: a packed
    tower's rotary row and window, a batched one's `Adapter.tower_row_kwargs`. A method may carry a value per token
    from one of its merge layers to the next (`TokenFolding.carry`)."""

    def __init__(self, method: Method, adapter: Adapter, frames: list[torch.Tensor], encoder_args: dict):
        super().__init__(method, adapter, frames, encoder_args)
        self.packed = self.unit_rows is not None
        if self.packed:  # per video, its frames' current tokens
            self.fixed, self.tokens = adapter.tower_prefix_tokens, list(self.unit_rows)
            self.rows = PackedRows(sum(n * rows for n, rows in zip(self.initial, self.unit_rows)))
        else:  # per video, its frames' real tokens (None: all, known at the first merge)
            self.fixed, self.tokens = adapter.tower_prefix_tokens, adapter.tower_real_tokens(encoder_args)
            if self.tokens is not None and len(set(self.tokens)) > 1:  # they will keep different numbers
                _refuse_fillers_under_flash(adapter)
            self.original_width: int | None = None  # the tokens a batched tower's frames hold at first
            self.kept_tokens: torch.Tensor | None = None  # once folded, (frames, width): the token each continues
        self.sizes: list[torch.Tensor] | None = None  # per block (frames, tokens), from the first merge layer on
        self.token_of: list[torch.Tensor] | None = None  # per block (frames, original tokens): its current token
        self.origin: list[torch.Tensor] | None = None  # per block (frames, tokens): each one's original token
        self.carried: list[torch.Tensor | None] = []  # per block, what the method carries to its next merge layer
        self.key_bias: torch.Tensor | None = None  # keys' log(size): batched (frames, 1, 1, tokens), packed (rows,)
        self.stages: dict[int, torch.Tensor] = {}  # batched: tokens per frame -> each original token's token then
        self.counts: list[tuple[int, list[int]]] = []  # (layer, tokens per frame of each block) per merge
        self.attention_call = None
        self.projections: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}  # module -> (input, output)

    def before_attention(self, index, module, args, kwargs):
        if index in self.merge_layers:  # the layer's own attention input, for the saliency of its rows
            self.attention_call = (module, kwargs["hidden_states"] if "hidden_states" in kwargs else args[0], kwargs)
            self.projections = {}
        if self.packed:
            return None if self.key_bias is None else {**kwargs, compat.KEY_BIAS: self.key_bias}
        if not self.merged:
            return None
        return {**kwargs, "attention_mask": self.key_bias}  # the call's was for its padding, gone at the first fold

    def after_projection(self, index: int, module, inputs: tuple, output: torch.Tensor) -> None:
        """A projection inside merge layer `index`'s attention ran: its output, for the method's scores."""
        if index in self.merge_layers and inputs:
            self.projections[module] = (inputs[0], output)

    def after_layer(self, index, output):
        if index not in self.merge_layers:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        first = self.sizes is None
        if first and not self.packed:  # the frames' width as the tower had it
            self.original_width = hidden.shape[1]
            self.tokens = self.tokens or [self.original_width] * len(self.initial)
        blocks = self._videos(hidden, self.tokens) if self.packed else self._frames_of_videos(hidden)
        if first:  # every token stands for itself
            self.sizes = [block.new_ones(block.shape[:2], dtype=torch.float32) for block in blocks]
            self.token_of = [TokenFolding.identity(*block.shape[:2], block.device).keep for block in blocks]
            self.origin = list(self.token_of)
            self.carried = [None] * len(blocks)
        plans = [self.method.merge_in_encoder_tokens(frames) for frames in self._tower_tokens(index, blocks)]
        self.carried, self.projections = [None if plan is None else plan.carry for plan in plans], {}
        if all(plan is None or plan.keep.shape[1] == block.shape[1] for plan, block in zip(plans, blocks)):
            return None
        merged_blocks = []
        for b, (block, plan) in enumerate(zip(blocks, plans)):
            frames, count = block.shape[:2]
            plan = plan or TokenFolding.identity(frames, count, block.device)
            kept = plan.keep.shape[1]
            slot = plan.merge_into + torch.arange(frames, device=block.device)[:, None] * kept
            merged, sizes = weighted_merge(block.flatten(0, 1), (self.sizes[b] * plan.weight).flatten(),
                                           slot.flatten(), frames * kept)
            merged_blocks.append(merged.view(frames, kept, -1).to(block.dtype))
            self.sizes[b] = sizes.view(frames, kept)
            self.token_of[b] = plan.merge_into.gather(1, self.token_of[b])
            self.origin[b] = self.origin[b].gather(1, plan.keep)
        self.merged = True
        self.tokens = [block.shape[1] for block in merged_blocks]
        with_mass = self.method.folds_with_mass()
        if self.packed:
            hidden = torch.cat([block.flatten(0, 1) for block in merged_blocks])
            self.rows.fold(*self._packed_rows())
            self.key_bias = torch.cat([sizes.flatten() for sizes in self.sizes]).log() if with_mass else None
            self.counts.append((index, self.tokens))
        else:  # every frame computes the batch's width
            hidden = self._batch(merged_blocks, with_mass)
            self.counts.append((index, [hidden.shape[1]] * len(merged_blocks)))
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _frames_of_videos(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """A batched tower's rows as one (frames, tokens[v], D) block per video, its frames' current tokens."""
        return [rows[:, :tokens] for rows, tokens in zip(hidden.split(self.initial), self.tokens)]

    def _batch(self, blocks: list[torch.Tensor], with_mass: bool) -> torch.Tensor:
        """The folded videos as a batched tower's rows again: each frame's tokens, then (where a video kept fewer
        than another) fillers, masked as keys; notes where every original token reads, and the keys' mask."""
        width = max(self.tokens)
        while width in {self.original_width, *self.stages}:  # widths name the stages `expand_tensor` reads: one
            width += 1  # seen before would be ambiguous, so a filler column more (only where videos fold unevenly)
        fillers = width > min(self.tokens)
        if fillers:
            _refuse_fillers_under_flash(self.adapter)
            hidden = blocks[0].new_zeros(sum(self.initial), width, blocks[0].shape[-1])
        else:
            hidden = torch.cat(blocks)
        device = hidden.device
        kept_tokens = torch.zeros(hidden.shape[:2], dtype=torch.long, device=device)
        reads = torch.zeros(len(hidden), self.original_width, dtype=torch.long, device=device)
        bias = torch.full(hidden.shape[:2], float("-inf"), device=device) if with_mass or fillers else None
        for rows, block, sizes, origin, token_of in zip(self._video_rows(), blocks, self.sizes, self.origin,
                                                         self.token_of):
            kept = block.shape[1]
            if fillers:
                hidden[rows, :kept] = block
            if bias is not None:
                bias[rows, :kept] = sizes.log() if with_mass else 0
            kept_tokens[rows, :kept] = origin
            reads[rows, : token_of.shape[1]] = token_of  # padding (never kept) reads token 0: the pooler zeroes it
        self.kept_tokens, self.stages[width] = kept_tokens, reads
        self.key_bias = None if bias is None else bias.to(hidden.dtype)[:, None, None, :]
        return hidden

    def remaining(self):
        if self.kept_tokens is None:
            return None
        return torch.arange(sum(self.initial)), self.kept_tokens

    def _tower_tokens(self, index: int, blocks: list[torch.Tensor]) -> list[TowerTokens]:
        """Each block as the method sees it, the layer's attention read from its call (once, when first asked) and
        from the projections the call computed (again where one did not run on the call's input)."""
        module, attention_input, kwargs = self.attention_call

        def project(projection: torch.nn.Module) -> torch.Tensor:
            recorded = self.projections.get(projection)
            ran_on_input = recorded is not None and recorded[0] is attention_input
            return recorded[1] if ran_on_input else projection(attention_input)

        @functools.cache
        def sharpness() -> list[torch.Tensor]:
            if not self.packed:  # each block's rows over its own tokens (not its padding or fillers)
                return [attention_row_sharpness(*block_heads[:2]) for block_heads in heads()]
            with torch.no_grad():
                scores = self.adapter.tower_row_sharpness(module, attention_input, kwargs, project)
            return [rows.view(block.shape[:2]) for rows, block in zip(scores.split(self._block_rows(blocks)), blocks)]

        @functools.cache
        def heads() -> list[tuple[torch.Tensor, ...]]:
            with torch.no_grad():
                states = self.adapter.tower_heads(module, attention_input, kwargs, project)
            if not self.packed:
                return [
                    tuple(state[rows, :, :block.shape[1]] for state in states)
                    for rows, block in zip(self._video_rows(), blocks)
                ]
            per_block = zip(*(state.split(self._block_rows(blocks), dim=1) for state in states))
            return [
                tuple(state.unflatten(1, block.shape[:2]).transpose(0, 1) for state in block_states)
                for block_states, block in zip(per_block, blocks)
            ]

        return [
            TowerTokens(
                block, self.sizes[b], index, self.depth, self.fixed, self.token_of[b].shape[1], self.carried[b],
                sharpness=lambda b=b: sharpness()[b], heads=lambda b=b: heads()[b],
            )
            for b, block in enumerate(blocks)
        ]

    def _video_rows(self) -> list[slice]:
        """A batched tower's rows of each video."""
        return [slice(a, b) for a, b in itertools.pairwise(self.bounds)]

    @staticmethod
    def _block_rows(blocks: list[torch.Tensor]) -> list[int]:
        return [block.shape[:2].numel() for block in blocks]

    def _packed_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(origin, read) of the packed rows now: each remaining row's original row, each original row's row."""
        origin, read, first, first_now = [], [], 0, 0
        for origin_b, token_of_b in zip(self.origin, self.token_of):
            frames, original = token_of_b.shape
            kept = origin_b.shape[1]
            frame = torch.arange(frames, device=origin_b.device)[:, None]
            origin.append((first + frame * original + origin_b).flatten())
            read.append((first_now + frame * kept + token_of_b).flatten())
            first, first_now = first + frames * original, first_now + frames * kept
        return torch.cat(origin).cpu(), torch.cat(read).cpu()

    def expand_tensor(self, value):
        """Batched: (rows, tokens at some stage, D) back to (rows, every token, D), each token reading the one
        it folded into; packed: the rows' `PackedRows` expansion."""
        if self.packed:
            return super().expand_tensor(value)
        if value.dim() != 3 or value.shape[0] != sum(self.initial) or value.shape[1] not in self.stages:
            return value
        index = self.stages[value.shape[1]].to(value.device)
        return value.gather(1, index[..., None].expand(-1, -1, value.shape[-1]))

    def layer_share(self, units: list[int]) -> list[float]:
        """Per video, the share of its token-layers the tower computed."""
        shares = []
        for video, (frames, count) in enumerate(zip(self.standing, units)):
            full = self.token_of[video].shape[1] if self.packed else self.original_width  # a batched frame: padded
            counts = [(layer, per_block[video]) for layer, per_block in self.counts]
            shares.append(len(frames) / max(count, 1) * rows_through_layers(full, counts, self.num_layers)
                          / (self.num_layers * full))
        return shares


def _refuse_fillers_under_flash(adapter: Adapter) -> None:
    """ValueError where a batched tower's frames would hold fillers (videos keeping different numbers of tokens),
    which its flash attention cannot mask."""
    implementation = compat.attention_implementation(adapter.vision_tower.config)
    if "flash" in implementation:
        raise ValueError(
            f"the videos of this tower call keep different numbers of tokens, so the frames of some hold fillers "
            f"that {implementation} cannot mask: load the tower with attn_implementation='sdpa', or encode videos "
            "of different sizes in separate calls"
        )
