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
from .evs import EVS
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
    PruMerge, EVS,
):
    register_method(_method)


def list_methods() -> list[str]:
    """Names accepted by `tokcompress.patch(model, method=...)`."""
    return sorted(METHODS)


def build_method(method: str | Method | type[Method] | list, ratio: Any = None, **knobs: Any) -> Method:
    """Turn a name, a Method class or instance, or a list of them (a `Compose`) plus ratio/knobs into a
    configured Method. A name may carry knobs as the command line spells them ("fastv:layer=2") and may spell a
    composition as its stats do ("framededup+framefusion", "earlytom@encoder+fastv"; `EncoderOnly` for
    "@encoder"), each member with its own knobs and ratio ("uniform:ratio=0.6+fastv:layer=3")."""
    if isinstance(method, str) and _is_composition(method):
        if knobs:
            raise TypeError(
                f"got the composition {method!r} and knobs {sorted(knobs)}; spell each member's knobs in its name "
                f"('framededup:threshold=0.9+framefusion'), or build its methods: "
                f"method=[FrameDedup(threshold=0.9), FrameFusion(ratio=0.3)]"
            )
        return _composition(method, ratio)
    if isinstance(method, str) and ":" in method:
        name, spelt = method_spec(method)
        twice = sorted(set(spelt) & set(knobs))
        if twice:
            raise TypeError(f"{name} got {', '.join(twice)} both in {method!r} and as keywords; give each once")
        return build_method(name, ratio, **spelt, **knobs)
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
    """(name, knobs) of a method spelt on a command line: a name, a method with knobs,
    "flowcut:inner_prune=0:window=4" (values read against the knobs' types; ratio is set apart), or a composition,
    which comes back whole with no knobs: its members may carry theirs, ratio included
    ("uniform:ratio=0.6+fastv:layer=3"), checked here and built by `build_method`."""
    if _is_composition(text):
        for member in text.split("+"):
            _member_spec(member.strip())
        return text, {}
    name, knobs = _member_spec(text)
    if "ratio" in knobs:
        raise ValueError(f"a method's knobs are spelt name:knob=value[:knob=value], not ratio (it is set apart; "
                         f"a composition's members may take one: uniform:ratio=0.6+fastv), got {text!r}")
    return name, knobs


def _is_composition(text: str) -> bool:
    return "+" in text or text.split(":")[0].strip().endswith(ENCODER_SUFFIX)


def _member_spec(text: str) -> tuple[str, dict[str, Any]]:
    """(name, knobs) of "name[@encoder][:knob=value...]", each value read as its knob's type (ratio among them)."""
    name, *settings = text.split(":")
    pairs = [setting.partition("=")[::2] for setting in settings]
    knobs = dict(pairs)
    if not name or any(not knob or not value for knob, value in pairs) or len(knobs) < len(pairs):
        raise ValueError(f"a method's knobs are spelt name:knob=value[:knob=value], each once, got {text!r}")
    method_cls = METHODS.get(name.removesuffix(ENCODER_SUFFIX))  # unknown: building it names the known methods
    return name, {k: knob_from_text(method_cls, k, value) if method_cls else value for k, value in knobs.items()}


def _composition(text: str, ratio: Any) -> Method:
    """A composition spelt as a name, members with their knobs; `ratio` is the budget, held by the member acting
    last in the prefill, so a ratio spelt on that member as well is refused rather than silently replaced."""
    specs = [_member_spec(member.strip()) for member in text.split("+")]
    members = [_member(name, knobs) for name, knobs in specs]
    holder = Compose._budget_holder(tuple(members))
    holder_name, holder_knobs = next(spec for spec, member in zip(specs, members) if member is holder)
    if ratio is not None and "ratio" in holder_knobs:
        raise ValueError(
            f"{holder_name} holds the budget of {text!r}, and its ratio came twice ({holder_knobs['ratio']} in the "
            f"name, {ratio} as the ratio): give it once"
        )
    return build_method(members[0] if len(members) == 1 else members, ratio)


def _member(name: str, knobs: dict[str, Any]) -> Method:
    """One member of a composition spelt as a name: a registered method, its encoder stages with "@encoder"."""
    ratio, knobs = knobs.get("ratio"), {knob: value for knob, value in knobs.items() if knob != "ratio"}
    if name.endswith(ENCODER_SUFFIX):
        return EncoderOnly(build_method(name.removesuffix(ENCODER_SUFFIX), **knobs), ratio)
    return build_method(name, ratio, **knobs)


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
    "EVS",
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
