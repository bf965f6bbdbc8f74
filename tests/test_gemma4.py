"""Gemma 4: in-LLM pruning against its layers run by hand (Gemma 4 Unified's decoder too), its KV sharing, vision
blocks and frame grids."""

from __future__ import annotations

import functools
import gc
import weakref

import pytest
import torch
from transformers.masking_utils import create_masks_for_generate
from transformers.models.gemma4.modeling_gemma4 import create_masks_for_vision_model, get_block_sequence_ids_for_mask

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine import compat
from tokcompress.methods import EarlyTom, FlowCut, VidTLDR

from .conftest import COMPRESSING, generate, logits, model_for, video_encoder_inputs


def _masks(language_model, embeds, types):
    """A Gemma 4 decoder's masks per layer type: vision blocks attending both ways in sliding layers (Gemma 4), or in
    every layer (Gemma 4 Unified's forward)."""
    blocks = get_block_sequence_ids_for_mask(types, embeds.device)
    if language_model.config.model_type == "gemma4_unified_text":
        return create_masks_for_generate(language_model.config, embeds, None, None, None, block_sequence_ids=blocks)
    return create_masks_for_vision_model(language_model.config, embeds, None, None, None, blocks)


@pytest.mark.parametrize("family", ["gemma4", "gemma4_unified"])
@pytest.mark.parametrize(("layer", "ratio"), [(1, 0.7), (2, 0.7), (4, 0.9)])  # 4: the first that stores KV
def test_in_llm_pruning_matches_the_layers_run_by_hand_on_what_each_keeps(family, clip, layer, ratio):
    """FastV dropping tokens before `layer`: the layers before it see every token, those from it on - and the
    layers sharing the KV of the last ones that store it - only the kept ones, each with its layer type's rotary
    table, its per-layer input (Gemma 4; Unified has none) and its mask (a window in sliding layers, vision blocks)."""
    model = model_for(family)
    inputs = tiny.video_inputs(model, clip, "What is moving?")
    with tokcompress.compress(model, "fastv", ratio=ratio, layer=layer) as handle:
        patched = logits(model, inputs)[:, -1]
        kept = handle.stats.samples[0].kept_positions
    language_model = adapter_for(model).language_model
    call = {}
    hook = language_model.register_forward_pre_hook(lambda module, args, kwargs: call.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    is_visual = inputs["input_ids"][0] == tiny.VIDEO
    survivors = ~is_visual
    survivors[kept] = True
    assert 0 < len(kept) < int(is_visual.sum())
    config = language_model.config
    with torch.no_grad():
        hidden, positions = call["inputs_embeds"], torch.arange(is_visual.numel())[None]
        per_layer = call.get("per_layer_inputs")
        per_layer = None if per_layer is None else language_model.project_per_layer_inputs(hidden, per_layer)
        masks = _masks(language_model, hidden, inputs["mm_token_type_ids"])
        shared = {}
        for index, decoder_layer in enumerate(language_model.layers):
            if index == layer:
                hidden, positions = hidden[:, survivors], positions[:, survivors]
                per_layer = None if per_layer is None else per_layer[:, survivors]
                masks = _masks(language_model, hidden, inputs["mm_token_type_ids"][:, survivors])
            kind = config.layer_types[index]
            rotary = language_model.rotary_emb(hidden, positions, kind)
            hidden = decoder_layer(
                hidden, *([] if per_layer is None else [per_layer[:, :, index]]), shared_kv_states=shared,
                position_embeddings=rotary, attention_mask=masks[kind], position_ids=positions,
            )
        expected = model.lm_head(language_model.norm(hidden[:, -1]))
    torch.testing.assert_close(patched, expected, rtol=1e-4, atol=1e-5)


def test_reductions_act_before_the_layers_that_store_kv_for_sharing(clip):
    """The ratio is averaged over the layers that hold every prompt token (the first storing layer and those before
    it); the layers that read another's KV follow the last of them, and decoding selects only in global layers that
    cache every token."""
    model = model_for("gemma4")
    adapter = adapter_for(model)
    assert adapter.language_model.config.kv_sharing_modes == [None] * 4 + ["store"] * 2 + ["reuse"] * 2
    assert adapter.spec.num_layers == 5
    assert [adapter.kv_source(i) for i in range(8)] == [0, 1, 2, 3, 4, 5, 4, 5]
    assert adapter.kv_layers == {1, 3, 5}  # global; sliding layers keep a window, 6 and 7 read 4's and 5's
    inputs = tiny.video_inputs(model, clip, "What is moving?")
    with tokcompress.compress(model, "pdrop", ratio=0.3) as handle:
        generate(model, inputs, max_new_tokens=2)
        (sample,) = handle.stats.samples
    assert len(sample.visual_per_layer) == 5
    assert abs(sample.achieved_ratio - 0.3) * sample.visual_in <= 1.0


@pytest.mark.parametrize("method", [FlowCut(ratio=0.3), VidTLDR(ratio=0.3)], ids=["flowcut", "vidtldr"])
def test_tokens_fold_in_its_tower_without_its_padding_and_each_video_as_if_alone(method, clip, other_clip):
    """Two videos of different sizes in one tower call (36 and 24 real patches a frame, each padded to 48): from
    layer 1 on every frame holds as many tokens as the larger video kept, the smaller one's fillers masked as keys;
    each kept token keeps its patch position and rotary row; each video's features are those it gets alone."""
    model = model_for("gemma4")
    adapter = adapter_for(model)
    videos, sizes = [clip, other_clip[:4]], [(96, 96), (64, 96)]
    both = video_encoder_inputs(tiny.gemma4_inputs(videos, ["What?", "Why?"], sizes=sizes))
    seen = {}
    layer = adapter.tower_layers()[0][1]
    with tokcompress.compress(model, method), torch.no_grad():
        hooks = [
            layer.register_forward_pre_hook(lambda m, a, k: seen.update(k, hidden=a[0]), with_kwargs=True),
            layer.self_attn.register_forward_pre_hook(lambda m, a, k: seen.update(mask=k["attention_mask"]),
                                                      with_kwargs=True),
        ]
        features = model.model.get_video_features(**both).pooler_output
        for hook in hooks:
            hook.remove()
        alone = [
            model.model.get_video_features(**video_encoder_inputs(tiny.gemma4_inputs(video, "What?", sizes=[size])))
            .pooler_output[0]
            for video, size in zip(videos, sizes)
        ]
    kept = [int(n) for n in (seen["mask"][:, 0, 0].isfinite().sum(dim=1)[[0, 8]])]
    assert seen["hidden"].shape[:2] == (12, max(kept)) and kept[1] < kept[0] < 36
    assert seen["mask"][8:, ..., kept[1]:].isneginf().all() and seen["mask"][:8].isfinite().all()
    positions = seen["position_ids"]
    for frame, count in ((0, kept[0]), (8, kept[1])):  # real patches, each once, from the frame's own
        real = positions[frame, :count]
        assert (real >= 0).all() and len(real.unique(dim=0)) == count
        assert set(map(tuple, real.tolist())) <= set(map(tuple, both["video_position_ids"][frame].tolist()))
    rotary = adapter.vision_tower.encoder.rotary_emb(seen["hidden"], positions)
    for table, expected in zip(seen["position_embeddings"], rotary):
        torch.testing.assert_close(table, expected)
    for batched, single in zip(features, alone):
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method", [EarlyTom(ratio=0.3), VidTLDR(ratio=0.3), FlowCut(ratio=0.3)], ids=str)
def test_videos_of_two_sizes_in_one_tower_call_fold_as_if_encoded_alone(method, dtype, clip, other_clip):
    """Frames folded (each frame keeping its own patch positions and padding mask) or tokens (fillers masked) in a
    call of a 96 × 96 and a 64 × 96 video: each video gets the features it gets alone - in bf16 too, to rounding."""
    model = model_for("gemma4") if dtype == torch.float32 else tiny.tiny_gemma4().to(dtype)
    videos, sizes = [clip, other_clip[:4]], [(96, 96), (64, 96)]

    def features(frames, frame_sizes):
        inputs = video_encoder_inputs(tiny.gemma4_inputs(frames, ["What?"] * len(frames), sizes=frame_sizes))
        return model.model.get_video_features(**{**inputs, "pixel_values_videos": inputs["pixel_values_videos"]
                                                 .to(dtype)}).pooler_output

    with tokcompress.compress(model, method), torch.no_grad():
        rows = []
        hook = adapter_for(model).tower_layers()[0][-1].register_forward_pre_hook(
            lambda module, args: rows.append(args[0].shape[0]))
        together = features(videos, sizes)
        hook.remove()
        alone = [features([video], [size])[0] for video, size in zip(videos, sizes)]
    assert rows[0] < 12 if isinstance(method, EarlyTom) else rows[0] == 12  # frames folded, or tokens
    tolerance = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    for batched, single in zip(together, alone):
        assert batched.isfinite().all()
        torch.testing.assert_close(batched, single, **tolerance)


def test_a_flash_tower_refuses_videos_of_two_sizes_before_it_runs(clip, other_clip, monkeypatch):
    """Tokens folded in videos of different sizes leave some frames fillers that flash attention cannot mask: the
    call is refused before the tower's first layer runs, with the fix."""
    model = model_for("gemma4")
    adapter = adapter_for(model)
    inputs = video_encoder_inputs(tiny.gemma4_inputs([clip, other_clip], ["What?"] * 2, sizes=[(96, 96), (64, 96)]))
    ran = []
    with tokcompress.compress(model, FlowCut(ratio=0.3)), torch.no_grad():
        monkeypatch.setattr(adapter.vision_tower.config, "_attn_implementation", "flash_attention_2")
        hook = adapter.tower_layers()[0][0].register_forward_pre_hook(lambda module, args: ran.append(True))
        with pytest.raises(ValueError, match="cannot mask: load the tower with attn_implementation='sdpa'"):
            model.model.get_video_features(**inputs)
        hook.remove()
    assert not ran


def test_frames_attend_both_ways_only_where_the_config_says_vision(clip):
    """Blocks follow `mm_token_type_ids` (one per frame), and none without the config's "vision" (E2B-like)."""
    model = model_for("gemma4")
    inputs = tiny.video_inputs(model, clip[:2], "What?")
    blocks = adapter_for(model).attention_blocks(inputs)
    frames = [blocks[0, inputs["input_ids"][0] == tiny.VIDEO][i * 9 : (i + 1) * 9].unique().tolist() for i in range(2)]
    assert frames == [[0], [1]] and int((blocks >= 0).sum()) == 18
    causal = tiny.tiny_gemma4()
    causal.config.text_config.use_bidirectional_attention = None
    assert adapter_for(causal).attention_blocks(inputs) is None
    causal.config.text_config.use_bidirectional_attention = "all"
    with pytest.raises(ValueError, match="encoder"):
        tokcompress.patch(causal, "fastv", ratio=0.5)


def test_frames_of_any_shape_and_beams_under_generate(clip, other_clip):
    """Non-square frames (64 × 128 px: 2 × 4 tokens) beside square ones; `generate` encodes up front and drops the
    patch positions, so the grids noted on the features must follow its beams."""
    model = model_for("gemma4")
    inputs = tiny.gemma4_inputs([clip, other_clip[:4]], ["What?", "Who?"], sizes=[(64, 128), (96, 96)])
    layouts = adapter_for(model).visual_layouts(inputs)
    assert [layout.grids for layout in layouts] == [((8, 2, 4),), ((4, 3, 3),)]
    with tokcompress.compress(model, "framefusion", ratio=0.4) as handle:
        beams = generate(model, inputs, max_new_tokens=3, num_beams=2)
        assert [s.visual_in for s in handle.stats.samples] == [64, 36]
    singles = []
    for frames, question, size in [(clip, "What?", (64, 128)), (other_clip[:4], "Who?", (96, 96))]:
        with tokcompress.compress(model, "framefusion", ratio=0.4):
            one = tiny.gemma4_inputs(frames, question, sizes=[size])
            singles.append(generate(model, one, max_new_tokens=3, num_beams=2)[0])
    assert torch.equal(beams, torch.stack(singles))


SPECIAL_IDS = list(range(tiny.VOCAB, tiny.VOCAB + 11))  # generated text stays text: a prefill of it reads the same


def test_a_decode_step_reads_what_a_prefill_of_the_whole_sequence_reads(clip):
    """ToMe's merged tokens inside a sliding layer's window keep their log(size) while decoding (the window's mask
    columns are the cache's last keys), and a three-turn chat of a left-padded batch, each turn fed whole, counts
    the tokens it fed (the LM returns the last one only after KV sharing): each step's logits are those of a prefill
    of everything so far."""
    model = model_for("gemma4")
    options = dict(do_sample=False, suppress_tokens=SPECIAL_IDS, output_logits=True, return_dict_in_generate=True)

    def whole(inputs, ids):  # the same prompt and everything since, as one prefill
        mask = torch.cat([inputs["attention_mask"], torch.ones(len(ids), ids.shape[1] - inputs["input_ids"].shape[1],
                                                               dtype=torch.long)], dim=1)
        return dict(inputs, input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == tiny.VIDEO).long() * 2)

    single = tiny.video_inputs(model, clip, "?")
    with tokcompress.compress(model, "tome", ratio=0.5), torch.no_grad():
        out = model.generate(**single, max_new_tokens=2, **options)
        expected = model(**whole(single, out.sequences[:, :-1])).logits[:, -1]
    torch.testing.assert_close(out.logits[1], expected, rtol=1e-4, atol=1e-4)
    batch = tiny.video_inputs(model, [clip, clip[:4]], ["What is moving?", "Who?"])
    with tokcompress.compress(model, "uniform", ratio=0.3), torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, **options)
        for _ in range(2):
            text = torch.tensor([tiny.text_ids("\nuser: and then?\nassistant:")] * 2)
            ids = torch.cat([out.sequences, text], dim=1)
            turn = whole(batch, ids)
            out = model.generate(input_ids=ids, attention_mask=turn["attention_mask"],
                                 mm_token_type_ids=turn["mm_token_type_ids"], max_new_tokens=2,
                                 **{compat.CACHE_KEYWORD: compat.output_cache(out)}, **options)
            torch.testing.assert_close(out.logits[0], model(**turn).logits[:, -1], rtol=1e-4, atol=1e-4)


def test_the_layers_sharing_kv_get_explicit_masks_when_they_compute_the_last_tokens_only(clip):
    """With padding the model's own masks are tensors and its sharing layers compute only the `logits_to_keep`
    last tokens: their mask rows must be those tokens' (sdpa's is_causal would align them to the first keys)."""
    model = model_for("gemma4")
    inputs = tiny.video_inputs(model, clip, "What is moving?")
    ids = torch.cat([torch.tensor([[tiny.PAD]]), inputs["input_ids"]], dim=1)  # one pad: the model's masks are tensors
    mask = torch.cat([torch.zeros(1, 1, dtype=torch.long), inputs["attention_mask"]], dim=1)
    inputs = dict(inputs, input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == tiny.VIDEO).long() * 2)
    with tokcompress.compress(model, "fastv", ratio=0.5, layer=2), torch.no_grad():
        full = model(**inputs).logits[:, -3:]
        kept = model(**inputs, logits_to_keep=3).logits
    torch.testing.assert_close(kept, full, rtol=1e-4, atol=1e-5)


def test_a_generation_keeps_nothing_the_prefill_gathered_for_its_layers(clip):
    """The cache keeps the generation's state alive; the per-layer inputs gathered at the kept tokens for the
    prefill's layers must not live on with it."""
    model = model_for("gemma4")
    gathered = []
    with tokcompress.compress(model, "fastv", ratio=0.5, layer=2):
        hook = adapter_for(model).layers[3].register_forward_pre_hook(  # after the patch's: what it hands the layer
            lambda module, args: gathered.append(weakref.ref(args[1])) if not gathered else None
        )
        try:
            out = model.generate(**tiny.video_inputs(model, clip, "What?"), max_new_tokens=2, do_sample=False,
                                 return_dict_in_generate=True)
        finally:
            hook.remove()
        gc.collect()
        assert compat.output_cache(out) is not None and gathered[0]() is None


def test_decoding_counts_the_layers_that_read_a_selection_through_shared_kv(clip):
    """dycoke selecting from layer 4: of the layers caching every token - the global ones, 1, 3, 5 and 7 (which
    reads 5's keys) - 5 and 7 read the selection; the sliding layers, whose caches hold the last tokens only, are no
    part of the share."""
    model = model_for("gemma4")
    with tokcompress.compress(model, "dycoke", ratio=0.5, decode_layer=4, decode_keep=0.25) as handle:
        generate(model, tiny.video_inputs(model, clip, "What is moving?"), max_new_tokens=3)
        (sample,) = handle.stats.samples
    read = round(0.25 * sample.visual_out) / sample.visual_out
    assert sample.decode_read_ratio == pytest.approx((2 + 2 * read) / 4)


def test_the_large_builds_run_every_method(clip, other_clip):
    """26B-A4B / 31B (`tiny.GEMMA4_LARGE`): global layers with their own head size, one KV head and keys as values,
    experts, no per-layer inputs, no sharing. Scores read the global layers' own attention and values; ratio 1 is
    exact; every
    method keeps a batch's answers those of each prompt alone."""
    model = tiny.tiny_gemma4(attn_implementation="eager", **tiny.GEMMA4_LARGE)
    adapter = adapter_for(model)
    assert adapter.spec.num_layers == 8 and adapter.kv_layers == {1, 3, 5, 7}
    single = tiny.video_inputs(model, clip, "What is moving?")
    layer, seen = adapter.layers[1], {}
    hook = layer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs, hidden=args[0]), with_kwargs=True
    )
    with torch.no_grad():
        output = model(**single, output_attentions=True, use_cache=True)
    hook.remove()
    hidden, (cos, sin) = seen["hidden"][0], (table[0] for table in seen["position_embeddings"])
    with torch.no_grad():
        queries, keys = adapter.project_queries(layer, hidden, cos, sin), adapter.project_keys(layer, hidden, cos, sin)
        values = adapter.project_values(layer, hidden)  # the keys' projection, normed without scale
    assert queries.shape[-1] == 32 and len(keys) == 1
    torch.testing.assert_close(values, output.past_key_values.layers[1].values[0])
    scores = (queries @ keys.transpose(1, 2) / 32**0.5).masked_fill(torch.ones(len(hidden), len(hidden)).triu(1) > 0,
                                                                      float("-inf"))
    torch.testing.assert_close(scores.softmax(-1), output.attentions[1][0])
    with tokcompress.compress(model, "fastv", ratio=1.0):
        assert torch.equal(logits(model, single), output.logits)
    pair = tiny.video_inputs(model, [clip, other_clip[:4]], ["What is moving?", "Who?"])
    alone = tiny.video_inputs(model, other_clip[:4], "Who?")
    for method in COMPRESSING:
        with tokcompress.compress(model, method, ratio=0.3):
            answers = generate(model, pair, max_new_tokens=3)[:, -3:]
            expected = [generate(model, inputs, max_new_tokens=3)[0, -3:] for inputs in (single, alone)]
        assert torch.equal(answers, torch.stack(expected)), method


def test_the_command_line_loads_a_saved_checkpoint(tmp_path, monkeypatch):
    """`tokcompress run --model` loads Gemma 4 as an image-text-to-text model, weights as saved."""
    from transformers import AutoProcessor

    from tokcompress import cli

    model = model_for("gemma4")
    model.save_pretrained(tmp_path)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda path: "its processor")
    loaded, processor = cli.load_checkpoint(str(tmp_path))
    assert loaded.config.model_type == "gemma4" and processor == "its processor"
    expected = model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())


def test_a_videos_audio_track_reaches_every_layer_whatever_the_method(clip):
    """E2B / E4B hear as well: with an audio span after the video, ratio 1 is exact, and every method compresses
    the video's tokens only - each audio token reaches the last layer, entering the LLM as the audio tower made it."""
    model = tiny.tiny_gemma4(audio=True)
    adapter = adapter_for(model)
    inputs = tiny.gemma4_inputs(clip[:4], "What is happening?", audio_frames=32)
    audio = (inputs["input_ids"][0] == tiny.AUDIO).nonzero().squeeze(1)
    assert len(audio) == 8

    def first_layer_input() -> torch.Tensor:  # hooked after the patch's own hooks: what layer 0 really gets
        seen = []
        hook = adapter.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0][0]))
        try:
            logits(model, inputs)
        finally:
            hook.remove()
        return seen[0]

    reference, stock = logits(model, inputs), first_layer_input()[audio]
    with tokcompress.compress(model, "fastv", ratio=1.0):
        assert torch.equal(logits(model, inputs), reference)
    for method in COMPRESSING:
        with tokcompress.compress(model, method, ratio=0.3) as handle:
            hidden = first_layer_input()
            stats = handle.stats
        first, last = (stats.positions_at_layer(layer)[0] for layer in (0, len(adapter.layers) - 1))
        assert stats.achieved_ratio < 0.5 and set(audio.tolist()) <= set(last.tolist()), method
        torch.testing.assert_close(hidden[torch.searchsorted(first, audio)], stock, msg=method)


@pytest.mark.parametrize("whole_conversation", [True, False])  # as generate feeds it, or only its new tokens
def test_a_second_turn_with_a_video_of_its_own_attends_inside_each_frame_both_ways(clip, other_clip,
                                                                                    whole_conversation):
    """A compressed first turn's cache passed back with a second video: the chunk continues from the first turn's
    original positions; in the sliding layers each of the new frames' tokens attends to the others of its frame
    both ways (as the stock prefill of that chunk), not to another frame's later ones; the global layers stay
    causal."""
    model = model_for("gemma4")
    first, second = tiny.gemma4_inputs(clip[:4], "What?"), tiny.gemma4_inputs(other_clip[:3], "And here?")
    conversation = {key: torch.cat([first[key], second[key]], dim=1) if whole_conversation else second[key]
                    for key in ("input_ids", "attention_mask", "mm_token_type_ids")}
    video_two = {key: second[key] for key in ("pixel_values_videos", "video_position_ids", "num_frames_per_video")}
    masks = {}
    layers = adapter_for(model).layers
    def note_mask(index, module, args, kwargs):
        masks.setdefault(index, kwargs["attention_mask"])

    hooks = [layers[index].register_forward_pre_hook(functools.partial(note_mask, index), with_kwargs=True)
             for index in (0, 1)]  # a sliding layer, a global one
    hooks.append(adapter_for(model).language_model.register_forward_pre_hook(
        lambda module, args, kwargs: masks.update(positions=kwargs["position_ids"]), with_kwargs=True))
    try:
        with tokcompress.compress(model, "uniform", ratio=0.4), torch.no_grad():
            cache = compat.output_cache(model(**first, use_cache=True))
            masks.clear()
            model(**conversation, **video_two, **{compat.CACHE_KEYWORD: cache}, use_cache=True)
    finally:
        for hook in hooks:
            hook.remove()
    chunk, length = second["input_ids"].shape[1], first["input_ids"].shape[1]
    # it continues from the first turn's original positions, not from its compressed cache's length
    assert masks["positions"].tolist() == [list(range(length, length + chunk))]
    frames = (second["input_ids"][0] == tiny.VIDEO).nonzero().squeeze(1).view(3, -1)
    for index, both_ways in ((0, True), (1, False)):
        rows = masks[index][0, 0, :, -chunk:]  # the chunk's queries over its own keys
        first_frame, next_frame = frames[0], frames[1]
        assert bool(rows[first_frame[0], first_frame[-1]]) == both_ways
        assert not rows[first_frame[-1], next_frame[0]]
