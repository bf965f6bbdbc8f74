"""Encoder-side compression: the vision tower encodes fewer frames, and composes with LLM-side methods."""

from __future__ import annotations

import inspect

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import ADAPTERS, adapter_for
from tokcompress.engine.compat import CACHE_KEYWORD, output_cache
from tokcompress.engine.encoder import EncodedVideos, tokens_encoded
from tokcompress.engine.folding import BATCHED, PACKED
from tokcompress.layout import VisualLayout
from tokcompress.methods import (
    Compose,
    EarlyTom,
    EncoderOnly,
    FastV,
    FrameDedup,
    FrameFusion,
    UniformSample,
    VisionZip,
    build_method,
)
from tokcompress.methods.base import PRE_ENCODER
from tokcompress.stats import CompressionStats, SampleStats

from .conftest import (
    COMPRESSING,
    FAMILIES,
    TINY,
    generate,
    inputs_for,
    logits,
    model_for,
    multimodal,
    shorter,
    video_encoder_inputs,
)


def count_tower_units(model, family):
    """Frame units entering the vision tower's first layer, per call."""
    seen: list[int] = []
    adapter = adapter_for(model)
    if adapter.tower_frames == PACKED:  # one packed sequence of patches: 8 × 8 a grid step, one or two a unit
        first, per_unit = adapter.tower_layers()[0][0], 64 * adapter.temporal_merge
    elif adapter.tower_frames == BATCHED:  # a batch of frames
        first, per_unit = adapter.tower_layers()[0][0], 1
    elif family == "kimi_k25":  # one packed sequence of patches (no folds inside): chunks of 2 frames of 8 × 8
        first, per_unit = adapter.vision_tower.layers[0], 2 * 64
    elif not adapter.has_tower:  # the frames' patches, embedded without a tower (Gemma 4 Unified)
        first, per_unit = adapter.vision_tower, 1
    else:  # a batch of frames among the prompt's images (InternVL, SmolVLM)
        encoder = adapter.vision_tower.encoder
        first, per_unit = (encoder.layers if hasattr(encoder, "layers") else encoder.layer)[0], 1
    # MiniCPM-V: every unit side by side in one row, a frame its source and two slices of 8 × 8 patches
    side_by_side = family in ("minicpmv4_6", "minicpmv4_7")
    rows = (lambda hidden: hidden.shape[1] // (3 * 64)) if side_by_side else (
        lambda hidden: hidden.shape[0] // per_unit)
    hook = first.register_forward_pre_hook(lambda module, args: seen.append(rows(args[0])))
    return seen, hook


def expected_tower_units(family, kept_units: int) -> int:
    """What the tower encodes of the 8-frame clip when a pre-encoder method keeps `kept_units` frame units:
    those, or every frame where the tower encodes before the prompt is read (InternVL)."""
    return kept_units if TINY[family].encoder_side else 8


@pytest.mark.parametrize("run", ["forward", "generate"])
def test_the_tower_encodes_only_the_frames_kept(family, clip, run):
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, "framededup", ratio=0.5) as handle:
        seen, hook = count_tower_units(model, family)
        try:
            logits(model, inputs) if run == "forward" else generate(model, inputs, max_new_tokens=2)
        finally:
            hook.remove()
        (sample,) = handle.stats.samples
    assert seen == [expected_tower_units(family, 8 // TINY[family].frames_per_unit // 2)]
    assert abs(sample.achieved_ratio - 0.5) * sample.visual_in <= TINY[family].tokens_per_unit  # half the frames
    if TINY[family].encoder_side:
        assert sample.encoder_ratio == 0.5 and handle.stats.encoder_seconds > 0
    else:
        assert sample.encoder_ratio == 1.0


def test_identical_frames_are_encoded_once(family, clip):
    model = model_for(family)
    repeated = clip[:1].expand(8, -1, -1, -1).contiguous()
    inputs = inputs_for(family, repeated, "What is in the picture?")
    with tokcompress.compress(model, "framededup", ratio=0.9) as handle:
        seen, hook = count_tower_units(model, family)
        try:
            generate(model, inputs, max_new_tokens=2)
        finally:
            hook.remove()
    (sample,) = handle.stats.samples
    assert seen == [expected_tower_units(family, 1)] and sample.visual_per_layer[0] <= TINY[family].tokens_per_unit + 1
    assert sample.encoder_ratio == (TINY[family].frames_per_unit / 8 if TINY[family].encoder_side else 1.0)


@pytest.mark.parametrize(
    "llm_side", [FrameFusion(ratio=0.3), UniformSample(ratio=0.3), FastV(ratio=0.3), VisionZip(ratio=0.3)]
)
def test_an_encoder_side_method_composes_with_an_llm_side_one(family, clip, other_clip, llm_side):
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, [FrameDedup(), llm_side]) as handle:
        seen, hook = count_tower_units(model, family)
        try:
            generate(model, inputs, max_new_tokens=2)
        finally:
            hook.remove()
        stats = handle.stats
        assert stats.method == f"framededup+{llm_side.name}" and handle.ratio == 0.3
        assert str(stats).startswith(f"framededup+{llm_side.name} @ ratio 0.3 (framededup at 0.5): visual tokens")
        (sample,) = stats.samples
        assert seen == [expected_tower_units(family, 8 // TINY[family].frames_per_unit // 2)]
        assert sample.encoder_ratio == (0.5 if TINY[family].encoder_side else 1.0)
        assert abs(sample.achieved_ratio - 0.3) * sample.visual_in <= 1.0  # the budget keeps its meaning
        handle.ratio = 0.2  # sets the LLM-side member's
        assert handle.method.methods[1].ratio == 0.2 and handle.method.methods[0].ratio == 0.5
        logits(model, inputs)
        assert abs(handle.stats.samples[0].achieved_ratio - 0.2) * sample.visual_in <= 1.0
        # a sample's result does not depend on its batch mates
        short = shorter(family, other_clip)
        batch = inputs_for(family, [clip, short], ["What is moving in this video?", "Who?"])
        together = generate(model, batch, max_new_tokens=3)
        for b, (frames, question) in enumerate(zip([clip, short], ["What is moving in this video?", "Who?"])):
            assert torch.equal(generate(model, inputs_for(family, frames, question), max_new_tokens=3)[0], together[b])


@pytest.mark.parametrize("method", [m for m in COMPRESSING if PRE_ENCODER not in build_method(m).stages])
def test_every_method_reads_the_frames_that_stand_after_frame_dedup(clip, method):
    """A method after a stage that dropped whole frames meets its budget over the frames that stand (PruneVid
    once read the video's full frame count and failed; VidCom² gave dropped frames a token each; PDrop and
    SparseVLM cut from the prompt's count, not the tokens the LLM got, and spent too little)."""
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    with tokcompress.compress(model, [FrameDedup(), build_method(method, ratio=0.3)]) as handle:
        generate(model, inputs, max_new_tokens=2)
        (sample,) = handle.stats.samples
    assert sample.encoder_ratio <= 0.5 and abs(sample.achieved_ratio - 0.3) * sample.visual_in <= 1.0


@pytest.mark.parametrize("method", ["none", "framefusion", "framededup", "earlytom"])
def test_get_video_features_gives_the_stock_tuple_when_asked_for_one(family, clip, method):
    model = model_for(family)
    if not ADAPTERS[family].encoder_side:
        pytest.skip(f"{family}'s frames are images: its video features are not the patch's")
    encode = {**video_encoder_inputs(inputs_for(family, clip, "What is moving?")), "return_dict": False}
    with torch.no_grad():
        stock = multimodal(model).get_video_features(**encode)
        with tokcompress.compress(model, method, ratio=None if method == "none" else 0.5):
            patched = multimodal(model).get_video_features(**encode)
    assert isinstance(patched, tuple) and len(patched) == len(stock)
    if method in ("none", "framefusion"):  # the pre-LLM one leaves the tower alone
        torch.testing.assert_close(patched, stock)


def test_a_composition_at_ratio_one_is_the_identity(family, clip):
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    reference = logits(model, inputs)
    with tokcompress.compress(model, [FrameDedup(ratio=1.0), FrameFusion(ratio=1.0)]):
        assert torch.equal(logits(model, inputs), reference)


def test_a_composition_spelt_as_its_stats_name_builds_it():
    composed = tokcompress.methods.build_method("framededup+framefusion", 0.3)
    assert isinstance(composed, Compose) and composed.name == "framededup+framefusion" and composed.ratio == 0.3
    assert [type(m) for m in composed.methods] == [FrameDedup, FrameFusion] and composed.methods[0].ratio == 0.5
    encoder_side = tokcompress.methods.build_method("earlytom@encoder+fastv")
    assert encoder_side.name == "earlytom@encoder+fastv" and encoder_side.stages == ("in_encoder", "in_llm")
    alone = tokcompress.methods.build_method("earlytom@encoder", 0.4)
    assert alone.name == "earlytom@encoder" and alone.method.ratio == 0.4
    members = Compose([EncoderOnly(EarlyTom(ratio=0.6)), FrameDedup(ratio=0.8), FastV()], 0.3)
    assert members.ratio_note() == "earlytom@encoder at 0.6, framededup at 0.8" and alone.ratio_note() == ""
    with pytest.raises(ValueError, match="unknown method 'fastvv'"):
        tokcompress.methods.build_method("framededup+fastvv")
    with pytest.raises(ValueError, match="framefusion acts at no encoder stage"):
        tokcompress.methods.build_method("framefusion@encoder")
    with pytest.raises(TypeError, match="spell each member's knobs in its name"):
        tokcompress.methods.build_method("framededup+fastv", layer=1)


def test_a_composition_spelt_as_a_name_takes_its_members_knobs_and_ratios():
    """One spelling wherever a method is named by a string (patch, the command line, lmms-eval's method=): each
    member as name:knob=value, its own ratio among its knobs; the budget's holder takes its ratio once."""
    build = tokcompress.methods.build_method
    assert build("uniform:ratio=0.6+fastv:layer=1:scoring=same_layer", 0.3) == Compose(
        [UniformSample(ratio=0.6), FastV(ratio=0.3, layer=1, scoring="same_layer")])
    assert build("uniform:ratio=0.6+fastv:ratio=0.3") == build("uniform:ratio=0.6+fastv", 0.3)  # held by fastv
    assert build("earlytom@encoder:ratio=0.5:max_window=4+fastv", 0.3).methods[0] == EncoderOnly(
        EarlyTom(max_window=4), ratio=0.5)
    assert build("fastv:layer=1", 0.4) == FastV(ratio=0.4, layer=1)  # one method with its knobs, as demo spells it
    assert tokcompress.methods.method_spec("uniform:ratio=0.6+fastv:layer=1") == ("uniform:ratio=0.6+fastv:layer=1", {})
    with pytest.raises(ValueError, match=r"fastv holds the budget .* its ratio came twice \(0.3 in the name, 0.2"):
        build("uniform:ratio=0.6+fastv:ratio=0.3", 0.2)
    with pytest.raises(TypeError, match="fastv got layer both in 'fastv:layer=1' and as keywords"):
        build("fastv:layer=1", layer=2)
    with pytest.raises(TypeError, match="fastv has no knob 'lay'"):
        build("uniform:ratio=0.6+fastv:lay=1")
    with pytest.raises(ValueError, match="name:knob=value.*'fastv:layer'"):
        tokcompress.methods.method_spec("uniform+fastv:layer")
    with pytest.raises(ValueError, match=r"uniform keeps 0.5 .*spelt uniform:ratio=1\)"):  # the fix, as it is spelt
        build("uniform+fastv", 0.5)


def test_compositions_are_refused_when_two_methods_share_a_stage_or_a_list_gets_knobs():
    with pytest.raises(ValueError, match="uniform and tome both act at the pre_llm stage"):
        Compose(methods=(UniformSample(), tokcompress.methods.ToMe()))
    with pytest.raises(TypeError, match="two or more"):
        Compose(methods=(UniformSample(),))
    with pytest.raises(ValueError, match=r"in_llm stage; .*keep flowcut's tower stage alone: flowcut@encoder"):
        tokcompress.methods.build_method("flowcut+fastv")
    assert tokcompress.methods.build_method([UniformSample()], 0.2) == UniformSample(ratio=0.2)  # a list of one
    with pytest.raises(TypeError, match="configure each method in the list"):
        tokcompress.patch(model_for("llava_onevision"), ["framededup", "fastv"], layer=1)


@pytest.mark.parametrize("reader", ["quota", "sttm"])
def test_a_method_reading_whole_frames_after_one_dropping_cells_before_the_llm_is_refused_up_front(reader, clip):
    """Named with the compositions that work: after framededup, or earlytom's tower stage alone."""
    for before, fix in (("earlytom:ratio=0.6", "earlytom@encoder"), ("tome:ratio=0.6", "framededup")):
        with pytest.raises(ValueError, match=f"{reader} needs every cell of each frame .*{fix}"):
            tokcompress.methods.build_method(f"{before}+{reader}", 0.3)
    with tokcompress.compress(model_for("llava_onevision"), f"earlytom@encoder+{reader}", ratio=0.3) as handle:
        logits(model_for("llava_onevision"), inputs_for("llava_onevision", clip, "What is moving?"))
    assert abs(handle.stats.samples[0].achieved_ratio - 0.3) < 0.05


def test_a_budget_above_what_a_frame_dropping_member_keeps_is_refused_up_front():
    """framededup keeps at most its ratio of the frames, and nothing adds tokens back after it: a larger budget
    would silently end near framededup's share, so it is refused - at patch time and when the handle's ratio
    changes - naming both fixes."""
    fix = r"framededup keeps at most 0.5 of the frames .* budget 0.9 .*FrameDedup\(ratio=0.9\).*at most 0.5"
    with pytest.raises(ValueError, match=fix):
        tokcompress.methods.build_method("framededup+framefusion", 0.9)
    with tokcompress.compress(model_for("llava_onevision"), "framededup+framefusion", ratio=0.5) as handle:
        with pytest.raises(ValueError, match=fix):
            handle.ratio = 0.9
        assert handle.ratio == 0.5
    assert Compose([FrameDedup(ratio=0.9), FrameFusion()], 0.9).ratio == 0.9


def test_a_pre_llm_member_keeps_its_own_share_and_leaves_the_in_llm_one_the_rest(clip):
    """[UniformSample(0.6), FastV(0.3)]: 0.6 of the tokens enter the LLM, FastV meets the 0.3 layer average from
    there; a pre-LLM share below the budget would leave FastV nothing to prune, and is refused."""
    model = model_for("llava_onevision")
    inputs = inputs_for("llava_onevision", clip, "What is moving?")
    with tokcompress.compress(model, [UniformSample(ratio=0.6), FastV(ratio=0.3, layer=1)]) as handle:
        generate(model, inputs, max_new_tokens=2)
        (sample,) = handle.stats.samples
    original = sample.visual_in  # before any reduction
    assert abs(sample.visual_per_layer[0] - 0.6 * original) <= 1 and sample.visual_per_layer[-1] < 0.3 * original
    assert abs(sum(sample.visual_per_layer) / len(sample.visual_per_layer) - 0.3 * original) <= 1
    message = r"uniform keeps 0.5 .* budget 0.6 .* \(e.g. UniformSample\(ratio=1\), spelt uniform:ratio=1\)$"
    with pytest.raises(ValueError, match=message):
        tokcompress.patch(model, "uniform+fastv", ratio=0.6)
    with pytest.raises(ValueError, match=r"no more than the budget 0.5 ") as refused:
        tokcompress.patch(model, "uniform+fastv")  # equal shares: FastV would prune nothing either
    assert "@encoder" not in str(refused.value)  # uniform has no encoder stage to keep alone
    composed = build_method("fastv+dycoke", 0.3)  # listed in any order, the in-LLM member holds the budget
    assert [m.ratio for m in composed.methods] == [0.3, 0.5]


@pytest.mark.parametrize("family", [f for f in FAMILIES if TINY[f].encoder_side])
def test_features_encoded_while_patched_can_be_reused_by_later_forwards(family, clip):
    """Features `get_video_features` returned while framededup kept half the frame units carry what it kept: every
    forward handed them (two questions about one video) drops the units the tower skipped, as the forward that
    encodes the pixels itself does - and times the encoding once. Where the encoding needs the prompt to tell its
    units apart (MiniCPM-V), encoded on their own they hold every unit, and each forward chooses from them alike."""
    model = model_for(family)
    adapter = adapter_for(model)
    alone = adapter.encodes_by_prompt  # its encoding called on its own knows no prompt
    inputs = inputs_for(family, clip, "What is moving?")
    if "mm_encoder_outputs" not in inspect.signature(multimodal(model).forward).parameters:
        pytest.skip("its forward takes no pre-encoded features")
    text = {k: v for k, v in inputs.items() if k != adapter.video_pixels}
    with tokcompress.compress(model, "framededup", ratio=0.5) as handle:
        expected = logits(model, inputs)
        with torch.no_grad():
            encoded = multimodal(model).get_video_features(**video_encoder_inputs(inputs), return_dict=True)
        reused = {**text, "mm_encoder_outputs": {adapter.video_modality: encoded}}
        first = logits(model, reused)
        assert handle.stats.encoder_seconds > 0
        second = logits(model, reused)
        (sample,) = handle.stats.samples
        assert handle.stats.encoder_seconds == 0 and sample.encoder_ratio == (1.0 if alone else 0.5)
    torch.testing.assert_close(second, first)
    if not alone:
        torch.testing.assert_close(first, expected)


def test_features_encoded_before_patching_are_chosen_from_before_the_llm(family, clip):
    """Features the tower encoded before the model was patched hold every frame unit: a pre-encoder method chooses
    from them before the LLM, as where the tower encodes before the prompt is read (before, it did nothing)."""
    model = model_for(family)
    adapter = adapter_for(model)
    forward = adapter.multimodal_model.forward
    if "mm_encoder_outputs" not in inspect.signature(forward).parameters or not adapter.encodes_videos:
        pytest.skip("its forward takes no pre-encoded video features")
    if family == "nemotron_h_omni":
        pytest.skip("nothing but its pixels tells a tubelet's grid: refused (test_nemotron_h_omni.py)")
    inputs = inputs_for(family, clip, "What is moving?")
    with torch.no_grad():
        encoded = multimodal(model).get_video_features(**video_encoder_inputs(inputs), return_dict=True)
    text = {k: v for k, v in inputs.items() if k != adapter.video_pixels}
    with tokcompress.compress(model, "framededup", ratio=0.5) as handle:
        logits(model, {**text, "mm_encoder_outputs": {adapter.video_modality: encoded}})
        (sample,) = handle.stats.samples
    assert 0 < sample.achieved_ratio * sample.visual_in <= 0.5 * sample.visual_in + TINY[family].tokens_per_unit
    assert sample.encoder_ratio == 1.0  # a cap, met to within a frame unit: a static clip dedups below it


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision1_5"])
def test_tower_geometry_precomputed_for_every_frame_gives_way_when_frames_are_dropped(family, clip):
    """A caller may hand the tower its segments, rotary positions (or LLaVA-OV-1.5's frame lengths) computed ahead
    for the whole clip (transformers' `video_`-prefixed keywords): with half the frames skipped the tower computes
    them for what it encodes, and the logits are those without them."""
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

    if family not in TINY:
        pytest.skip("transformers 5.25+")
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    grid = inputs["video_grid_thw"]
    merge = model.config.vision_config.spatial_merge_size
    geometry = {"video_cu_seqlens": get_vision_cu_seqlens(grid),
                "video_position_ids": get_vision_position_ids(grid, merge)}
    if family == "llava_onevision1_5":
        geometry = {"video_frame_lengths": [int(grid[0, 1] * grid[0, 2])] * int(grid[0, 0])}
    with tokcompress.compress(model, "framededup", ratio=0.5) as handle:
        expected = logits(model, inputs)
        torch.testing.assert_close(logits(model, {**inputs, **geometry}), expected, rtol=0, atol=0)
        assert handle.stats.samples[0].encoder_ratio == 0.5


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision", "exaone4_5"])
def test_reused_features_are_scored_by_their_own_encodings_tower_attention(family, clip, other_clip):
    """VisionZip ranks a video's tokens by the tower's attention on it: features reused after another video was
    encoded still get their own encoding's (the calls travel with them), once - a second reuse is refused, naming
    why, rather than scored with what another encoding left."""
    model = model_for(family)
    adapter = adapter_for(model)
    first, second = (inputs_for(family, frames, "What is moving?") for frames in (clip, other_clip))
    text = {k: v for k, v in first.items() if k != adapter.video_pixels}
    with tokcompress.compress(model, "visionzip", ratio=0.3) as handle:
        expected = logits(model, first)
        kept = handle.stats.samples[0].kept_positions
        with torch.no_grad():
            encoded = multimodal(model).get_video_features(**video_encoder_inputs(first), return_dict=True)
            multimodal(model).get_video_features(**video_encoder_inputs(second), return_dict=True)
        reused = {**text, "mm_encoder_outputs": {adapter.video_modality: encoded}}
        torch.testing.assert_close(logits(model, reused), expected)
        assert handle.stats.samples[0].kept_positions == kept
        with pytest.raises(RuntimeError, match="an earlier forward already read"):
            logits(model, reused)


@pytest.mark.parametrize("method", ["framededup", "earlytom"])
def test_features_a_method_left_frames_out_of_are_refused_where_no_prefill_drops_them(clip, other_clip, method):
    """Nothing removes the zeros (or copies) a frame-dropping (or folding) encoding left in the features at ratio 1,
    nor in a call continuing a cache: refused, not read."""
    model = model_for("qwen2_5_vl")
    inputs = inputs_for("qwen2_5_vl", clip, "What is moving?")
    text = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
    still = clip[:1].expand(8, -1, -1, -1).contiguous()  # frames a method surely leaves out or folds
    with tokcompress.compress(model, method, ratio=0.5) as handle:
        with torch.no_grad():
            video = video_encoder_inputs(inputs_for("qwen2_5_vl", still, "What is moving?"))
            encoded = multimodal(model).get_video_features(**video, return_dict=True)
            first = model.generate(**inputs_for("qwen2_5_vl", other_clip, "Who?"), max_new_tokens=2,
                                   do_sample=False, return_dict_in_generate=True)
        with pytest.raises(ValueError, match="zeros or copies in their place.*continues a cache.*encode the video"):
            ids = torch.cat([first.sequences, text["input_ids"]], dim=1)
            types = torch.nn.functional.pad(text["mm_token_type_ids"], (first.sequences.shape[1], 0))
            logits(model, {**text, "input_ids": ids, "mm_token_type_ids": types, "attention_mask": torch.ones_like(ids),
                           "mm_encoder_outputs": {"video": encoded}, CACHE_KEYWORD: output_cache(first)})
        handle.ratio = 1.0
        with pytest.raises(ValueError, match="zeros or copies in their place.*ratio 1.*encode the video again"):
            logits(model, {**text, "mm_encoder_outputs": {"video": encoded}})


# generate encodes a call's videos up front (its own stand-in on most families; by the prompt on MiniCPM-V, Kimi)
@pytest.mark.parametrize(
    "family", ["llava_onevision", "qwen2_5_vl", *(f for f in FAMILIES if ADAPTERS[f].encodes_by_prompt)]
)
def test_a_later_turn_bringing_a_video_has_the_tower_encode_it_whole(family, clip, other_clip):
    """A second turn's video continues the cache, so no prefill follows to drop what the tower skipped: the tower
    encodes every frame unit of it (turn one's, half), and the stats count its tokens as not compressed."""
    model = model_for(family)
    first_turn, second_turn = (inputs_for(family, frames, "What is moving?") for frames in (clip, other_clip))
    with tokcompress.compress(model, "framededup", ratio=0.5) as handle, torch.no_grad():
        seen, hook = count_tower_units(model, family)
        try:
            first = model.generate(**first_turn, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                                   suppress_tokens=list(range(tiny.IMAGE, tiny.VOCAB)))
            ids = torch.cat([first.sequences, second_turn["input_ids"]], dim=1)
            follow_up = {**second_turn, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if "mm_token_type_ids" in follow_up:  # the stock model reads only the new video as video
                follow_up["mm_token_type_ids"] = torch.nn.functional.pad(
                    second_turn["mm_token_type_ids"], (first.sequences.shape[1], 0)
                )
            with pytest.warns(UserWarning, match="not compressed"):
                model.generate(**follow_up, max_new_tokens=2, do_sample=False, **{CACHE_KEYWORD: output_cache(first)})
        finally:
            hook.remove()
    units = 8 // TINY[family].frames_per_unit
    assert seen == [units // 2, units]
    assert handle.stats.later_visual == int((second_turn["input_ids"] == tiny.VIDEO).sum())


def test_the_towers_share_of_work_weighs_each_video_by_its_tokens():
    """`encoder_ratio` is the share of the tower's token-layers computed: one of a small video's four units and
    both of a large one's are 36 of 48 unit-tokens (not 3 of 6 units); a row without video did all of its none; a
    batch weighs its samples by their visual tokens."""
    small_and_large = VisualLayout.from_videos([0, 16], [(4, 2, 2), (2, 4, 4)])
    no_video = VisualLayout.from_videos([], [])
    record = EncodedVideos(units=[4, 2], keep=[torch.tensor([0]), torch.tensor([0, 1])])
    (kept, share), (nothing, whole) = tokens_encoded(record, [small_and_large, no_video], 1)
    assert share == 36 / 48 and len(kept) == 4 + 32 and whole == 1.0 and len(nothing) == 0
    stats = CompressionStats("framededup", 0.5, samples=[SampleStats(48, [], encoder_ratio=0.75),
                                                          SampleStats(16, [], encoder_ratio=0.25)])
    assert stats.encoder_ratio == (0.75 * 48 + 0.25 * 16) / 64
    assert CompressionStats("framededup", 0.5, samples=[SampleStats(0, [], encoder_ratio=1.0)]).encoder_ratio == 1.0


@pytest.mark.parametrize("method", ["none", "fastv", "framededup"])
@pytest.mark.parametrize("family", [f for f in ("internvl", "smolvlm", "llava_onevision") if f in FAMILIES])
def test_the_vision_towers_time_is_in_the_stats_whichever_encoder_reads_the_frames(family, method, clip):
    """InternVL and SmolVLM encode a video's frames as images: their tower's time counts as any tower's, in a
    forward and in generate, compressing or not."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, method, ratio=None if method == "none" else 0.5) as handle:
        logits(model, inputs)
        assert handle.stats.encoder_seconds > 0
        generate(model, inputs, max_new_tokens=2)
        assert handle.stats.encoder_seconds > 0
