"""The engine's own cost: a method's device-to-host syncs (`.item()`, `.tolist()`, `nonzero`, ... - each one
stalls a GPU's queue) must not grow with the clip's length in a prefill (a per-frame Python loop) nor with the
batch in a decoding step. Counted on the CPU with a dispatch mode, so it holds without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tokcompress
from tokcompress.methods import DECODE, METHODS

from .conftest import COMPRESSING, generate, inputs_for, model_for

HOST_SYNCS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique2", "aten.unique_dim")


class HostSyncs(TorchDispatchMode):
    """Counts the ops that copy a result to the host (a sync on a GPU) while active, `.tolist()` included (on
    the CPU it reads memory without dispatching an op; it counts even where the tensor would stay on the host)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self._tolist = torch.Tensor.tolist

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += str(func).startswith(HOST_SYNCS)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        tolist = self._tolist

        def counted(tensor):
            self.count += 1
            return tolist(tensor)

        torch.Tensor.tolist = counted
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def prefill_syncs(model, inputs) -> int:
    with torch.no_grad():
        model(**inputs)  # warm: lazily built state is not the prefill's cost
        with HostSyncs() as syncs:
            model(**inputs)
    return syncs.count


@pytest.mark.parametrize("method", sorted(COMPRESSING))
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "gemma4"])  # batched, packed, padded batched
def test_a_prefills_host_syncs_do_not_grow_with_the_frames(clip, family, method):
    """8 more frames add fewer than 4 syncs (a per-frame loop adds 8 or more; FrameFusion's chain following is
    logarithmic in the frames)."""
    model = model_for(family)
    clips = (clip, torch.cat([clip, clip.flip(0)]))
    with tokcompress.compress(model, method, ratio=0.3):
        short, long = (prefill_syncs(model, inputs_for(family, frames, "What?")) for frames in clips)
    assert long - short < 4, f"{method} on {family}: {short} syncs for 8 frames, {long} for 16"


def decode_step_syncs(model, inputs) -> float:
    """Host syncs of one decoding step (prefill and generate's own setup cancel out: 7 tokens minus 3)."""
    generate(model, inputs, max_new_tokens=3)  # warm
    counts = []
    for new_tokens in (3, 7):
        with HostSyncs() as syncs:
            generate(model, inputs, max_new_tokens=new_tokens)
        counts.append(syncs.count)
    return (counts[1] - counts[0]) / 4


@pytest.mark.parametrize("method", sorted(name for name in COMPRESSING if DECODE in METHODS[name].stages))
def test_a_decoding_steps_host_syncs_do_not_grow_with_the_batch(clip, other_clip, method):
    """Selecting each sample's visual KV entries takes no sync of its own: one for the batch's width, however
    many samples (and generate's own two)."""
    model = model_for("llava_onevision")
    with tokcompress.compress(model, method, ratio=0.5):
        one = decode_step_syncs(model, inputs_for("llava_onevision", clip, "What?"))
        two = decode_step_syncs(model, inputs_for("llava_onevision", [clip, other_clip], ["What?", "Who is here?"]))
    assert one == two <= 3, f"{method}: {one} syncs a step for one sample, {two} for two"
