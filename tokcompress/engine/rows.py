"""Where a vision tower's rows went once folding removed some: which row of a folded tensor each original row
reads (to expand any tensor the tower produced back to full size) and, in a packed tower, which original
row each remaining row is (so later layers get its attention segments and rotary row)."""

from __future__ import annotations

import torch


class RowMap:
    """For every row count the tower passed through, each original row's row at that count (-1: dropped)."""

    def __init__(self, total: int):
        self.total = total
        self.reads = {total: torch.arange(total)}

    def add(self, read: torch.Tensor, count: int) -> None:
        """The tower now has `count` rows; original row r reads row `read[r]`."""
        self.reads[count] = read

    def expand(self, value: torch.Tensor) -> torch.Tensor:
        """A tensor with one entry per row at some count, back to one per original row: the row each original
        one reads (zeros for a dropped one); anything else unchanged."""
        if not value.dim() or value.shape[0] not in self.reads or value.shape[0] == self.total:
            return value
        read = self.reads[value.shape[0]].to(value.device)
        return value[read.clamp_min(0)].masked_fill((read < 0).view(-1, *[1] * (value.dim() - 1)), 0)


class PackedRows(RowMap):
    """A packed tower's rows (frame units back to back, attention inside segments given by `cu_seqlens`):
    `origin[i]` is the original row whose place remaining row i keeps - its rotary row and its segment (a
    frame, or a window inside one). Folding keeps the remaining rows in their original order."""

    def __init__(self, total: int):
        super().__init__(total)
        self.origin = torch.arange(total)
        self._layer_inputs = LayerInputCache()

    def fold(self, origin: torch.Tensor, read: torch.Tensor) -> None:
        if len(origin) > 1 and not bool((origin.diff() > 0).all()):
            raise ValueError(
                "frames or tokens kept inside a packed tower must stay in their order (a method's `keep` must be "
                "sorted): attention segments are rebuilt from it"
            )
        self.origin = origin
        self.add(read, len(origin))

    def layer_kwargs(self, kwargs: dict) -> dict | None:
        """A layer's call kwargs with `cu_seqlens` and rotary tables (`position_embeddings`) for the remaining
        rows, or None before anything folded."""
        if len(self.origin) == self.total:
            return None
        changed = dict(kwargs)
        segments = kwargs.get("cu_seqlens")
        if segments is not None:  # the frames' segments, or the windows' (Qwen2.5-VL alternates them)
            changed["cu_seqlens"], longest = self._layer_inputs.get(
                segments, len(self.origin), lambda: self._segments(segments)
            )
            if kwargs.get("max_seqlen") is not None:  # the fused kernel sizes its grid by the longest segment
                changed["max_seqlen"] = longest
        rotary = kwargs.get("position_embeddings")
        if rotary is not None:
            origin = self.origin.to(rotary[0].device)
            changed["position_embeddings"] = self._layer_inputs.get(
                rotary, len(self.origin), lambda: tuple(table[origin] for table in rotary)
            )
        return changed

    def _segments(self, segments: torch.Tensor) -> tuple[torch.Tensor, int]:
        """`cu_seqlens` over the original rows → over the remaining ones (each segment keeps the rows that remain
        in it, empty ones go), and the longest remaining segment."""
        origin = self.origin.to(segments.device)
        segment = torch.searchsorted(segments[1:], origin, right=True)
        lengths = torch.bincount(segment, minlength=len(segments) - 1)
        lengths = lengths[lengths > 0]
        return torch.cat([segments.new_zeros(1), lengths.cumsum(0).to(segments.dtype)]), int(lengths.max())


class LayerInputCache:
    """What later layers get in place of a call kwarg the tower passes to every layer, computed once per stage."""

    def __init__(self):
        self._cached: dict[tuple, tuple] = {}  # (id of the tower's value, stage) -> (the value, what layers get)

    def get(self, source, stage, compute):
        """`compute()` for the tower's `source` at `stage` (a row count, or rows and tokens), once."""
        key = (id(source), stage)
        if key not in self._cached or self._cached[key][0] is not source:
            self._cached[key] = (source, compute())
        return self._cached[key][1]


def gather_rows(value, rows: torch.Tensor, tokens: torch.Tensor | None = None):
    """A tensor (or a tuple of them) with a row per frame (dim 0) and, given `tokens` (per remaining row, the
    original token each of its tokens continues), an entry per token (dim 1): that of what remains."""
    if isinstance(value, tuple):
        return tuple(gather_rows(part, rows, tokens) for part in value)
    value = value[rows.to(value.device)]
    if tokens is None:
        return value
    index = tokens.to(value.device).view(*tokens.shape, *[1] * (value.dim() - 2))
    return value.gather(1, index.expand(-1, -1, *value.shape[2:]))


def runs(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The runs start, start + 1, …, start + length − 1, one after the other."""
    return torch.repeat_interleave(starts - (lengths.cumsum(0) - lengths), lengths) + torch.arange(int(lengths.sum()))
