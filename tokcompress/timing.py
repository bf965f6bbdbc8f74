"""Timing a generation the way users feel it: time to first token, decode time per token, end to end.

Shared by the command line and the latency benchmark. Each figure is a median over repeated runs after a
warm-up run, all taken inside the same runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


class FirstTokenMark:
    """A generate() streamer that notes when the first new token exists (HF moves it to the CPU first)."""

    def __init__(self):
        self.puts, self.at = 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2:  # the first put is the prompt
            self.at = time.perf_counter()

    def end(self):
        """generate() calls this when it is done; the mark is already taken."""


def timed_generation(
    generation: Callable[[], float], repeats: int, device: str, new_tokens: int, after_each: Callable[[], None] = None
) -> dict:
    """Median time to first token, decode time per token and end-to-end time of `generation()` (which returns
    the moment its first token existed), plus peak GPU memory; `after_each()` runs after each timed run (not the
    warm-up), to collect what the run left (its stats)."""
    runs = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for repeat in range(repeats + 1):  # the first run warms up
        start = synchronized(device)
        first = generation()
        end = synchronized(device)
        if repeat:
            runs.append((first - start, end - first, end - start))
            if after_each is not None:
                after_each()
    ttft, decode, total = (statistics.median(values) for values in zip(*runs))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return dict(prefill_ms=ttft * 1e3, decode_ms_per_token=decode / max(new_tokens - 1, 1) * 1e3,
                end_to_end_ms=total * 1e3, peak_mib=peak)


def timed_generate(
    model, inputs: dict | Callable[[], dict], new_tokens: int, repeats: int, device: str,
    after_each: Callable[[], None] = None,
) -> dict:
    """`timed_generation` of greedy `model.generate(**inputs)` producing exactly `new_tokens` tokens; `inputs` may
    be a callable that makes them, run inside the timed region (the ideal's tower and positions)."""

    def generation() -> float:
        mark = FirstTokenMark()
        kwargs = inputs() if callable(inputs) else inputs
        model.generate(**kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=mark)
        return mark.at

    return timed_generation(generation, repeats, device, new_tokens, after_each)


def run_times_ms(function: Callable[[], object], repeats: int, device: str) -> list[float]:
    """Milliseconds of each of `repeats` runs of `function()`, after one warm-up run."""
    function()
    times = []
    for _ in range(repeats):
        start = synchronized(device)
        function()
        times.append((synchronized(device) - start) * 1e3)
    return times


def median_ms(function: Callable[[], object], repeats: int, device: str) -> float:
    """Median milliseconds of `function()` over `repeats` runs, after one warm-up run."""
    return statistics.median(run_times_ms(function, repeats, device))


def spread(times: list[float]) -> float:
    """(slowest − fastest) / median of repeated runs: how much a busy machine moved them."""
    return (max(times) - min(times)) / statistics.median(times) if len(times) > 1 else 0.0


def synchronized(device: str) -> float:
    """The clock, once the GPU (if any) is done."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()
