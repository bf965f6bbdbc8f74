"""Gemma 4: in-LLM pruning against its layers run by hand, its KV sharing, vision blocks and frame grids."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gemma4.modeling_gemma4 import create_masks_for_vision_model, get_block_sequence_ids_for_mask

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for

from .conftest import COMPRESSING, generate, logits, model_for


def _masks(language_model, embeds, types):
    blocks = get_block_sequence_ids_for_mask(types, embeds.device)
    return create_masks_for_vision_model(language_model.config, embeds, None, None, None, blocks)


@pytest.mark.parametrize(("layer", "ratio"), [(1, 0.7), (2, 0.7), (4, 0.9)])  # 4: the first that stores KV
def test_in_llm_pruning_matches_the_layers_run_by_hand_on_what_each_keeps(clip, layer, ratio):
    """FastV dropping tokens before `layer`: the layers before it see every token, those from it on - and the
    layers sharing the KV of the last ones that store it - only the kept ones, each with its layer type's rotary
    table, its per-layer input and its mask (a window and vision blocks in sliding layers)."""
    model = model_for("gemma4")
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
        per_layer = language_model.project_per_layer_inputs(hidden, call["per_layer_inputs"])
        masks = _masks(language_model, hidden, inputs["mm_token_type_ids"])
        shared = {}
        for index, decoder_layer in enumerate(language_model.layers):
            if index == layer:
                hidden, positions, per_layer = hidden[:, survivors], positions[:, survivors], per_layer[:, survivors]
                masks = _masks(language_model, hidden, inputs["mm_token_type_ids"][:, survivors])
            kind = config.layer_types[index]
            rotary = language_model.rotary_emb(hidden, positions, kind)
            hidden = decoder_layer(
                hidden, per_layer[:, :, index], shared_kv_states=shared, position_embeddings=rotary,
                attention_mask=masks[kind], position_ids=positions,
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


def test_the_large_builds_run_every_method(clip, other_clip):
    """26B-A4B / 31B (`tiny.GEMMA4_LARGE`): global layers with their own head size, one KV head and keys as values,
    experts, no per-layer inputs, no sharing. Scores read the global layers' own attention; ratio 1 is exact; every
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
        output = model(**single, output_attentions=True)
    hook.remove()
    hidden, (cos, sin) = seen["hidden"][0], (table[0] for table in seen["position_embeddings"])
    with torch.no_grad():
        queries, keys = adapter.project_queries(layer, hidden, cos, sin), adapter.project_keys(layer, hidden, cos, sin)
    assert queries.shape[-1] == 32 and len(keys) == 1
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
