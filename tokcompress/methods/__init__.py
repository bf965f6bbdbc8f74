"""The registry of compression methods: names map to method dataclasses."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from .aim import AIM
from .base import (
    DECODE,
    IN_ENCODER,
    IN_LLM,
    PRE_ENCODER,
    PRE_LLM,
    LayerBudget,
    Method,
    ModelSpec,
    TokenFolding,
    TokenReduction,
    TowerTokens,
)
from .compose import ENCODER_SUFFIX, Compose, EncoderOnly
from .divprune import DivPrune
from .dycoke import DyCoke
from .earlytom import EarlyTom
from .fastv import FastV
from .fastvid import FastVID
from .flowcut import FlowCut
from .framededup import FrameDedup
from .framefusion import FrameFusion
from .holitom import HoliTom
from .identity import NoCompression
from .knobs import knob_from_text
from .pdrop import PDrop
from .prumerge import PruMerge
from .prunevid import PruneVid
from .quota import QuoTA
from .random_prune import RandomPrune
from .sparsevlm import SparseVLM
from .sttm import STTM
from .tome import ToMe
from .tsllava import TSLLaVA
from .uniform import UniformSample
from .vidcom2 import VidCom2
from .vidtldr import VidTLDR
from .visionzip import VisionZip

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method] | None = None, *, name: str | None = None, replace: bool = False):
    """Register a Method subclass under `name` (default: its `name` attribute). Usable as a decorator."""

    def register(method_cls: type[Method]) -> type[Method]:
        if not (isinstance(method_cls, type) and issubclass(method_cls, Method)):
            raise TypeError(f"register_method expects a tokcompress Method subclass, got {method_cls!r}")
        key = name or method_cls.name
        if not key:
            raise ValueError(f"{method_cls.__name__} has no `name`; pass register_method(..., name=...)")
        if "+" in key or key.endswith(ENCODER_SUFFIX):
            raise ValueError(f"a method's name cannot hold '+' or end in {ENCODER_SUFFIX!r} (they spell "
                             f"compositions: 'framededup+framefusion', 'earlytom@encoder'), got {key!r}")
        if key in METHODS and METHODS[key] is not method_cls and not replace:
            raise ValueError(f"a method named {key!r} is already registered; pass replace=True to override it")
        METHODS[key] = method_cls
        return method_cls

    return register(cls) if cls is not None else register


for _method in (
    NoCompression, RandomPrune, UniformSample, ToMe, FastV, FrameFusion, DyCoke, FrameDedup, DivPrune, VidCom2, PDrop,
    PruneVid, SparseVLM, VisionZip, FastVID, HoliTom, AIM, TSLLaVA, EarlyTom, VidTLDR, STTM, FlowCut, QuoTA,
    PruMerge,
):
    register_method(_method)


def list_methods() -> list[str]:
    """Names accepted by `tokcompress.patch(model, method=...)`."""
    return sorted(METHODS)


def build_method(method: str | Method | type[Method] | list, ratio: Any = None, **knobs: Any) -> Method:
    """Turn a name, a Method class or instance, or a list of them (a `Compose`) plus ratio/knobs into a
    configured Method. A name may spell a composition as its stats do: "framededup+framefusion",
    "earlytom@encoder+fastv" (`EncoderOnly` for "@encoder"); its members take their defaults."""
    if isinstance(method, str) and ("+" in method or method.endswith(ENCODER_SUFFIX)):
        if knobs:
            raise TypeError(
                f"got the composition {method!r} and knobs {sorted(knobs)}; build its methods instead, each with its "
                f"knobs: method=[FrameDedup(threshold=0.9), FrameFusion(ratio=0.3)]"
            )
        members = [_member(name.strip()) for name in method.split("+")]
        return build_method(members[0] if len(members) == 1 else members, ratio)
    if isinstance(method, (list, tuple)):
        if knobs:
            raise TypeError(
                f"got a list of methods and knobs {sorted(knobs)}; configure each method in the list instead"
            )
        if len(method) == 1:  # a list of one: that method
            return build_method(method[0], ratio)
        return Compose(ratio=ratio, methods=tuple(build_method(m) for m in method))
    if isinstance(method, Method):
        if knobs:
            raise TypeError(
                f"got a configured {type(method).__name__} and knobs {sorted(knobs)}; set them on the instance instead"
            )
        return method if ratio is None else dataclasses.replace(method, ratio=ratio)
    if isinstance(method, str):
        if method not in METHODS:
            close = difflib.get_close_matches(method.lower().replace("_", "").replace("-", ""), list_methods(), 1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown method {method!r}; {hint}known methods: {', '.join(list_methods())}")
        method_cls = METHODS[method]
    elif isinstance(method, type) and issubclass(method, (Compose, EncoderOnly)):
        raise TypeError(
            f"{method.__name__} wraps other methods: pass an instance - EncoderOnly(EarlyTom()), "
            "Compose([FrameDedup(), FrameFusion(ratio=0.3)]) - or a name: 'earlytom@encoder', 'framededup+framefusion'"
        )
    elif isinstance(method, type) and issubclass(method, Method):
        method_cls = method
    else:
        raise TypeError(f"method must be a name, a Method class or instance, got {method!r}")
    unknown = sorted(set(knobs) - set(method_cls.knobs()) | ({"ratio"} & set(knobs)))
    if unknown:
        valid = [k for k in method_cls.knobs() if k != "ratio"]
        raise TypeError(
            f"{method_cls.name or method_cls.__name__} has no knob {', '.join(map(repr, unknown))}; "
            f"its knobs: {', '.join(valid) or '(none)'} (plus ratio)"
        )
    if ratio is not None:
        knobs["ratio"] = ratio
    return method_cls(**knobs)


def method_spec(text: str) -> tuple[str, dict[str, Any]]:
    """(name, knobs) of a method spelt on a command line: a name, a composition ("framededup+fastv"), or a method
    with knobs, "flowcut:inner_prune=0:window=4" (values read against the knobs' types; ratio is set apart)."""
    name, *settings = text.split(":")
    pairs = [setting.partition("=")[::2] for setting in settings]
    knobs = dict(pairs)
    if any(not knob or not value for knob, value in pairs) or len(knobs) < len(pairs) or "ratio" in knobs:
        raise ValueError(f"a method's knobs are spelt name:knob=value[:knob=value], each once (not ratio), "
                         f"got {text!r}")
    method_cls = METHODS.get(name)  # a composition takes no knobs: building it says so
    return name, {k: knob_from_text(method_cls, k, value) if method_cls else value for k, value in knobs.items()}


def _member(name: str) -> Method:
    """One member of a composition spelt as a name: a registered method, its encoder stages with "@encoder"."""
    if name.endswith(ENCODER_SUFFIX):
        return EncoderOnly(build_method(name.removesuffix(ENCODER_SUFFIX)))
    return build_method(name)


__all__ = [
    "AIM",
    "DECODE",
    "IN_ENCODER",
    "IN_LLM",
    "PRE_ENCODER",
    "METHODS",
    "PRE_LLM",
    "Compose",
    "DivPrune",
    "DyCoke",
    "EarlyTom",
    "EncoderOnly",
    "FastV",
    "FastVID",
    "FlowCut",
    "FrameDedup",
    "FrameFusion",
    "HoliTom",
    "LayerBudget",
    "Method",
    "ModelSpec",
    "NoCompression",
    "PDrop",
    "PruMerge",
    "PruneVid",
    "QuoTA",
    "RandomPrune",
    "STTM",
    "SparseVLM",
    "ToMe",
    "TSLLaVA",
    "TokenFolding",
    "TokenReduction",
    "TowerTokens",
    "UniformSample",
    "VidCom2",
    "VidTLDR",
    "VisionZip",
    "build_method",
    "list_methods",
    "method_spec",
    "register_method",
]
