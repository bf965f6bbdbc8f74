"""Public entry points: `patch`, `unpatch`, `compress` and the handle they return."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

from .adapters import adapter_for
from .engine import Engine
from .methods import Method, build_method
from .methods.knobs import check_ratio
from .releases import check_transformers_version
from .stats import CompressionStats

HANDLE_ATTRIBUTE = "_tokcompress_handle"


class CompressionHandle:
    """A live patch of one model. Read `stats`, change `ratio`, then `unpatch()` (or use it in `with`)."""

    def __init__(self, model: nn.Module, engine: Engine):
        self.model = model
        self._engine = engine
        # the modules it is found on: the model patched and the multimodal model whose calls it hooks (a patch of
        # `model.model` and one of `model` are one patch, the later replacing the earlier)
        self._anchors = tuple({id(m): m for m in (model, engine.adapter.multimodal_model)}.values())

    @property
    def method(self) -> Method:
        """The configured method in place (a `Compose` for a list or an "a+b" name)."""
        return self._engine.method

    @property
    def ratio(self) -> float:
        """The retained fraction asked for; set it to change it without re-patching."""
        return self._engine.method.ratio

    @ratio.setter
    def ratio(self, value: float) -> None:
        if not self.patched:
            current = _handle_of(self.model)
            if current is not None:
                raise RuntimeError(
                    f"this handle's patch was replaced by a later one ({current.method.name}), so its ratio no longer "
                    "applies; set the ratio on the handle the last patch returned"
                )
            raise RuntimeError("this handle was unpatched, so its ratio no longer applies; patch the model again")
        method = dataclasses.replace(self._engine.method, ratio=check_ratio(value))
        self._engine.use_method(method.bind(self._engine.spec))

    @property
    def stats(self) -> CompressionStats:
        """Stats of the last forward pass or generation (visual tokens per layer, achieved ratio, cost)."""
        return self._engine.last_stats

    @property
    def patched(self) -> bool:
        """Whether this handle's patch is the one in place on the model."""
        return _handle_of(self.model) is self

    def unpatch(self) -> None:
        """Remove every hook; the model is exactly as before. Safe to call twice. A handle whose patch a later one
        replaced has nothing left to remove: it warns, and the later patch stays (unpatch the handle that patch
        returned, or `tokcompress.unpatch(model)`, which removes whichever is in place). A KV cache a compressed
        generation filled continues only on a patched model (any patch): finish such conversations first."""
        current = _handle_of(self.model)
        if current is not None and current is not self:
            warnings.warn(
                f"this handle's patch ({self.method.name}) was replaced by a later one ({current.method.name}), "
                "which stays in place: unpatch the handle that patch returned, or call tokcompress.unpatch(model)",
                stacklevel=2,
            )
            return
        self._engine.detach()
        for anchor in self._anchors:
            if getattr(anchor, HANDLE_ATTRIBUTE, None) is self:
                delattr(anchor, HANDLE_ATTRIBUTE)

    def _reattach(self) -> None:
        """Patch the model with this handle's method again (after a `compress` block stood in for it)."""
        for anchor in self._anchors:
            unpatch(anchor)
        self._engine.attach()
        for anchor in self._anchors:
            setattr(anchor, HANDLE_ATTRIBUTE, self)

    def __enter__(self) -> CompressionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unpatch()

    def __repr__(self) -> str:
        state = "patched" if self.patched else "unpatched"
        return f"CompressionHandle({self.method!r}, {type(self.model).__name__}, {state})"


def patch(
    model: nn.Module,
    method: str | Method | type[Method] | list = "none",
    ratio: float | None = None,
    *,
    varlen_vision: bool = True,
    **knobs: Any,
) -> CompressionHandle:
    """Compress the visual tokens of every later forward / generate call of `model`.

    method: a registered name (`list_methods()`), a Method class, a configured Method instance, or a list of
        them acting at different stages (an encoder-side one, then an LLM-side one), also spelt as a name:
        "framededup+framefusion", "earlytom@encoder+fastv"; a name may carry knobs, a member's own ratio among
        them: "fastv:layer=2", "uniform:ratio=0.6+fastv". The default, "none", compresses nothing.
    ratio: retained fraction of visual tokens averaged over the LLM's layers, 0 < ratio ≤ 1 (1 = identity);
        None: the method's own default (each method's docstring, README's table), or a configured instance's.
        Given with a configured instance, it replaces the instance's ratio (its other knobs stay).
    varlen_vision: on a GPU in half precision, run a packed tower's vision attention (Qwen-VL's windows,
        MiniCPM-V's units and merger windows) as one packed call instead of stock sdpa's loop over them (the same
        math); False keeps the stock loop (with the bias of tokens folded inside the tower, where a method folds
        them).
    knobs: the method's own settings (e.g. `layer=2` for fastv); unknown ones are refused.
    Patching a patched model replaces the old patch (also one of the multimodal model inside it, `model.model`, or
    of the model around it). Nothing is changed if any argument is refused.
    """
    check_transformers_version()
    adapter = adapter_for(model)
    configured = build_method(method, ratio, **knobs).bind(adapter.spec)
    handle = CompressionHandle(model, Engine(adapter, configured, varlen_vision))
    earlier = {id(h): h for anchor in handle._anchors if (h := _handle_of(anchor)) is not None}
    try:
        handle._reattach()
    except BaseException:  # refused while attaching (a setting of the model's): the earlier patch stays
        for replaced in earlier.values():
            if not replaced.patched:
                replaced._reattach()
        raise
    return handle


def _handles_in(model: nn.Module) -> list[CompressionHandle]:
    """The patches in place on `model` and the modules inside it (`model.model`), the model's own first."""
    modules = model.modules() if isinstance(model, nn.Module) else [model]  # the model itself first
    return list({id(h): h for m in modules if (h := getattr(m, HANDLE_ATTRIBUTE, None)) is not None}.values())


def _handle_of(model: nn.Module) -> CompressionHandle | None:
    """The patch in place on `model`, or on a module inside it."""
    return next(iter(_handles_in(model)), None)


def unpatch(model: nn.Module) -> bool:
    """Remove tokcompress from `model` (a patch of a module inside it too); returns whether it was patched."""
    handles = _handles_in(model)
    for handle in handles:
        handle.unpatch()
    return bool(handles)


@contextlib.contextmanager
def compress(
    model: nn.Module, method: str | Method | type[Method] | list = "none", ratio: float | None = None, **options: Any
) -> Iterator[CompressionHandle]:
    """`with compress(model, "fastv", ratio=0.3) as handle: ...` - patched inside the block only (arguments as
    `patch`); a patch the model had before the block is back after it, unless the block itself unpatched or
    patched the model again."""
    outer = _handle_of(model)
    try:
        handle = patch(model, method, ratio, **options)
    except BaseException:
        if outer is not None and not outer.patched:  # refused or failed after the old patch came off
            outer._reattach()
        raise
    try:
        yield handle
    finally:
        if handle.patched:  # not if the block unpatched or patched anew itself: what it left stays
            handle.unpatch()
            if outer is not None:
                outer._reattach()
