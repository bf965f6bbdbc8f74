"""transformers compatibility: the seam, the version policy, and compression that cannot silently stop."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import tokcompress
from tokcompress import releases, tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine import compat

from .conftest import (
    FRAME_GRANULAR,
    TINY,
    every_family_and_every_method,
    generate,
    inputs_for,
    model_for,
    shorter,
    softmax_layers,
)


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_generate_keeps_compressing_every_decoding_step(family, clip, other_clip, method):
    """After generate the stats describe the prompt's visual tokens and every step; each layer's mask fits its cache."""
    model = model_for(family)
    short = shorter(family, other_clip)
    batch = inputs_for(family, [clip, short], ["What is moving in this video?", "Who?"])  # left padding
    new_tokens, ratio = 4, 0.3
    with tokcompress.compress(model, method, ratio=ratio) as handle:
        checked = _check_masks_against_caches(model)
        try:
            generate(model, batch, max_new_tokens=new_tokens)
        finally:
            checked.remove()
        stats = handle.stats
    assert stats.note == "" and stats.decode_steps == new_tokens - 1
    assert len(stats.samples) == 2
    for sample, ids in zip(stats.samples, batch["input_ids"]):
        assert sample.visual_in == int((ids == tiny.VIDEO).sum())
        if method in FRAME_GRANULAR:  # a cap: a static clip (the second one) dedups below it
            assert sample.achieved_ratio <= ratio + TINY[family].tokens_per_unit / sample.visual_in
        else:
            assert abs(sample.achieved_ratio - ratio) * sample.visual_in <= 1.0
        assert len(sample.kept_positions) == sample.visual_out
        if method == "dycoke":
            assert len(sample.decode_visual_read) == new_tokens - 1
    assert len(checked.decode_calls) == (new_tokens - 1) * len(softmax_layers(model))
    assert all(mask is None for mask in checked.recurrent_decode_masks)  # one new token: nothing padded
    mismatched = [(layer, mask, keys) for layer, mask, keys in checked.decode_calls if mask != keys]
    assert not mismatched, f"(layer, mask length, key length) mismatched while decoding: {mismatched}"


class _MaskChecker:
    def __init__(self):
        self.decode_calls: list[tuple[int, int | None, int]] = []
        self.recurrent_decode_masks: list = []  # what linear-attention layers got as a mask while decoding
        self.handles = []

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _check_masks_against_caches(model) -> _MaskChecker:
    """Record, per decoding call of each softmax layer, the key length of its mask and of what its attention will
    read (a sliding layer's cache keeps its window; a layer sharing another's KV reads what that one cached this
    step); and the masks linear-attention layers get while decoding.

    Registered after tokcompress's own hooks, so it sees the inputs a layer really runs with.
    """
    checker = _MaskChecker()
    softmax = softmax_layers(model)
    adapter = adapter_for(model)
    config = adapter.language_model.config
    decoding, selected = [], {}  # whether this step decodes; the keys each layer read as selected this step

    def step(module, args, kwargs):
        cache = compat.cache_of(kwargs)
        decoding[:] = [cache is not None and cache.get_seq_length() > 0]
        selected.clear()

    def watch(index):
        def hook(module, args, kwargs):
            cache = compat.cache_of(kwargs)
            queries = (args[0] if args else kwargs["hidden_states"]).shape[1]
            if index not in softmax:
                if queries == 1:  # decoding
                    checker.recurrent_decode_masks.append(kwargs.get("attention_mask"))
                return
            if not decoding[0]:
                return
            source = adapter.kv_source(index)
            past = cache.get_seq_length(source) - (queries if source != index else 0)  # before this step
            if compat.layer_type(config, index) == compat.SLIDING_LAYER:
                past = min(past, config.sliding_window - 1)
            keys = cache.index.shape[1] if isinstance(cache, compat.SelectedKV) else past + queries
            selected[index] = keys
            keys = selected.get(source, keys)
            mask = kwargs.get("attention_mask")
            checker.decode_calls.append((index, None if mask is None else mask.shape[-1], keys))

        return hook

    checker.handles.append(adapter.language_model.register_forward_pre_hook(step, with_kwargs=True))
    for index, layer in enumerate(adapter.language_model.layers):
        checker.handles.append(layer.register_forward_pre_hook(watch(index), with_kwargs=True))
    return checker


@pytest.mark.parametrize("keyword", sorted({"past_key_values", compat.CACHE_KEYWORD}))
def test_a_hand_written_loop_may_spell_the_cache_keyword_either_way(family, clip, keyword):
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, "fastv", ratio=0.3) as handle, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old name is deprecated from 5.24
        expected = generate(model, inputs, max_new_tokens=3)[0].tolist()
        out = model(**inputs, use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        for _ in range(2):
            mask = torch.cat([inputs["attention_mask"], torch.ones(1, len(tokens), dtype=torch.long)], dim=1)
            step = {"input_ids": torch.tensor([tokens[-1:]]), "attention_mask": mask, keyword: compat.output_cache(out)}
            out = model(**step, use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
        assert handle.stats.decode_steps == 2
    assert tokens == expected


def test_the_cache_is_read_under_either_name_and_replaced_under_the_one_used():
    old, new, stand_in = object(), object(), object()
    assert compat.cache_of({"past_key_values": old}) is old
    assert compat.cache_of({compat.CACHE_KEYWORD: new, "use_cache": True}) is new
    assert compat.cache_of({"use_cache": True}) is None
    for name in ("past_key_values", compat.CACHE_KEYWORD):
        call = {name: old}
        compat.replace_cache(call, stand_in)
        assert call == {name: stand_in}


def test_transformers_older_than_the_floor_is_refused_with_the_fix():
    with pytest.raises(RuntimeError, match=r"needs transformers >= 5\.23, found 5\.22\.2.*pip install -U"):
        releases.check_transformers_version("5.22.2")


def test_import_on_a_transformers_older_than_the_floor_names_the_fix(tmp_path):
    # an old release lacks internals the engine imports: the version is checked before any of them
    (tmp_path / "transformers").mkdir()
    (tmp_path / "transformers" / "__init__.py").write_text('__version__ = "5.0.0"\n')
    done = subprocess.run(
        [sys.executable, "-c", "import tokcompress"], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])},
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: tokcompress needs transformers >= 5.23, found 5.0.0; "
        "upgrade with: pip install -U 'transformers>=5.23,<6'"
    )


def test_transformers_newer_than_tested_warns_once_naming_the_tested_range(monkeypatch):
    monkeypatch.setattr(releases, "_warned_untested", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for version in ("5.23.0", "5.24.0", "5.25.3"):
            releases.check_transformers_version(version)
        assert not caught
        releases.check_transformers_version("5.26.0")
        releases.check_transformers_version("5.27.1")
    assert len(caught) == 1 and caught[0].category is releases.UntestedTransformersWarning
    assert "tested with transformers 5.23-5.25.x, found 5.26.0" in str(caught[0].message)


def test_patch_applies_the_version_policy(monkeypatch):
    model = model_for("llava_onevision")
    monkeypatch.setattr(releases, "_warned_untested", False)
    monkeypatch.setattr(releases.transformers, "__version__", "5.30.0")
    with pytest.warns(releases.UntestedTransformersWarning):
        tokcompress.patch(model, "fastv", ratio=0.3).unpatch()
    monkeypatch.setattr(releases.transformers, "__version__", "5.20.0")
    with pytest.raises(RuntimeError, match="needs transformers"):
        tokcompress.patch(model, "fastv", ratio=0.3)
    assert not hasattr(model, "_tokcompress_handle")


def test_demo_prints_no_deprecation_from_our_calls():
    command = [sys.executable, "-m", "tokcompress", "demo", "--frames", "4", "--max-new-tokens", "3", "--repeats", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "dycoke" in result.stdout
    assert not [line for line in output.splitlines() if "deprecat" in line.lower() or "Warning" in line]
