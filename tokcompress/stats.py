"""What a compressed forward pass kept, where, and what the compression itself cost."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from statistics import mean
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .layout import VisualLayout
    from .methods.base import Method


class Timer:
    """Seconds spent in measured blocks: CUDA events on a GPU (read when asked, so no host sync in the forward),
    the clock elsewhere."""

    def __init__(self) -> None:
        self._seconds = 0.0
        self._intervals: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @property
    def seconds(self) -> float:
        for start, end in self._intervals:
            end.synchronize()
            self._seconds += start.elapsed_time(end) / 1e3
        self._intervals.clear()
        return self._seconds

    @contextlib.contextmanager
    def measure(self, device: torch.device) -> Iterator[None]:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._intervals.append((start, end))
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self._seconds += time.perf_counter() - started

    def add(self, other: Timer) -> None:
        self._seconds += other._seconds
        self._intervals.extend(other._intervals)

    def __getstate__(self) -> dict:
        return {"_seconds": self.seconds, "_intervals": []}  # CUDA events cannot be copied or pickled


@dataclass
class SampleStats:
    """One sample of the batch."""

    visual_in: int  # visual tokens at the LLM input
    visual_per_layer: list[int]  # visual tokens each decoder layer processed during prefill
    # input-sequence indices of the visual tokens that reach the last layer
    kept_positions: list[int] = field(default_factory=list)
    # per decoding step, over the layers that cache every token (not a sliding window's last ones): the visual KV
    # entries their attention read (all, or a decode-time method's selection), and those they hold
    decode_visual_read: list[int] = field(default_factory=list)
    decode_visual_cached: list[int] = field(default_factory=list)
    encoder_ratio: float = 1.0  # share of the vision tower's token-layers it computed (units weighed by their tokens)

    @property
    def visual_out(self) -> int:
        """Visual tokens that reach the last layer (and its KV cache)."""
        return self.visual_per_layer[-1] if self.visual_per_layer else self.visual_in

    @property
    def achieved_ratio(self) -> float:
        """Retained fraction of visual tokens averaged over the LLM's layers (what `ratio` asks for)."""
        if not self.visual_in or not self.visual_per_layer:
            return 1.0
        return mean(self.visual_per_layer) / self.visual_in

    @property
    def decode_read_ratio(self) -> float | None:
        """Fraction of the cached visual entries that decoding attention read, over layers and steps."""
        if not sum(self.decode_visual_cached):
            return None
        return sum(self.decode_visual_read) / sum(self.decode_visual_cached)


@dataclass
class CompressionStats:
    """Stats of the last prefill (and the decoding steps that followed it).

    One `SampleStats` per sample of the caller's batch: when `generate` expands each sample into several
    rows (beams, returned sequences), `rows_per_sample` of them share one entry.
    """

    method: str
    ratio: float  # requested
    ratio_note: str = ""  # a composition's other members and their own ratios
    samples: list[SampleStats] = field(default_factory=list)
    decode_steps: int = 0
    note: str = ""
    finished: bool = False  # prefill done
    rows_per_sample: int = 1
    layer_positions: list[tuple[int, torch.Tensor]] = field(default_factory=list, repr=False)
    num_layers: int = 0  # the decoder's layers (known once a prefill went through the patched model)
    has_tower: bool = True  # False: an encoder-free model, whose `encoder_ratio` is of the frames embedded
    later_visual: int = 0  # visual tokens a later call continuing the cache brought: not compressed
    compression_time: Timer = field(default_factory=lambda: Timer(), repr=False)  # the prefill's
    decode_compression_time: Timer = field(default_factory=lambda: Timer(), repr=False)  # the decoding steps'
    encoder_time: Timer = field(default_factory=lambda: Timer(), repr=False)

    @staticmethod
    def empty(method: Method, note: str) -> CompressionStats:
        return CompressionStats(method.name, method.ratio, method.ratio_note(), note=note, finished=True)

    @staticmethod
    def begin(method: Method, layouts: list[VisualLayout], rows_per_sample: int = 1) -> CompressionStats:
        samples = [SampleStats(layout.num_tokens, []) for layout in layouts[::rows_per_sample]]
        return CompressionStats(
            method.name, method.ratio, method.ratio_note(), samples, rows_per_sample=rows_per_sample
        )

    @staticmethod
    def identity(
        method: Method, layouts: list[VisualLayout], num_layers: int, rows_per_sample: int = 1
    ) -> CompressionStats:
        """Every layer saw every visual token (method `none`, or ratio 1)."""
        samples = [
            SampleStats(layout.num_tokens, [layout.num_tokens] * num_layers, layout.positions.tolist())
            for layout in layouts[::rows_per_sample]
        ]
        return CompressionStats(
            method.name, method.ratio, method.ratio_note(), samples, note="identity: nothing compressed", finished=True,
            rows_per_sample=rows_per_sample,
        )

    def positions_at_layer(self, layer: int) -> torch.Tensor | None:
        """(rows, W) input-sequence index of every position of the hidden states decoder `layer` processes.

        -1 marks padding. Maps the layer's outputs (`hidden_states[layer + 1]`, `attentions[layer]`) back to
        the caller's sequence; None when no forward compressed anything (a layer before the first reduction
        maps each position to itself).
        """
        if self.num_layers and not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} is out of range: the model has decoder layers 0 … {self.num_layers - 1}")
        return next((origin for start, origin in reversed(self.layer_positions) if start <= layer), None)

    @property
    def visual_in(self) -> int:
        return sum(s.visual_in for s in self.samples)

    @property
    def visual_out(self) -> int:
        return sum(s.visual_out for s in self.samples)

    @property
    def achieved_ratio(self) -> float:
        """Layer-averaged retained fraction over all visual tokens of the batch."""
        if not self.visual_in:
            return 1.0
        return sum(s.achieved_ratio * s.visual_in for s in self.samples) / self.visual_in

    @property
    def decode_read_ratio(self) -> float | None:
        """Fraction of the batch's cached visual KV entries that decoding attention read, over layers and steps."""
        cached = sum(sum(s.decode_visual_cached) for s in self.samples)
        return sum(sum(s.decode_visual_read) for s in self.samples) / cached if cached else None

    @property
    def encoder_ratio(self) -> float:
        """Share of the vision tower's token-layers computed over the batch's samples, each weighed by its visual
        tokens (1: all)."""
        weight = sum(s.visual_in for s in self.samples)
        return sum(s.encoder_ratio * s.visual_in for s in self.samples) / weight if weight else 1.0

    @property
    def compression_seconds(self) -> float:
        """Time the prefill spent choosing and applying reductions (before the first token); a first call's
        includes one-time costs (kernel compilation, first allocations)."""
        return self.compression_time.seconds

    @property
    def decode_compression_seconds(self) -> float:
        """Time the decoding steps spent choosing what to read (decode-time KV selection, all steps together)."""
        return self.decode_compression_time.seconds

    @property
    def encoder_seconds(self) -> float:
        """Time the vision tower took on the prompt's videos (after any frame dedup)."""
        return self.encoder_time.seconds

    def timed(self, device: torch.device, decoding: bool = False):
        """Count the time spent inside the block as the prefill's compression (or the decoding steps')."""
        return (self.decode_compression_time if decoding else self.compression_time).measure(device)

    def sample_of_row(self, row: int) -> SampleStats:
        return self.samples[row // self.rows_per_sample]

    def record_layer(self, layer: int, row_counts: list[int]) -> None:
        for sample, count in zip(self.samples, row_counts[:: self.rows_per_sample]):
            del sample.visual_per_layer[layer:]
            sample.visual_per_layer.append(count)

    def spent_before(self, layer: int) -> list[int]:
        """Per batch row, the visual token-layers its sample already spent in layers before `layer`."""
        return [sum(s.visual_per_layer[:layer]) for s in self.samples for _ in range(self.rows_per_sample)]

    def record_decode_read(self, row_reads: list[int], row_cached: list[int]) -> None:
        """A decoding step's visual KV entries read and held, per row (the first row of a sample stands for its
        beams)."""
        step = self.rows_per_sample
        for sample, read, cached in zip(self.samples, row_reads[::step], row_cached[::step]):
            sample.decode_visual_read.append(read)
            sample.decode_visual_cached.append(cached)

    @property
    def label(self) -> str:
        """The method and the ratio asked of it: "framededup+framefusion @ ratio 0.3 (framededup at 0.5)"."""
        return f"{self.method} @ ratio {self.ratio:g}" + (f" ({self.ratio_note})" if self.ratio_note else "")

    def __str__(self) -> str:
        if not self.samples and self.later_visual:
            return f"{self.label}: {self.later_visual} visual tokens of a later turn not compressed"
        if not self.samples:
            return f"{self.method}: {self.note or 'nothing compressed'}"
        text = (
            f"{self.label}: visual tokens {self.visual_in} -> "
            f"{round(self.achieved_ratio * self.visual_in)} per layer on average ({self.visual_out} at the last), "
            f"achieved ratio {self.achieved_ratio:.3f}"
        )
        if self.encoder_ratio < 1 and self.has_tower:
            text += f", vision tower computed {self.encoder_ratio:.0%} of its layers' rows"
        elif self.encoder_ratio < 1:
            text += f", {self.encoder_ratio:.0%} of the frames embedded (no vision tower)"
        if self.decode_read_ratio is not None:
            text += f", decode reads {self.decode_read_ratio:.3f} of the visual KV"
        if self.later_visual:
            text += f", {self.later_visual} visual tokens of later turns not compressed"
        text += f", compression {self.compression_seconds * 1e3:.1f} ms"
        if self.decode_compression_seconds:
            text += f" (+ {self.decode_compression_seconds * 1e3:.1f} ms while decoding)"
        return text
