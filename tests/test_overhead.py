"""The engine's own cost on the prefill path: a method's device-to-host syncs (`.item()`, `.tolist()`,
`nonzero`, ... - each one stalls a GPU's queue) must not grow with the clip's length (a per-frame Python loop
on the prefill path). Counted on the CPU with a dispatch mode, so it holds without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tokcompress

from .conftest import COMPRESSING, inputs_for, model_for

HOST_SYNCS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique2", "aten.unique_dim")


class HostSyncs(TorchDispatchMode):
    """Counts the ops that copy a result to the host (a sync on a GPU) while active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += str(func).startswith(HOST_SYNCS)
        return func(*args, **(kwargs or {}))


def prefill_syncs(model, inputs) -> int:
    with torch.no_grad():
        model(**inputs)  # warm: lazily built state is not the prefill's cost
        with HostSyncs() as syncs:
            model(**inputs)
    return syncs.count


@pytest.mark.parametrize("method", sorted(COMPRESSING))
def test_a_prefills_host_syncs_do_not_grow_with_the_frames(clip, method):
    """8 more frames add fewer than 4 syncs (a per-frame loop adds 8 or more; FrameFusion's chain following is
    logarithmic in the frames)."""
    model = model_for("llava_onevision")
    clips = (clip, torch.cat([clip, clip.flip(0)]))
    with tokcompress.compress(model, method, ratio=0.3):
        short, long = (prefill_syncs(model, inputs_for("llava_onevision", frames, "What?")) for frames in clips)
    assert long - short < 4, f"{method}: {short} syncs for 8 frames, {long} for 16"
