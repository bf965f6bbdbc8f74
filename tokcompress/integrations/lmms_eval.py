"""Compression-aware versions of lmms-eval's HF-native model wrappers.

Registered through the `lmms_eval.models` entry-point group (see `lmms_eval_manifest`), so after
`pip install tokcompress` and lmms-eval:

    python -m lmms_eval --model tokcompress_qwen2_5_vl \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,method=framefusion,ratio=0.3,similarity_threshold=0.5 \\
        --tasks videomme --log_samples --output_path results/

`method`, `ratio` and the method's knobs are taken out of `--model_args` (`method` may be a composition,
"framededup+framefusion" or "earlytom@encoder+fastv", its members' knobs spelt in it: "uniform:ratio=0.6+fastv");
the rest goes to the stock wrapper. Every request is answered on its own (exact per-sample records), and its
`token_counts` in the logged samples carry the compression fields: visual tokens in and out, achieved ratio,
prefill time, decode time per token and peak GPU memory.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts, unwrap_generation_output
from lmms_eval.models.chat.internvl_hf import InternVLHf as _InternVLHfChat
from lmms_eval.models.chat.llava_hf import LlavaHf as _LlavaHfChat
from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as _Qwen2_5_VLChat
from lmms_eval.models.chat.qwen3_5 import Qwen3_5 as _Qwen3_5Chat
from lmms_eval.models.chat.qwen3_vl import Qwen3_VL as _Qwen3_VLChat
from lmms_eval.models.simple.gemma4 import Gemma4 as _Gemma4
from lmms_eval.models.simple.glm4v import GLM4V as _GLM4V
from lmms_eval.models.simple.llava_hf import LlavaHf as _LlavaHf
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL as _Qwen2_5_VL
from lmms_eval.models.simple.qwen2_vl import Qwen2_VL as _Qwen2_VL
from lmms_eval.models.simple.qwen3_5 import Qwen3_5 as _Qwen3_5
from lmms_eval.models.simple.qwen3_vl import Qwen3_VL as _Qwen3_VL
from transformers import LogitsProcessor, LogitsProcessorList

import tokcompress
from tokcompress.methods import METHODS, build_method


@dataclasses.dataclass
class CompressionCounts(TokenCounts):
    """lmms-eval's per-request token counts plus what compression kept and cost."""

    method: str | None = None
    spec: str | None = None  # the method as the run named it, with its knobs ("flowcut:inner_prune=0")
    ratio: float | None = None
    members: str | None = None  # a composition's other members and their own ratios: "framededup at 0.5"
    visual_tokens_in: int | None = None
    visual_tokens_out: int | None = None
    achieved_ratio: float | None = None
    prefill_ms: float | None = None
    decode_ms_per_token: float | None = None
    peak_gpu_mib: float | None = None
    compression_ms: float | None = None
    failed: bool | None = None  # generate raised (the stock wrapper answers with nothing): no compression figures
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        counts = super().to_dict()
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name not in counts and value is not None:
                counts[field.name] = value
        return counts


class _FirstTokenClock(LogitsProcessor):
    """Called once per generation step; its first call marks the end of the prefill."""

    def __init__(self):
        self.first_token_at: float | None = None

    def __call__(self, input_ids, scores):
        if self.first_token_at is None:
            if scores.is_cuda:
                torch.cuda.synchronize(scores.device)
            self.first_token_at = time.perf_counter()
        return scores


class CompressionMixin:
    """Pops `method`, `ratio` and the method's knobs, builds the stock wrapper, patches its model."""

    def __init__(self, *args: Any, method: str = "none", ratio: float | None = None, **kwargs: Any):
        if method not in METHODS:
            build_method(method)  # spelt ("uniform:ratio=0.6+fastv", "fastv:layer=2"), or an error naming the known
        knob_names = set(METHODS[method].knobs()) - {"ratio"} if method in METHODS else set()
        knobs = {name: kwargs.pop(name) for name in list(kwargs) if name in knob_names}
        super().__init__(*args, **kwargs)
        self.compression = tokcompress.patch(self._model, method, ratio, **knobs)
        self._spec = method + "".join(f":{name}={value}" for name, value in knobs.items())
        self._last_request: dict[str, Any] = {}
        self._model.generate = self._timed_generate(self._model.generate)

    def _timed_generate(self, generate):
        def timed_generate(*args: Any, **kwargs: Any):
            clock = _FirstTokenClock()
            processors = kwargs.get("logits_processor") or LogitsProcessorList()
            kwargs["logits_processor"] = LogitsProcessorList([*processors, clock])
            device = self._model.device
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            try:
                output = generate(*args, **kwargs)
            except Exception as error:  # the stock wrapper answers with nothing: this request's record says why
                self._last_request = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
                raise
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            end = time.perf_counter()
            prompt = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[-1]
            new_tokens = output.shape[-1] - prompt
            first = clock.first_token_at or end
            self._last_request = dict(
                input_tokens=prompt,
                output_tokens=new_tokens,
                prefill_ms=(first - start) * 1e3,
                decode_ms_per_token=(end - first) / (new_tokens - 1) * 1e3 if new_tokens > 1 else None,
                peak_gpu_mib=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            )
            return output

        return timed_generate

    def generate_until(self, requests):
        results = []
        for request in requests:  # one at a time, so every record belongs to exactly one sample
            self._last_request = {}
            (output,) = super().generate_until([request])
            text, counts = unwrap_generation_output(output)
            results.append(GenerationResult(text, self._counts(counts)))
        return results

    def _counts(self, stock: TokenCounts | None) -> CompressionCounts:
        stats = self.compression.stats
        record = dict(self._last_request)
        if stock is not None:
            record.update({k: v for k, v in stock.to_dict().items() if v is not None})
        if "output_tokens" not in self._last_request:  # its generate failed: the stats are an earlier request's
            return CompressionCounts(method=stats.method, spec=self._spec, ratio=stats.ratio,
                                     members=stats.ratio_note or None, failed=True, **record)
        samples = stats.samples
        return CompressionCounts(
            method=stats.method,
            spec=self._spec,
            ratio=stats.ratio,
            members=stats.ratio_note or None,
            visual_tokens_in=stats.visual_in if samples else None,
            visual_tokens_out=stats.visual_out if samples else None,
            achieved_ratio=round(stats.achieved_ratio, 4) if samples else None,
            compression_ms=round((stats.compression_seconds + stats.decode_compression_seconds) * 1e3, 3)
            if samples else None,
            **record,
        )


def _compressed(base: type, name: str) -> type:
    doc = f"`{base.__module__}.{base.__name__}` with tokcompress: extra model_args method, ratio and method knobs."
    return type(name, (CompressionMixin, base), {"__doc__": doc, "__module__": __name__})


LlavaHf = _compressed(_LlavaHf, "LlavaHf")
LlavaHfChat = _compressed(_LlavaHfChat, "LlavaHfChat")
Qwen2_5_VL = _compressed(_Qwen2_5_VL, "Qwen2_5_VL")
Qwen2_5_VLChat = _compressed(_Qwen2_5_VLChat, "Qwen2_5_VLChat")
Qwen2_VL = _compressed(_Qwen2_VL, "Qwen2_VL")
Qwen3_VL = _compressed(_Qwen3_VL, "Qwen3_VL")
Qwen3_VLChat = _compressed(_Qwen3_VLChat, "Qwen3_VLChat")
Qwen3_5 = _compressed(_Qwen3_5, "Qwen3_5")
Qwen3_5Chat = _compressed(_Qwen3_5Chat, "Qwen3_5Chat")
InternVLHfChat = _compressed(_InternVLHfChat, "InternVLHfChat")
GLM4V = _compressed(_GLM4V, "GLM4V")  # GLM-4.1V and GLM-4.5V
Gemma4 = _compressed(_Gemma4, "Gemma4")
