"""A video after cached tokens - a cached system prompt, a first turn without video - is compressed as the whole
conversation sent in one prompt would be: the same tokens kept, the same answer, and what follows continues alike."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import StaticCache

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine.compat import CACHE_KEYWORD, output_cache

from .conftest import COMPRESSING, FAMILIES, inputs_for, model_for

SYSTEM = "sys:\n"
PAIRS = [
    *((family, method) for family in FAMILIES for method in ("tome", "fastv")),
    *((family, method) for family in ("llava_onevision", "qwen2_5_vl") for method in COMPRESSING
      if method not in ("tome", "fastv")),
]


def conversation(family: str, frames: torch.Tensor, system: str = SYSTEM) -> tuple[torch.Tensor, dict]:
    """The system prompt's ids, and the inputs of the whole conversation: system prompt, then a video and a question
    (every per-token input padded over the system prompt: it is text)."""
    inputs = inputs_for(family, frames, "What is moving?")
    prefix = torch.tensor([tiny.text_ids(system)])
    whole = dict(inputs)
    for name, value in inputs.items():
        if torch.is_tensor(value) and value.shape == inputs["input_ids"].shape:
            whole[name] = torch.nn.functional.pad(value, (prefix.shape[1], 0), value=int(name == "attention_mask"))
    whole["input_ids"] = torch.cat([prefix, inputs["input_ids"]], dim=1)
    return prefix, whole


def answer(model, inputs: dict, cache=None, max_new_tokens: int = 2):
    extra = {} if cache is None else {CACHE_KEYWORD: copy.deepcopy(cache)}
    return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True,
                          output_logits=True, suppress_tokens=list(range(tiny.IMAGE, tiny.VOCAB)), **extra)


def passes_through(model, method: str) -> bool:
    """Where a video after cached tokens is not compressed: recurrent layers would carry their state through the
    padding compression leaves after the cache, and sliding windows would count it; Qwen-Omni's and Cosmos3 Edge's
    generate gives such a call no grids; AIM's graph reads every prompt token's attention."""
    adapter = adapter_for(model)
    return adapter.recurrent_llm or adapter.sliding_llm or not adapter.grids_after_cache or method == "aim"


@pytest.mark.parametrize(("family", "method"), PAIRS)
def test_a_video_after_cached_tokens_is_compressed_as_in_one_prompt(family, method, clip):
    model = model_for(family)
    prefix, whole = conversation(family, clip)

    def after_cached_prefix():
        return answer(model, whole, output_cache(model(input_ids=prefix, use_cache=True)))

    with torch.no_grad():
        if passes_through(model, method):  # after the whole conversation's generate, as below (Qwen-Omni's deltas)
            answer(model, whole)
            stock = after_cached_prefix()
        with tokcompress.compress(model, method, ratio=0.3) as handle:
            in_one_prompt = answer(model, whole)
            kept = handle.stats.samples[0].kept_positions
            if passes_through(model, method):
                with pytest.warns(UserWarning, match="continue a cached conversation and are not compressed"):
                    after_cache = after_cached_prefix()
                assert handle.stats.later_visual == int((whole["input_ids"] == tiny.VIDEO).sum())
                assert torch.equal(after_cache.sequences, stock.sequences)
                return
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                after_cache = after_cached_prefix()
    assert torch.equal(after_cache.sequences, in_one_prompt.sequences)
    for step, reference in zip(after_cache.logits, in_one_prompt.logits):
        torch.testing.assert_close(step, reference, rtol=1e-4, atol=1e-4)
    assert handle.stats.samples[0].kept_positions == kept  # positions in the whole conversation
    assert handle.stats.later_visual == 0


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("method", ["fastv", "tome", "dycoke"])
def test_the_next_turn_continues_as_after_the_conversation_in_one_prompt(family, method, clip):
    """What the compressed video left in the cache is the whole conversation's: a text follow-up continues it as it
    continues the generation that read the conversation in one prompt (decoding-time selection included)."""
    model = model_for(family)
    prefix, whole = conversation(family, clip)
    follow_up = torch.tensor([tiny.text_ids("And then?")])

    def next_turn(first) -> torch.Tensor:  # the conversation so far and a question: its per-token inputs padded
        ids = torch.cat([first.sequences, follow_up], dim=1)
        turn = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for name, value in whole.items():
            if name not in turn and torch.is_tensor(value) and value.shape == whole["input_ids"].shape:
                turn[name] = torch.nn.functional.pad(value, (0, ids.shape[1] - value.shape[1]))
        return torch.stack(answer(model, turn, output_cache(first)).logits)

    with torch.no_grad(), tokcompress.compress(model, method, ratio=0.3):
        cache = output_cache(model(input_ids=prefix, use_cache=True))
        after_cache = next_turn(answer(model, whole, cache, max_new_tokens=3))
        in_one_prompt = next_turn(answer(model, whole, max_new_tokens=3))
    torch.testing.assert_close(after_cache, in_one_prompt, rtol=1e-4, atol=1e-4)


# where the stock model answers such a batch's rows as alone (to 5e-4: padding after a cache; Qwen3-VL's and Gemma 4's
# own positions or masks differ there by 1e-2 and more, unpatched)
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "video_llama_3"])
@pytest.mark.parametrize("method", ["fastv", "tome", "sparsevlm"])
def test_a_batch_after_cached_system_prompts_is_each_sample_alone(family, method, clip, other_clip):
    """System prompts of different lengths (left-padded) cached together, then videos (of different lengths where
    the family takes them) and questions: each row is compressed and answered as its sample alone."""
    model = model_for(family)
    videos = [clip, other_clip if family.startswith("llava") else other_clip[:6]]
    systems = ["sys:\n", "s: be\n"]
    samples = [conversation(family, frames, system) for frames, system in zip(videos, systems)]
    with torch.no_grad(), tokcompress.compress(model, method, ratio=0.3) as handle:
        alone = []
        for prefix, whole in samples:
            alone.append((answer(model, whole, output_cache(model(input_ids=prefix, use_cache=True))),
                          handle.stats.samples[0].kept_positions))
        prefixes = tiny.left_pad([prefix[0].tolist() for prefix, _ in samples])
        cache = output_cache(model(input_ids=prefixes[0], attention_mask=prefixes[1], use_cache=True))
        batch = inputs_for(family, videos, ["What is moving?"] * 2)
        batch["input_ids"] = torch.cat([prefixes[0], batch["input_ids"]], dim=1)
        batch["attention_mask"] = torch.cat([prefixes[1], batch["attention_mask"]], dim=1)
        for name, value in batch.items():
            if name not in ("input_ids", "attention_mask") and torch.is_tensor(value) and value.ndim == 2 and \
                    value.shape[1] == batch["input_ids"].shape[1] - prefixes[0].shape[1]:  # per token: text before
                batch[name] = torch.nn.functional.pad(value, (prefixes[0].shape[1], 0))
        together = answer(model, batch, cache)
        kept = [sample.kept_positions for sample in handle.stats.samples]
    width = batch["input_ids"].shape[1]
    for row, ((single, single_kept), positions) in enumerate(zip(alone, kept)):
        # the first step's logits (the tiny random model's top two can lie closer than a padded batch's fp32 noise)
        torch.testing.assert_close(together.logits[0][row], single.logits[0][0], rtol=1e-3, atol=1e-3)
        shift = width - single.sequences.shape[1] + 2  # the batch's padding before the row's conversation
        assert [position - shift for position in positions] == single_kept


def test_a_static_cache_is_not_compressed_behind_and_says_so(clip):
    """A static cache is filled prompt by prompt: a video after cached tokens in one passes through, as it reads
    unpatched, with a warning naming why."""
    model = model_for("llava_onevision")
    prefix, whole = conversation("llava_onevision", clip)
    with torch.no_grad():
        cache = StaticCache(config=model.config.get_text_config(), max_cache_len=whole["input_ids"].shape[1] + 4)
        model(input_ids=prefix, use_cache=True, **{CACHE_KEYWORD: cache})
        stock = answer(model, whole, cache)
        with tokcompress.compress(model, "tome", ratio=0.3) as handle:
            with pytest.warns(UserWarning, match="a static cache is filled prompt by prompt"):
                after_cache = answer(model, whole, cache)
    assert torch.equal(after_cache.sequences, stock.sequences)
    assert handle.stats.later_visual == int((whole["input_ids"] == tiny.VIDEO).sum())


@pytest.mark.parametrize("family", ["llava_onevision", "internvl", "video_llava"])
@pytest.mark.parametrize("method", ["fastv", "tome"])
def test_a_hand_written_forward_after_cached_tokens_reads_as_the_whole_conversation(family, method, clip):
    """A plain forward of the rest of the conversation on the system prompt's cache (no positions given: HF counts on
    from the cache): the last token's logits and the tokens kept are the whole conversation's; each layer's positions
    map its outputs (this call's tokens only) into the conversation."""
    model = model_for(family)
    prefix, whole = conversation(family, clip)
    rest = {name: value[:, prefix.shape[1]:] if name in ("input_ids",) else value for name, value in whole.items()}
    with torch.no_grad(), tokcompress.compress(model, method, ratio=0.3) as handle:
        reference = model(**whole).logits[:, -1]
        kept = handle.stats.samples[0].kept_positions
        cache = output_cache(model(input_ids=prefix, use_cache=True))
        out = model(**rest, output_hidden_states=True, **{CACHE_KEYWORD: cache})
    torch.testing.assert_close(out.logits[:, -1], reference, rtol=1e-4, atol=1e-4)
    assert handle.stats.samples[0].kept_positions == kept
    last = handle.stats.positions_at_layer(len(out.hidden_states) - 2)
    assert last.shape[1] == out.hidden_states[-1].shape[1]
    assert int(last.min()) >= prefix.shape[1] and kept == [p for p in last[0].tolist() if p in kept]


def test_a_video_passed_through_after_cached_tokens_is_counted_once_per_sample_under_beams(clip):
    """Beams copy each sample into several rows; the warning and the stats count a sample's video tokens once."""
    model = model_for("qwen3_5")
    prefix, whole = conversation("qwen3_5", clip)
    tokens = int((whole["input_ids"] == tiny.VIDEO).sum())
    with torch.no_grad(), tokcompress.compress(model, "tome", ratio=0.3) as handle:
        cache = output_cache(model(input_ids=prefix.repeat(2, 1), use_cache=True))  # a row per beam
        with pytest.warns(UserWarning, match=f"{tokens} video tokens continue a cached conversation"):
            model.generate(**whole, max_new_tokens=2, do_sample=False, num_beams=2, **{CACHE_KEYWORD: cache})
    assert handle.stats.later_visual == tokens



def test_the_baselines_stats_count_decoding_steps_as_a_compressed_runs_do(clip):
    """The identity (ratio 1) is the baseline a compressed run is measured against: its stats count the steps of a
    generation, of the next turn that continues its cache, and of a video after a cached system prompt alike."""
    model = model_for("llava_onevision")
    prefix, whole = conversation("llava_onevision", clip)
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    options = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                   suppress_tokens=list(range(tiny.IMAGE, tiny.VOCAB)))

    def steps(ratio: float) -> list[int]:
        counted = []
        with torch.no_grad(), tokcompress.compress(model, "fastv", ratio=ratio) as handle:
            first = model.generate(**inputs, **options)
            counted.append(handle.stats.decode_steps)
            ids = torch.cat([first.sequences, torch.tensor([tiny.text_ids("And then?")])], dim=1)
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options,
                           **{CACHE_KEYWORD: output_cache(first)})
            counted.append(handle.stats.decode_steps)
            cache = output_cache(model(input_ids=prefix, use_cache=True))
            model.generate(**whole, **options, **{CACHE_KEYWORD: cache})
            counted.append(handle.stats.decode_steps)
        return counted

    assert steps(1.0) == steps(0.3) == [3, 7, 3]
