"""Molmo2's own ways: two decoder builds, a pooler that reads windows of patches by index, one visual block."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine import compat
from tokcompress.engine.encoder import TowerCall

from .conftest import logits, model_for, video_encoder_inputs
from .test_adapters import assert_scores_reproduce_the_attention_map
from .test_tower_attention import saliency_of


def molmo2_inputs(frames, questions, **kwargs) -> dict:
    return tiny.molmo2_inputs(frames, questions, per_video_pooling=compat.MOLMO2_POOLING_PER_VIDEO, **kwargs)


def test_the_molmo2_8b_decoder_scores_with_its_own_attention_map(clip):
    """Pre-norm layers with q and k normed per head (Molmo2-8B, -4B), beside the tiny default's Molmo2-O build."""
    model = tiny.tiny_molmo2(olmo=False, attn_implementation="eager")
    assert_scores_reproduce_the_attention_map(model, molmo2_inputs(clip, "Who?"))


def test_dropping_frames_encodes_only_the_kept_ones_each_with_its_own_windows(clip, other_clip):
    """A batch of two videos: the tower encodes the kept frames only, and each kept frame's tokens read what they
    read when every frame is encoded; dropped frames read zeros."""
    model = model_for("molmo2")
    encoder_args = video_encoder_inputs(molmo2_inputs([clip, other_clip[:6]], ["What?", "Why?"]))
    keep = [torch.tensor([0, 3, 7]), torch.tensor([2, 5])]
    encoded_frames = []
    hook = model.model.vision_tower.register_forward_pre_hook(lambda m, args: encoded_frames.append(len(args[0])))
    try:
        with torch.no_grad():
            full = model.model.get_video_features(**encoder_args).pooler_output
            kept = adapter_for(model).encode_frames(model.model.get_video_features, encoder_args, keep).pooler_output
    finally:
        hook.remove()
    assert encoded_frames == [14, 5]
    for every, some, frames, count in zip(full, kept, keep, (8, 6)):
        every, some = every.view(count, 9, -1), some.view(count, 9, -1)
        dropped = torch.ones(count, dtype=torch.bool)
        dropped[frames] = False
        torch.testing.assert_close(some[frames], every[frames])
        assert not some[dropped].any()


@pytest.mark.parametrize("pooling", [2, 4])
def test_a_tokens_tower_score_is_the_mean_over_its_window_of_patches(clip, pooling):
    """VisionZip's cue: the attention each patch got, averaged over the patches the token's window pools (4 × 4
    windows over the 6 × 6 patches: the grid padded by one on each side, padding left out)."""
    model = model_for("molmo2")
    adapter = adapter_for(model)
    inputs = molmo2_inputs(clip[:4], "What is moving?", pooling=pooling)
    calls = []
    hook = adapter.tower_attention().register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(TowerCall("attention", args, kwargs)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            logits(model, inputs)
    finally:
        hook.remove()
    with torch.no_grad():
        received = adapter.tower_attention_received(calls[0]).view(4, 6, 6)
    cells, margin = -(-6 // pooling), -(-6 // pooling) * pooling - 6
    expected = torch.empty(4, cells, cells)
    for row in range(cells):
        for col in range(cells):
            top, left = max(row * pooling - margin // 2, 0), max(col * pooling - margin // 2, 0)
            bottom, right = (row + 1) * pooling - margin // 2, (col + 1) * pooling - margin // 2
            expected[:, row, col] = received[:, top:bottom, left:right].mean(dim=(1, 2))
    layout = saliency_of("molmo2", inputs=inputs)
    torch.testing.assert_close(layout.saliency.view(4, cells * cells), expected.flatten(1))


def test_a_prompt_with_column_tokens_is_refused_with_the_processor_setting_to_change(clip):
    """`video_use_col_tokens` splits each frame's tokens into rows: the layout says which setting lays them out
    as the model's default processor does; the identity passes such a prompt through as it is."""
    inputs = molmo2_inputs(clip[:2], "What?")
    ids, with_columns = inputs["input_ids"][0].tolist(), []
    while ids:  # each frame's 3 × 3 tokens as rows of 3, each row ending in a column token
        taken = 9 if ids[0] == tiny.VIDEO else 1
        with_columns += ([tiny.VIDEO] * 3 + [tiny.VISION_END]) * 3 if taken == 9 else ids[:1]
        ids = ids[taken:]
    inputs["input_ids"] = torch.tensor([with_columns])
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["mm_token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    with tokcompress.compress(model_for("molmo2"), "framefusion", ratio=0.5), pytest.raises(
        tokcompress.PromptRefused, match="video_use_col_tokens"
    ):
        logits(model_for("molmo2"), inputs)
    expected = logits(model_for("molmo2"), inputs)
    with tokcompress.compress(model_for("molmo2"), "none") as handle:  # the identity passes it through
        assert torch.equal(logits(model_for("molmo2"), inputs), expected)
    assert "passed through untouched" in handle.stats.note and "video_use_col_tokens" in handle.stats.note


def test_a_second_turn_with_a_video_of_its_own_attends_inside_it_both_ways(clip, other_clip):
    """A compressed first turn's cache passed back with a second video: the new chunk attends causally to what
    was kept, and its own visual tokens (with their frames' start and end) to each other both ways, as the stock
    model prefills a chunk that brings images or videos."""
    model = model_for("molmo2")
    first, second = molmo2_inputs(clip[:4], "What is happening here?"), molmo2_inputs(other_clip[:3], "And here?")
    conversation = {key: torch.cat([first[key], second[key]], dim=1)
                    for key in ("input_ids", "attention_mask", "mm_token_type_ids")}
    video_two = {key: second[key] for key in ("pixel_values_videos", "video_token_pooling", "video_grids")}
    with tokcompress.compress(model, "uniform", ratio=0.4) as handle, torch.no_grad():
        cache = compat.output_cache(model(**first, use_cache=True))
        kept = handle.stats.samples[0].kept_positions
        got = model(**conversation, **video_two, **{compat.CACHE_KEYWORD: cache}, use_cache=True).logits[0]
    language_model = adapter_for(model).language_model
    length, ids = first["input_ids"].shape[1], first["input_ids"][0]
    visual = (ids == tiny.VIDEO).nonzero().squeeze(1).tolist()
    survivors = torch.tensor(sorted(set(range(length)) - set(visual) | set(kept)))
    with torch.no_grad():
        embeds = [model.model.get_input_embeddings()(inputs["input_ids"]) for inputs in (first, second)]
        for inputs, embedded in zip((first, second), embeds):
            encoder_args = video_encoder_inputs(inputs)
            features = torch.cat(model.model.get_video_features(**encoder_args).pooler_output)
            embedded[0, inputs["input_ids"][0] == tiny.VIDEO] += features
        blocks = torch.where(first["mm_token_type_ids"][:, survivors] == 1, 0, -1)
        kept_mask = blocks[0][:, None] == blocks[0][None, :]
        prefill_mask = (torch.ones(len(survivors), len(survivors)).tril().bool() | kept_mask & (blocks[0] >= 0))
        reference = DynamicCache(config=language_model.config)
        language_model(inputs_embeds=embeds[0][:, survivors], position_ids=survivors[None], use_cache=True,
                       attention_mask=prefill_mask[None, None], **{compat.CACHE_KEYWORD: reference})
        chunk = second["input_ids"].shape[1]
        vision = second["mm_token_type_ids"][0] == 1
        both_ways = torch.ones(chunk, chunk).tril().bool() | vision[:, None] & vision[None, :]
        mask = torch.cat([torch.ones(chunk, len(survivors), dtype=torch.bool), both_ways], dim=1)
        hidden = language_model(inputs_embeds=embeds[1], position_ids=length + torch.arange(chunk)[None],
                                attention_mask=mask[None, None], **{compat.CACHE_KEYWORD: reference}).last_hidden_state
    torch.testing.assert_close(got[-chunk:], model.lm_head(hidden)[0], rtol=1e-4, atol=1e-5)
