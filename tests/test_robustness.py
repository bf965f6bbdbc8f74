"""The ways real users drive a patched model: multi-turn chats, beams, copies, threads, odd inputs."""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import io
import threading
import warnings

import pytest
import torch
from transformers import GenerationConfig

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine.compat import CACHE_KEYWORD, output_cache
from tokcompress.methods import METHODS
from tokcompress.methods.base import PRE_ENCODER
from tokcompress.video import qwen_vl_pixels

from .conftest import (
    COMPRESSING,
    FAMILIES,
    build,
    every_family_and_every_method,
    generate,
    inputs_for,
    logits,
    model_for,
    shorter,
)


def cache_kwarg(cache) -> dict:
    return {CACHE_KEYWORD: cache}


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_a_multi_turn_chat_passing_the_cache_back_continues_it(family, clip, method):
    """generate(whole conversation, cache of turn one) == continuing that cache by hand with the new tokens only."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, method, ratio=0.3), torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        cache = output_cache(first)
        ids = torch.cat([first.sequences, torch.tensor([tiny.text_ids("\nuser: and then?\nassistant:")])], dim=1)
        follow_up = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if "mm_token_type_ids" in inputs:
            follow_up["mm_token_type_ids"] = (ids == tiny.VIDEO).long() * 2
        second = model.generate(
            **follow_up, max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True,
            **cache_kwarg(copy.deepcopy(cache)),
        )
        seen = inputs["input_ids"].shape[1] + 2  # the prompt and the two generated tokens fed back
        by_hand = model(input_ids=ids[:, seen:], attention_mask=follow_up["attention_mask"], **cache_kwarg(cache))
    torch.testing.assert_close(second.logits[0], by_hand.logits[:, -1], rtol=1e-4, atol=1e-5)


def _next_turn(model, inputs, first, text: str = "\nuser: and then?\nassistant:", **extra) -> torch.Tensor:
    """The logits of generating a next turn (`text`, and `extra` inputs) on a copy of turn one's cache."""
    ids = torch.cat([first.sequences, torch.tensor([tiny.text_ids(text)])], dim=1)
    follow_up = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **extra}
    if "mm_token_type_ids" in inputs:
        follow_up["mm_token_type_ids"] = (ids == tiny.VIDEO).long() * 2
    with torch.no_grad():
        second = model.generate(
            **follow_up, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True,
            **cache_kwarg(copy.deepcopy(output_cache(first))),
        )
    return torch.stack(second.logits, dim=1)


@pytest.mark.parametrize("method", ["uniform", "fastv", "dycoke"])
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_a_conversation_continues_as_it_started_when_the_patch_changes_between_turns(family, method, clip):
    """Turn one ran compressed; turn two passes its cache back after the ratio was set to 1, or inside a new
    `compress` block (the same settings, or another method): it continues exactly as under the patch that started
    it (its positions, its masks, its decoding-time selection)."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, method, ratio=0.3) as handle, torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        reference = _next_turn(model, inputs, first)
        handle.ratio = 1.0
        torch.testing.assert_close(_next_turn(model, inputs, first), reference, rtol=0, atol=0)
    for again in (method, "tome"):
        with tokcompress.compress(model, again, ratio=0.3):
            torch.testing.assert_close(_next_turn(model, inputs, first), reference, rtol=0, atol=0)


def test_a_later_turns_video_is_not_compressed_and_the_stats_and_a_warning_say_so(clip, other_clip):
    """A second turn's video continues a compressed conversation's cache, whose layers cached different tokens: it
    passes through as the unpatched model reads it; the stats count it, a warning says why and how to compress it.
    (A video after cached tokens no compressed generation filled is compressed: test_after_cache.py.)"""
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    later = inputs_for("llava_onevision", other_clip, "And here?")
    with torch.no_grad(), tokcompress.compress(model, "fastv", ratio=0.3) as handle:
        first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        ids = torch.cat([first.sequences, later["input_ids"]], dim=1)
        with pytest.warns(UserWarning, match="73 video tokens continue a cached conversation and are not compressed "
                                             r"\(the layers of the compressed conversation before it cached"):
            model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                pixel_values_videos=later["pixel_values_videos"], **cache_kwarg(output_cache(first)),
            )
        assert handle.stats.samples[0].visual_in == 73 and handle.stats.later_visual == 73
        assert "73 visual tokens of later turns not compressed" in str(handle.stats)


@pytest.mark.parametrize("method", ["framededup", "earlytom", "vidtldr"])
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_a_later_turns_video_reaches_the_llm_as_the_tower_encodes_it_whole(family, method, clip, other_clip):
    """No prefill follows a call continuing a cache to remove what the tower skips or folds, so the tower encodes
    a later turn's video whole: its tokens reach the LLM as the unpatched model's features, not zeros for frames
    left out or copies of the frames they folded into."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    later = inputs_for(family, other_clip if family == "llava_onevision" else other_clip[:6], "And here?")
    llm_inputs = []
    record = adapter_for(model).language_model.register_forward_pre_hook(
        lambda module, args, kwargs: llm_inputs.append(kwargs["inputs_embeds"][0]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            logits(model, later)
            expected = llm_inputs.pop()[later["input_ids"][0] == tiny.VIDEO]  # the stock features of its tokens
            no_placeholders = {"suppress_tokens": list(range(tiny.IMAGE, tiny.VOCAB))}  # random weights may emit one
            with tokcompress.compress(model, method, ratio=0.5), pytest.warns(UserWarning, match="not compressed"):
                first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                                       **no_placeholders)
                ids = torch.cat([first.sequences, later["input_ids"]], dim=1)
                turn = {key: value for key, value in later.items() if key not in ("input_ids", "attention_mask")}
                if "mm_token_type_ids" in later:  # the stock model reads only the new video as video
                    turn["mm_token_type_ids"] = torch.nn.functional.pad(
                        later["mm_token_type_ids"], (first.sequences.shape[1], 0)
                    )
                llm_inputs.clear()
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, **turn,
                               **cache_kwarg(output_cache(first)))
    finally:
        record.remove()
    chunk = llm_inputs[0]
    reached = chunk[ids[0, -len(chunk) :] == tiny.VIDEO]
    torch.testing.assert_close(reached, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["fastv", "framededup"])
@pytest.mark.parametrize(("family", "kind"), [("qwen2_5_vl", "image"), ("qwen2_5_vl", "video"), ("qwen3_vl", "image")])
def test_a_later_turns_image_or_video_takes_its_grids_m_rope_positions(family, kind, method, clip, other_clip):
    """An M-RoPE model numbers a later turn's image or video by its grid (generate computes it), as unpatched:
    the engine numbers only text after the compressed cache's last position itself."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    patch, side = (14, 112) if family == "qwen2_5_vl" else (16, 128)
    pixels, grid = qwen_vl_pixels(other_clip[:1] if kind == "image" else other_clip[:4], side, side, patch_size=patch)
    token = tiny.IMAGE if kind == "image" else tiny.VIDEO
    body = [tiny.VISION_START] + [token] * (int(grid.prod()) // 4) + [tiny.VISION_END]
    new = torch.tensor([tiny.text_ids("\nuser: ") + body + tiny.text_ids("\nAnd this?\nassistant:")])
    visual = {"pixel_values": pixels, "image_grid_thw": grid} if kind == "image" else {
        "pixel_values_videos": pixels, "video_grid_thw": grid}
    positions = []
    record = adapter_for(model).language_model.register_forward_pre_hook(
        lambda module, args, kwargs: positions.append(kwargs["position_ids"]), with_kwargs=True
    )

    def relative_positions() -> torch.Tensor:  # (3, tokens) of the new image's or video's tokens, from its first
        first = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True,
                               suppress_tokens=list(range(tiny.IMAGE, tiny.VOCAB)))
        ids = torch.cat([first.sequences, new], dim=1)
        types = torch.nn.functional.pad((new == token).long() * (1 if kind == "image" else 2),
                                        (first.sequences.shape[1], 0))
        positions.clear()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types, max_new_tokens=1,
                       **visual, **cache_kwarg(output_cache(first)))
        fed = ids[0, -positions[0].shape[-1] :]
        ours = positions[0][-3:, 0][:, fed == token]
        return ours - ours[:, :1]

    try:
        with torch.no_grad():
            stock = relative_positions()
            with tokcompress.compress(model, method, ratio=0.5), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the later turn's tokens are not compressed: said, and tested above
                assert torch.equal(relative_positions(), stock)
    finally:
        record.remove()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_a_hand_written_continuation_bringing_a_video_counts_on_from_the_conversation(family, clip, other_clip):
    """A plain forward feeding a later turn's video and the cache: with no positions given, HF would count from the
    compressed cache; its first token takes the position it takes unpatched."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    later = {k: v for k, v in inputs_for(family, other_clip[:6], "And here?").items() if k != "attention_mask"}
    positions = []
    record = adapter_for(model).language_model.register_forward_pre_hook(
        lambda module, args, kwargs: positions.append(kwargs["position_ids"][-3:, 0, 0]), with_kwargs=True
    )

    def first_position() -> torch.Tensor:
        first = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                               return_dict_in_generate=True, suppress_tokens=list(range(tiny.IMAGE, tiny.VOCAB)))
        positions.clear()
        model(**later, **cache_kwarg(output_cache(first)))
        return positions[0]

    try:
        with torch.no_grad():
            stock = first_position()
            with tokcompress.compress(model, "uniform", ratio=0.3), pytest.warns(UserWarning, match="not compressed"):
                assert torch.equal(first_position(), stock)
    finally:
        record.remove()


@pytest.mark.parametrize("family", ["qwen2_5_omni_thinker", "cosmos3_edge"])
def test_a_later_turns_video_runs_where_generate_hands_a_continuation_one_row_of_positions(family, clip, other_clip):
    """Qwen-Omni's and Cosmos3 Edge's generate hands a continuation text positions plus rope deltas (one row) and no
    grids: its video is read without them, passes through uncompressed and is counted."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    later = inputs_for(family, other_clip[:6], "And here?")
    with tokcompress.compress(model, "framededup", ratio=0.5) as handle, torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                               suppress_tokens=list(range(tiny.IMAGE, tiny.VOCAB)))
        ids = torch.cat([first.sequences, later["input_ids"]], dim=1)
        turn = {k: v for k, v in later.items() if k not in ("input_ids", "attention_mask")}
        with pytest.warns(UserWarning, match="not compressed"):
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                           **turn, **cache_kwarg(output_cache(first)))
    assert handle.stats.later_visual == int((later["input_ids"] == tiny.VIDEO).sum())


@pytest.mark.parametrize("method", ["framededup", "vidtldr"])
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen3_5", "gemma4"])
def test_embeddings_not_ids_keep_every_frame_in_the_tower_and_a_warning_says_why(family, method, clip):
    """Without input_ids nothing tells the LLM where the videos are, so nothing is compressed - and an encoder-side
    method must not leave frames out of the tower (or fold them) either, in a forward or in generate (which encodes
    up front): the zeros or copies in their place would reach the LLM. A warning names the fix."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    inputs["inputs_embeds"] = model.get_input_embeddings()(inputs.pop("input_ids"))
    options = dict(max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True)
    generates = family != "gemma4"  # whose generate takes no inputs_embeds

    def again(call):  # after the same call (Qwen-VL keeps the last call's rope deltas for one given embeddings)
        call()
        return call()

    with torch.no_grad():
        stock = again(lambda: model(**inputs).logits)
        with tokcompress.compress(model, method, ratio=0.3) as handle:
            with pytest.warns(UserWarning, match="given inputs_embeds, not input_ids"):
                assert torch.equal(again(lambda: model(**inputs).logits), stock)
        if generates:  # (generate resets those deltas)
            stock_generated = again(lambda: model.generate(**inputs, **options))
            with tokcompress.compress(model, method, ratio=0.3) as handle:
                with pytest.warns(UserWarning, match="given inputs_embeds, not input_ids"):
                    generated = again(lambda: model.generate(**inputs, **options))
            assert all(torch.equal(a, b) for a, b in zip(generated.logits, stock_generated.logits))
    assert "untouched" in str(handle.stats)


@pytest.mark.parametrize("method", ["fastv", "dycoke", "visionzip"])
def test_generating_without_a_cache_is_refused_naming_the_fix(method, clip):
    """use_cache=False would make every step a new prompt, compressed again: refused before anything runs."""
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    with torch.no_grad(), tokcompress.compress(model, method, ratio=0.3):
        with pytest.raises(ValueError, match=r"use_cache=False\) is not supported .* \(use_cache=True, the default\)"):
            model.generate(**inputs, max_new_tokens=2, use_cache=False)
        config = copy.deepcopy(model.generation_config)
        config.use_cache = False
        with pytest.raises(ValueError, match="use_cache=False"):
            model.generate(**inputs, max_new_tokens=2, generation_config=config)
        held, model.generation_config.use_cache = model.generation_config.use_cache, False
        try:  # the model's own default, under a config given without it
            with pytest.raises(ValueError, match="use_cache=False"):
                model.generate(**inputs, generation_config=GenerationConfig(max_new_tokens=2, do_sample=False))
        finally:
            model.generation_config.use_cache = held
        generate(model, inputs, max_new_tokens=2)  # nothing left behind
        text = {"input_ids": inputs["input_ids"][:, -4:], "attention_mask": inputs["attention_mask"][:, -4:]}
        generate(model, text, max_new_tokens=2, use_cache=False)  # no video: nothing to compress, nothing refused
    generate(model, inputs, max_new_tokens=2, use_cache=False)  # unpatched: the stock path


# 1-D and M-RoPE positions; a model that hands its LLM a built mask, not the 2-D one (Molmo2); dycoke's decoding
# selection, which averages the step's queries (on the tiny LLaVA-OV-1.5 a padding query changes its pick)
@pytest.mark.parametrize("method", ["framefusion", "dycoke"])
@pytest.mark.parametrize(
    "family", [f for f in ("llava_onevision", "qwen2_5_vl", "molmo2", "llava_onevision1_5") if f in FAMILIES]
)
def test_a_batchs_next_questions_left_padded_continue_each_row_as_if_alone(family, method, clip, other_clip):
    """A second turn of a batch passes the cache back with next questions of different lengths, left-padded (so
    padding sits between the turns): each row's new tokens take the positions they take alone, padding none, and
    attend to no padding; no padding counts among the queries choosing decoding's KV either."""
    model = model_for(family)
    clips, questions = [clip, shorter(family, other_clip)], ["What is moving in this video?", "Who?"]
    follow_ups = ["\nuser: and what happened after that?\nassistant:", "\nuser: why?\nassistant:"]

    def second_turn(rows: list[int]) -> torch.Tensor:
        inputs = inputs_for(family, [clips[r] for r in rows], [questions[r] for r in rows])
        first = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
        new = [tiny.text_ids(follow_ups[r]) for r in rows]
        width = max(len(tokens) for tokens in new)
        ids = torch.cat([first.sequences, torch.tensor([[tiny.PAD] * (width - len(t)) + t for t in new])], dim=1)
        new_mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in new])
        mask = torch.cat([inputs["attention_mask"], torch.ones(len(rows), 2, dtype=torch.long), new_mask], dim=1)
        follow_up = {"input_ids": ids, "attention_mask": mask}
        if "mm_token_type_ids" in inputs:  # the turn's new tokens are text
            types = inputs["mm_token_type_ids"]
            follow_up["mm_token_type_ids"] = torch.nn.functional.pad(types, (0, ids.shape[1] - types.shape[1]))
        second = model.generate(**follow_up, max_new_tokens=2, do_sample=False, output_logits=True,
                                return_dict_in_generate=True, **cache_kwarg(output_cache(first)))
        return torch.stack(second.logits, dim=1)  # (rows, steps, vocabulary)

    knobs = {"decode_layer": 1} if method == "dycoke" else {}
    with tokcompress.compress(model, method, ratio=0.3, **knobs), torch.no_grad():
        together = second_turn([0, 1])
        for row in (0, 1):
            torch.testing.assert_close(together[row], second_turn([row])[0], rtol=1e-4, atol=1e-5)


# a video's end marked by a newline token (LLaVA-OV), or by nothing (Video-LLaVA: generate's features do not say)
@pytest.mark.parametrize("method", ["none", *COMPRESSING])
@pytest.mark.parametrize("family", ["llava_onevision", "video_llava"])
def test_two_videos_back_to_back_generate(family, clip, other_clip, method):
    """Two videos in one run of placeholders read as two, in a forward and in generate alike."""
    model = model_for(family)
    alone = [inputs_for(family, frames, "Same?") for frames in (clip, other_clip)]
    per_video = int((alone[0]["input_ids"] == tiny.VIDEO).sum())
    videos = [tiny.VIDEO] * (2 * per_video)
    ids = torch.tensor([tiny.text_ids("user: ") + videos + tiny.text_ids("\nSame?\nassistant:")])
    pixels = torch.cat([sample["pixel_values_videos"] for sample in alone])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": pixels}
    reference = generate(model, inputs)
    with tokcompress.compress(model, method, ratio=None if method == "none" else 0.3) as handle:
        tokens = generate(model, inputs)
        (sample,) = handle.stats.samples
        assert sample.visual_in == 2 * per_video
        logits(model, inputs)
        assert handle.stats.samples[0].kept_positions == sample.kept_positions  # generate == forward
    if method == "none":
        assert torch.equal(tokens, reference)


@pytest.mark.parametrize("method", ["visionzip", "framededup", "fastv"])
def test_a_generate_failing_before_its_forward_leaves_nothing_for_the_next_forward(clip, other_clip, method):
    """generate noted its beams for the prompt, then refused it (longer than max_length): the next plain forward on
    a batch reads its rows as samples, not as those beams."""
    model = model_for("llava_onevision")
    batch = inputs_for("llava_onevision", [clip, other_clip], ["What is moving in this clip?", "Who?"])
    with tokcompress.compress(model, method, ratio=0.3) as handle:
        expected = logits(model, batch)
        with pytest.raises(ValueError, match="max_length"):
            generate(model, inputs_for("llava_onevision", clip, "What?"), max_new_tokens=None, num_beams=2,
                     max_length=10)
        torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=0)
        assert len(handle.stats.samples) == 2


# a video that ends in a cell of its last frame (Video-LLaVA), and one that ends in a newline token (LLaVA-OV)
@pytest.mark.parametrize("method", COMPRESSING)
@pytest.mark.parametrize("family", ["video_llava", "llava_onevision"])
def test_a_prompt_ending_with_its_video_predicts_from_its_last_token(family, method, clip):
    """With the question before the video (or none), the prompt's last token is visual: it survives every method
    at its place, so the next token is predicted from it, not from a dropped row's zeros - and a method that left
    its frame out of the tower (its features zeros) refuses the prompt, naming the fix. Right padding alike."""
    model = model_for(family)
    video = inputs_for(family, clip, "unused")
    ids = video["input_ids"][0].tolist()
    first, last = ids.index(tiny.VIDEO), len(ids) - 1 - ids[::-1].index(tiny.VIDEO)
    rows = [tiny.text_ids(prefix) + ids[first : last + 1] for prefix in ("Describe this video: ", "Hi: ")]
    width = len(rows[0])
    inputs = {**video, "input_ids": torch.tensor([row + [tiny.PAD] * (width - len(row)) for row in rows]),
              "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows]),
              "pixel_values_videos": torch.cat([video["pixel_values_videos"]] * 2)}
    with tokcompress.compress(model, method, ratio=0.3) as handle:
        try:
            scores = logits(model, inputs)
        except tokcompress.PromptRefused as refusal:
            assert PRE_ENCODER in METHODS[method].stages and "end the prompt with text" in str(refusal)
            return
        for b, row in enumerate(rows):
            assert len(row) - 1 in handle.stats.samples[b].kept_positions and scores[b, len(row) - 1].abs().max() > 0.1
        assert handle.stats.samples[0].achieved_ratio < 0.5


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_beam_search_scores_every_hypothesis_as_decoding_it_alone(family, clip, method):
    """Beam scores (raw sums, length_penalty 0) equal teacher-forcing each returned hypothesis by itself: the
    beams reorder the family's cache and the state of each stage a method acts at."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    if not _stock_beam_search_works(family, clip):
        pytest.skip(f"the stock {family} model cannot beam-search a video")
    knobs = {"decode_keep": 0.25, "decode_layer": 1, "reselect_threshold": -1.0} if method == "dycoke" else {}
    with tokcompress.compress(model, method, ratio=0.3, **knobs) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=4, num_beams=3, num_return_sequences=3, do_sample=False, length_penalty=0.0,
            early_stopping=True, output_scores=True, return_dict_in_generate=True,
        )
        assert len(handle.stats.samples) == 1 and handle.stats.samples[0].visual_in == _visual_count(inputs)
        prompt = inputs["input_ids"].shape[1]
        for hypothesis, score in zip(out.sequences[:, prompt:], out.sequences_scores):
            assert _teacher_forced_log_prob(model, inputs, hypothesis) == pytest.approx(float(score), abs=1e-4)


@functools.cache
def _stock_beam_search_works(family: str, clip: torch.Tensor) -> bool:
    """GLM-4V's (transformers 5.23-5.25) cannot: it expands a video's features for the beams by counting
    `video_token_id` in the prompt, which holds image tokens only (its videos' placeholders)."""
    try:
        generate(model_for(family), inputs_for(family, clip, "What is moving?"), max_new_tokens=1, num_beams=2)
    except ValueError:
        return False
    return True


def _visual_count(inputs) -> int:
    return int((inputs["input_ids"][0] == tiny.VIDEO).sum())


def _teacher_forced_log_prob(model, inputs, tokens) -> float:
    out = model(**inputs, use_cache=True)
    mask = inputs["attention_mask"]
    total = 0.0
    for step, token in enumerate(tokens.tolist()):
        total += float(out.logits[0, -1].log_softmax(-1)[token])
        if step + 1 < len(tokens):
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            out = model(input_ids=torch.tensor([[token]]), attention_mask=mask, **cache_kwarg(output_cache(out)))
    return total


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_a_decode_loop_interrupted_by_another_forward_continues_unharmed(family, clip, other_clip, method):
    model = model_for(family)
    first, second = inputs_for(family, clip, "What is moving?"), inputs_for(family, other_clip, "Who is there?")
    with tokcompress.compress(model, method, ratio=0.3), torch.no_grad():
        expected = generate(model, first, max_new_tokens=4)[0].tolist()
        out = model(**first, use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        mask = first["attention_mask"]
        for step in range(3):
            if step == 1:
                generate(model, second, max_new_tokens=2)  # another generation in the middle
                model(**second)
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            out = model(input_ids=torch.tensor([tokens[-1:]]), attention_mask=mask, **cache_kwarg(output_cache(out)))
            tokens.append(int(out.logits[0, -1].argmax()))
    assert tokens == expected


THREADED = ("framededup", "fastv", "dycoke")  # an encoder-side method, an in-LLM one, a pre-LLM + decode one


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method(THREADED))
def test_threads_generating_on_one_patched_model_get_their_own_results(family, clip, other_clip, method):
    """Four threads generate at once on one patched model and each gets what it gets alone. The per-thread state
    is the engine's and the adapters': every family runs it with a method of each stage, and every method on a
    batched and a packed family (the whole cross product cost a seventh of the suite's time)."""
    model = model_for(family)
    prompts = [inputs_for(family, frames, question) for frames in (clip, other_clip) for question in ("What?", "Who?")]
    with tokcompress.compress(model, method, ratio=0.3):
        expected = [generate(model, inputs) for inputs in prompts]
        results: dict[int, list] = {i: [] for i in range(len(prompts))}
        errors: list[BaseException] = []
        start = threading.Barrier(len(prompts))  # all four generate at once

        def run(index):
            try:
                start.wait()
                results[index].append(generate(model, prompts[index]))
            except BaseException as error:  # reported below: a thread's exception would vanish otherwise
                errors.append(error)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    for index, outputs in results.items():
        assert len(outputs) == 1 and torch.equal(outputs[0], expected[index])


@pytest.mark.parametrize("method", ["fastv", "dycoke"])
def test_a_deep_copy_of_a_patched_model_is_a_whole_independent_patch(family, clip, method):
    model = build(family)
    inputs = inputs_for(family, clip, "What is moving?")
    handle = tokcompress.patch(model, method, ratio=0.3)
    expected = generate(model, inputs)
    twin = copy.deepcopy(model)
    twin_handle = twin._tokcompress_handle
    assert twin_handle.patched and twin_handle is not handle and twin_handle.model is twin
    assert torch.equal(generate(twin, inputs), expected)
    assert twin_handle.stats.visual_in == handle.stats.visual_in and twin_handle.stats.decode_steps == 3
    twin_handle.unpatch()
    assert handle.patched and torch.equal(generate(model, inputs), expected)
    unpatched = generate(twin, inputs)
    handle.unpatch()
    assert torch.equal(unpatched, generate(model, inputs))


def test_a_patched_model_survives_torch_save_and_load(family, clip):
    model = build(family)  # saved before its first forward: HF's output-capturing hooks are not picklable
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, "framefusion", ratio=0.3):
        buffer = io.BytesIO()
        torch.save(model, buffer)
        expected = generate(model, inputs)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    handle = loaded._tokcompress_handle
    assert handle.patched and torch.equal(generate(loaded, inputs), expected)
    assert handle.stats.method == "framefusion" and abs(handle.stats.achieved_ratio - 0.3) * handle.stats.visual_in <= 1
    handle.unpatch()


@pytest.mark.parametrize("speculation", [{"prompt_lookup_num_tokens": 2}, {"assistant_model": "self"}])
def test_speculative_decoding_is_refused_while_compressing(clip, speculation):
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    speculation = {k: model if v == "self" else v for k, v in speculation.items()}
    with tokcompress.compress(model, "fastv", ratio=0.3), pytest.raises(ValueError, match="speculative decoding"):
        generate(model, inputs, **speculation)
    if "assistant_model" in speculation:  # (HF's prompt lookup proposes video placeholders: it fails unpatched)
        reference = generate(model, inputs, **speculation)
        with tokcompress.compress(model, "none"):
            assert torch.equal(generate(model, inputs, **speculation), reference)


def test_chunked_prefill_is_refused_while_compressing_and_passes_through_unpatched(family, clip):
    """A chunk holds part of a prompt's video (or of a conversation already cached): refused, naming the fix; under
    'none' the stock chunked prefill runs as it does unpatched."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, "uniform", ratio=0.3), pytest.raises(ValueError, match="prefill_chunk_size"):
        generate(model, inputs, prefill_chunk_size=16)
    try:
        reference = generate(model, inputs, prefill_chunk_size=4096)  # one chunk (some stock models split no video)
    except (ValueError, RuntimeError) as stock_refusal:
        pytest.skip(f"the stock {family} model cannot chunk this prompt: {stock_refusal}")
    with tokcompress.compress(model, "none"):
        assert torch.equal(generate(model, inputs, prefill_chunk_size=4096), reference)


def test_router_logits_are_refused_while_compressing_a_mixture_of_experts(clip):
    """Their load-balancing loss weighs every layer's rows by the whole prompt's mask (the stock function fails on a
    layer that routes only the kept tokens), and a layer's logits would not line up with the prompt: refused, naming
    the fix, on every family with expert MLPs; under 'none' the stock loss and logits come back as unpatched."""

    def routing(output) -> list:
        return [getattr(output, "aux_loss", None), *(getattr(output, "router_logits", None) or ())]

    mixtures = []
    for family in FAMILIES:
        model = model_for(family)
        if not hasattr(adapter_for(model).language_model.config, "output_router_logits"):
            continue
        mixtures.append(family)
        inputs = inputs_for(family, clip, "What is moving?")
        with torch.no_grad():
            reference = routing(model(**inputs, output_router_logits=True))
            with tokcompress.compress(model, "tome", ratio=0.3):
                with pytest.raises(ValueError, match="output_router_logits=False"):
                    model(**inputs, output_router_logits=True)
                assert getattr(model(**inputs), "aux_loss", None) is None  # not asked: compresses as ever
            with tokcompress.compress(model, "none"):
                unpatched = routing(model(**inputs, output_router_logits=True))
        # Nemotron-H Omni's language model computes them, its forward returns none
        assert len(unpatched) == len(reference) > (family != "nemotron_h_omni")
        assert all(a is b is None or torch.equal(a, b) for a, b in zip(unpatched, reference))
    expected = {
        "qwen3_vl_moe", "glm4v_moe", "ernie4_5_vl_moe", "qwen3_omni_moe_thinker", "qwen3_5_moe", "muse_spark",
        "nemotron_h_omni", "kimi_k25", "dots3_note",
    }
    assert set(mixtures) == expected & set(FAMILIES)


def test_right_padded_generate_is_refused_and_a_plain_forward_is_not(clip, other_clip):
    model = model_for("llava_onevision")
    batch = inputs_for("llava_onevision", [clip, other_clip], ["What is moving in this video?", "Who?"])
    right = {**batch}
    right["input_ids"], right["attention_mask"] = _right_padded(batch["input_ids"], batch["attention_mask"])
    with tokcompress.compress(model, "uniform", ratio=0.3):
        with pytest.raises(ValueError, match="padding_side='left'"):
            generate(model, right)
        logits(model, right)


def _right_padded(ids, mask):
    rows = [row[m.bool()] for row, m in zip(ids, mask)]
    padded, new_mask = torch.full_like(ids, tiny.PAD), torch.zeros_like(mask)
    for b, row in enumerate(rows):
        padded[b, : len(row)], new_mask[b, : len(row)] = row, 1
    return padded, new_mask


@pytest.mark.parametrize("method", ["none", "fastv"])
def test_a_placeholder_feature_mismatch_keeps_hfs_own_error(family, clip, method):
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    first_video = int((inputs["input_ids"][0] == tiny.VIDEO).nonzero()[0])
    for name in ("input_ids", "mm_token_type_ids"):  # one placeholder short
        if name in inputs:
            inputs[name] = torch.cat([inputs[name][:, :first_video], inputs[name][:, first_video + 1 :]], dim=1)
    inputs["attention_mask"] = inputs["attention_mask"][:, 1:]
    with pytest.raises(ValueError) as unpatched:
        logits(model, inputs)
    with tokcompress.compress(model, method, ratio=None if method == "none" else 0.3):
        with pytest.raises(ValueError) as patched:
            logits(model, inputs)
    assert str(patched.value) == str(unpatched.value)


def test_an_image_only_prompt_passes_through_and_says_so():
    model = model_for("qwen2_5_vl")
    frame = torch.full((1, 112, 112, 3), 128, dtype=torch.uint8)
    patches, grid = qwen_vl_pixels(frame, 112, 112)
    image = [tiny.VISION_START] + [tiny.IMAGE] * 16 + [tiny.VISION_END]
    ids = torch.tensor([tiny.text_ids("user: ") + image + tiny.text_ids("?")])
    inputs = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": patches, "image_grid_thw": grid,
        "mm_token_type_ids": (ids == tiny.IMAGE).long(),
    }
    reference = logits(model, inputs)
    for method in ("none", "fastv"):
        with tokcompress.compress(model, method, ratio=None if method == "none" else 0.3) as handle:
            assert torch.equal(logits(model, inputs), reference)
            assert "no video tokens" in handle.stats.note


def test_per_layer_outputs_map_back_to_input_positions(family, clip):
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True).hidden_states
    with tokcompress.compress(model, "fastv", ratio=0.75, layer=2) as handle, torch.no_grad():
        reduced = model(**inputs, output_hidden_states=True).hidden_states
        stats = handle.stats
    kept = set(stats.samples[0].kept_positions)
    for layer in range(len(adapter_for(model).layers)):
        positions = stats.positions_at_layer(layer)[0]
        assert reduced[layer + 1].shape[1] == positions.numel()
        visual = {int(p) for p in positions if int(inputs["input_ids"][0, p]) == tiny.VIDEO}
        every = set((inputs["input_ids"][0] == tiny.VIDEO).nonzero().squeeze(1).tolist())
        assert visual == (kept if layer >= 2 else every)
    # layers before the pruning layer saw every token: their outputs are the unpatched ones, position by position
    torch.testing.assert_close(reduced[2][0], full[2][0, stats.positions_at_layer(1)[0]])
    with tokcompress.compress(model, "none") as handle, torch.no_grad():
        model(**inputs)
        identity = handle.stats
    for layer in (-1, len(adapter_for(model).layers)):
        for checked in (stats, identity):
            with pytest.raises(IndexError, match="out of range"):
                checked.positions_at_layer(layer)


def live_tensor_bytes() -> int:
    """Bytes held by every tensor alive that the collector tracks (parameters and buffers included; under
    `objects_made_from_now_on`, the tensors made since), after a collection."""
    gc.collect()
    return sum(o.numel() * o.element_size() for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@contextlib.contextmanager
def objects_made_from_now_on():
    """Leaves every object alive now out of collections and scans (gc.freeze) while the block runs: a scan then
    walks what the block makes, not every model the suite has built (most of a second each)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("method", COMPRESSING)
def test_a_long_running_patch_holds_no_more_memory_with_each_generation(method, clip):
    """A server calls generate again and again: after the first call (lazily built state), the tensors alive
    stay the same, and unpatching lets go of everything the patch held."""
    model = model_for("qwen2_5_vl")
    inputs = inputs_for("qwen2_5_vl", clip, "What is moving?")
    with objects_made_from_now_on():
        generate(model, inputs, max_new_tokens=2)  # the stock model keeps state of its own (its rope deltas)
        stock = live_tensor_bytes()
        with tokcompress.compress(model, method, ratio=0.3):
            generate(model, inputs, max_new_tokens=2)
            first = live_tensor_bytes()
            assert first > stock  # the scan sees what the patch made
            for _ in range(2):
                generate(model, inputs, max_new_tokens=2)
            assert live_tensor_bytes() == first
        generate(model, inputs, max_new_tokens=2)  # its state made anew by the stock model
        assert live_tensor_bytes() == stock


def test_beam_search_on_a_batch_decodes_each_prompt_as_it_would_alone(family, clip, other_clip):
    """Two prompts beam-searched together give each one's beams alone, its positions followed row by row (EXAONE 4.5
    builds a single row of positions, arange(L), for the whole batch)."""
    if not _stock_beam_search_works(family, clip):
        pytest.skip(f"the stock {family} model cannot beam-search a video")
    model = model_for(family)
    videos, questions = [clip, shorter(family, other_clip)], ["What is moving?", "Describe it."]
    with tokcompress.compress(model, "fastv", ratio=0.3):
        together = generate(model, inputs_for(family, videos, questions), max_new_tokens=3, num_beams=2)
        alone = [generate(model, inputs_for(family, v, q), max_new_tokens=3, num_beams=2)[0]
                 for v, q in zip(videos, questions)]
    for row, single in zip(together, alone):
        assert torch.equal(row, single)


@pytest.mark.parametrize("method", ["fastv", "visionzip", "tome"])
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_a_training_forward_scores_only_the_positions_the_llm_computed(family, method, clip, other_clip):
    """labels= with the video's labels masked: a dropped position (the video's last token, say) has zero logits,
    so the label after it - the first text token after the video, live - is not scored; the loss is the
    cross-entropy over the positions computed, gradients flow through the kept tokens, the caller's labels stay."""
    model = model_for(family)
    inputs = inputs_for(family, [clip, shorter(family, other_clip)], ["What is moving?", "Who?"])
    ids = inputs["input_ids"]
    labels = ids.masked_fill((ids == tiny.VIDEO) | (inputs["attention_mask"] == 0), -100)
    given = labels.clone()
    with tokcompress.compress(model, method, ratio=0.3), torch.enable_grad():
        out = model(**inputs, labels=labels)
        out.loss.backward()
    assert torch.equal(labels, given)
    logits, targets = out.logits[:, :-1], labels[:, 1:]
    scored = (targets != -100) & logits.detach().any(dim=-1)
    expected = torch.nn.functional.cross_entropy(logits[scored].float(), targets[scored])
    torch.testing.assert_close(out.loss, expected)
    assert ((targets != -100) & ~logits.detach().any(dim=-1)).any()  # such a label exists: the check means something
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_generate_given_ids_and_embeddings_keeps_every_frame_in_the_tower(clip):
    """generate(input_ids=..., inputs_embeds=...) prefills from the embeddings, which carry no ids to find the
    videos by: nothing is compressed, so the tower must not leave frames out either."""
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    inputs["inputs_embeds"] = model.get_input_embeddings()(inputs["input_ids"])
    options = dict(max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        stock = model.generate(**inputs, **options)
        with tokcompress.compress(model, "framededup", ratio=0.5), pytest.warns(UserWarning, match="inputs_embeds"):
            patched = model.generate(**inputs, **options)
    assert all(torch.equal(a, b) for a, b in zip(patched.logits, stock.logits))
