"""The engine's contract: identity at ratio 1, exact unpatch, batch = single, backend independence."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine import compat
from tokcompress.engine.compat import CACHE_KEYWORD, output_cache

from .conftest import (
    COMPRESSING,
    FAMILIES,
    FRAME_GRANULAR,
    TINY,
    every_family_and_every_method,
    generate,
    inputs_for,
    logits,
    model_for,
    multimodal,
    shorter,
    video_encoder_inputs,
)


@pytest.mark.parametrize("method", ["none", *COMPRESSING])
def test_ratio_one_and_none_are_bitwise_identity(family, clip, method):
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    reference_logits, reference_tokens = logits(model, inputs), generate(model, inputs)
    with tokcompress.compress(model, method, ratio=1.0 if method != "none" else None) as handle:
        assert torch.equal(logits(model, inputs), reference_logits)
        assert torch.equal(generate(model, inputs), reference_tokens)
        assert handle.stats.achieved_ratio == 1.0
        assert handle.stats.decode_steps == reference_tokens.shape[1] - 1  # the baseline's stats count them too


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_unpatch_restores_outputs_and_modules(family, clip, method):
    """What a patch installs - the family's stand-ins, the hooks of each stage its method acts at - unpatching
    removes, and the outputs are the stock ones again."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    reference = logits(model, inputs)
    modules = list(model.modules())
    forwards = [m.forward for m in modules]
    hook_counts = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in modules]
    handle = tokcompress.patch(model, method, ratio=0.3)
    compressed = logits(model, inputs)
    assert compressed.shape == reference.shape  # the caller's sequence length is restored
    assert not torch.equal(compressed, reference)
    handle.unpatch()
    assert torch.equal(logits(model, inputs), reference)
    assert [m.forward for m in modules] == forwards
    assert [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in modules] == hook_counts
    assert not hasattr(model, "_tokcompress_handle")


@pytest.mark.parametrize("method", COMPRESSING)
def test_batch_equals_single(family, clip, other_clip, method):
    model = model_for(family)
    short = shorter(family, other_clip)
    questions = ["What is moving in this video?", "Who?"]  # prompts of different lengths: left padding
    batch = inputs_for(family, [clip, short], questions)
    with tokcompress.compress(model, method, ratio=0.3) as handle:
        together = generate(model, batch, max_new_tokens=5)
        batch_kept = [s.kept_positions for s in handle.stats.samples]
        width = batch["input_ids"].shape[1]
        for b, (frames, question) in enumerate(zip([clip, short], questions)):
            alone = inputs_for(family, frames, question)
            assert torch.equal(generate(model, alone, max_new_tokens=5)[0], together[b])
            offset = width - alone["input_ids"].shape[1]  # left padding shifts positions
            assert [p - offset for p in batch_kept[b]] == handle.stats.samples[0].kept_positions


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_sdpa_and_eager_keep_the_same_tokens(family, clip, method):
    """The methods score with the adapters' own q/k and the engine's masks, whichever attention the model runs."""
    inputs = inputs_for(family, clip, "What is moving?")
    kept = {}
    for implementation in ("sdpa", "eager"):
        model = model_for(family, implementation)
        with tokcompress.compress(model, method, ratio=0.3) as handle:
            generate(model, inputs, max_new_tokens=2)
            kept[implementation] = handle.stats.samples[0].kept_positions
    assert kept["sdpa"] == kept["eager"]


@pytest.mark.parametrize(("family", "method", "ratio"), [
    *((family, method, 0.3) for family in FAMILIES for method in COMPRESSING),
    *((family, method, ratio) for family, method in every_family_and_every_method() for ratio in (0.1, 0.55, 0.9)),
])
def test_achieved_ratio_within_one_token(family, clip, method, ratio):
    """Every method meets its budget on every family at 0.3; at the other ratios, each family with a method of each
    mechanism and every method on a batched and a packed family (the budget's arithmetic is the method's)."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, method, ratio=ratio) as handle:
        logits(model, inputs)
        (sample,) = handle.stats.samples
        tolerance = TINY[family].tokens_per_unit if method in FRAME_GRANULAR else 1.0
        assert abs(sample.achieved_ratio - ratio) * sample.visual_in <= tolerance
        assert len(sample.kept_positions) == sample.visual_out


@pytest.mark.parametrize(
    ("method", "knobs"),
    [("uniform", {}), ("dycoke", {"decode_keep": 1.0}), ("dycoke", {"positions": "contiguous"}), ("framededup", {})],
)
def test_pre_llm_methods_match_the_ideal_model_fed_only_kept_tokens(family, clip, method, knobs):
    """Feeding the LLM only the kept tokens at their original (or re-indexed) positions gives the same logits
    at every step."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    contiguous = knobs.get("positions") == "contiguous"
    if contiguous and TINY[family].mrope:
        with pytest.raises(ValueError, match="M-RoPE positions"):
            tokcompress.patch(model, method, ratio=0.3, **knobs)
        return
    knobs = {"decode_keep": 1.0, **knobs} if method == "dycoke" else knobs
    with tokcompress.compress(model, method, ratio=0.3, **knobs) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        kept = handle.stats.samples[0].kept_positions
    assert_logits_of_the_llm_fed_only(model, inputs, kept, out.logits, contiguous)


def assert_logits_of_the_llm_fed_only(model, inputs, kept: list[int], step_logits, contiguous: bool = False) -> None:
    """Each step's logits are the unpatched language model's, run with a cache on the prompt's text and its
    `kept` visual tokens (the unpatched encoder's features) at their original (or re-indexed) positions."""
    ids = inputs["input_ids"][0]
    visual = (ids == tiny.VIDEO).nonzero().squeeze(1).tolist()
    survivors = torch.tensor(sorted(set(range(len(ids))) - set(visual) | set(kept)))
    with torch.no_grad():
        embeds = multimodal(model).get_input_embeddings()(inputs["input_ids"])
        if "pixel_values_videos" in inputs:
            encoded = multimodal(model).get_video_features(**video_encoder_inputs(inputs), return_dict=True)
        else:  # InternVL, SmolVLM: frames are images
            encoded = multimodal(model).get_image_features(inputs["pixel_values"], return_dict=True)
        features = encoded.pooler_output
        features = torch.cat(features) if isinstance(features, (tuple, list)) else features.flatten(0, 1)
        features = features[inputs.get("video_compression_mask", slice(None))]  # VideoLLaMA3's
        embeds[0, visual] = features + (embeds[0, visual] if model.config.model_type == "molmo2" else 0)  # it adds
        _ovis_video_boundaries(model, inputs, embeds)
        step_embeds = embeds[:, survivors]
        step_positions = _original_positions(model, inputs)[..., survivors]
        if contiguous:
            step_positions = torch.arange(len(survivors))[None]
        past = None
        extra = {**_kept_deepstack(encoded, visual, kept, survivors), **_kept_gemma4(model, inputs, survivors)}
        extra.update(_visual_block_mask(model, inputs, step_embeds, survivors))
        extra.update({name: inputs[name][:, survivors] for name in adapter_for(model).llm_token_ids})  # ERNIE's
        for logits_now in step_logits:
            lm = adapter_for(model).language_model(
                inputs_embeds=step_embeds, position_ids=step_positions, use_cache=True, **{CACHE_KEYWORD: past}, **extra
            )
            extra = {}
            past = output_cache(lm)
            ideal = _logits(model, lm.last_hidden_state[:, -1])
            torch.testing.assert_close(logits_now, ideal, rtol=1e-4, atol=1e-5)
            step_embeds = _embedded(model, ideal.argmax(-1))[:, None]
            step_positions = step_positions[..., -1:] + 1


@pytest.mark.parametrize("layer", [1, 2])
def test_in_llm_pruning_matches_the_language_model_run_layer_by_layer_on_what_each_layer_keeps(family, clip, layer):
    """FastV dropping tokens before `layer`: layers before it see every token, layers from it on only the kept
    ones, in the prefill and at every decoding step - each layer's KV cache, recurrent state (Qwen3.5's
    linear attention) and DeepStack additions (Qwen3-VL) being those of the tokens it saw."""
    if family in ("gemma4", "gemma4_unified"):
        pytest.skip(f"per-type rotary tables and shared KV: tests/test_{family}.py runs its layers")
    # sliding windows as wide as the prompt: this reference attends causally over every token it keeps
    wide = {"cohere_compass": tiny.tiny_cohere_compass, "muse_glimmer": tiny.tiny_muse_glimmer,
            "muse_spark": tiny.tiny_muse_spark, "exaone4_5": tiny.tiny_exaone4_5, "lfm3_vl": tiny.tiny_lfm3_vl,
            "dots3_note": tiny.tiny_dots3_note}
    model = wide[family](sliding_window=4096) if family in wide else model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, "fastv", ratio=0.7, layer=layer) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        kept = handle.stats.samples[0].kept_positions
    call = _language_model_call(model, inputs)
    language_model = adapter_for(model).language_model
    embedding_multiplier = getattr(language_model.config, "embedding_multiplier", 1.0)  # MuP (HyperCLOVA X)
    hidden, positions = call["inputs_embeds"] * embedding_multiplier, call.get("position_ids")
    if positions is None or positions.ndim == 3:  # none, or M-RoPE's rows (less generate's text row); else 1-D (B, L)
        positions = torch.arange(hidden.shape[1])[None] if positions is None else positions[-3:].squeeze(0)
    additions, visual = call.get("deepstack_visual_embeds") or [], call.get("visual_pos_masks")
    token_ids = {name: call[name] for name in adapter_for(model).llm_token_ids}  # ERNIE's modality ids
    is_visual = inputs["input_ids"][0] == tiny.VIDEO
    survivors = ~is_visual
    survivors[kept] = True
    assert 0 < len(kept) < int(is_visual.sum())
    cache = DynamicCache(config=language_model.config)
    every = torch.ones_like(survivors)
    # LFM3's and Nemotron-H's are named so
    final_norm = next(getattr(language_model, name) for name in ("norm", "norm_f", "embedding_norm")
                      if hasattr(language_model, name))
    with torch.no_grad():
        for step, step_logits in enumerate(out.logits):
            tables = _rotary_tables(language_model, hidden, positions)
            mask = _visual_block_mask(model, inputs, hidden, every).get("attention_mask") if step == 0 else None
            for index, decoder_layer in enumerate(language_model.layers):
                if step == 0 and index == layer:
                    additions = [features[survivors[is_visual]] for features in additions]
                    hidden = hidden[:, survivors]
                    tables = [table and tuple(t[:, survivors] for t in table) for table in tables]
                    visual = visual[:, survivors] if visual is not None else None
                    token_ids = {name: ids[:, survivors] for name, ids in token_ids.items()}
                    mask = _visual_block_mask(model, inputs, hidden, survivors).get("attention_mask")
                hidden = decoder_layer(
                    hidden, position_embeddings=tables[index], attention_mask=_layer_mask(language_model, index,
                                                                                           hidden, cache, mask),
                    **{CACHE_KEYWORD: cache}, **(token_ids if step == 0 else {}),
                )
                if step == 0 and index < len(additions):
                    hidden = hidden.clone()
                    hidden[visual] += additions[index]
            ideal = _logits(model, final_norm(hidden[:, -1]))
            torch.testing.assert_close(step_logits, ideal, rtol=1e-4, atol=1e-5)
            hidden = model.get_input_embeddings()(ideal.argmax(-1))[:, None] * embedding_multiplier
            positions = positions[..., -1:] + 1


def _logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits for the language model's last hidden states (scaled where it scales them: Cohere's, and
    HyperCLOVA X's MuP `logits_scaling`; soft-capped where it caps them: Muse Glimmer's, after its output
    multiplier)."""
    text = model.config.get_text_config()
    head = model.get_output_embeddings() or model.language_model.get_output_embeddings()  # Nemotron-H Omni: its LM's
    logits = head(hidden) * (getattr(model, "logit_scale", None) or 1.0)
    if text.model_type == "hyperclovax":  # MuP: multiplied (Granite's own `logits_scaling` divides)
        logits = logits * text.logits_scaling
    cap = getattr(text, "final_logit_softcapping", None)
    return cap * torch.tanh(logits * getattr(text, "output_multiplier", 1.0) / cap) if cap else logits


def _rotary_tables(language_model, hidden, positions) -> list:
    """Per decoder layer, the rotary tables it gets: one set for all, one per layer type (Cohere's, LFM3's; None for
    a type without RoPE), scaled and unscaled ones (Molmo2's), or one set for all but the NoPE layers (Muse
    Glimmer's)."""
    config = language_model.config
    kinds = [compat.layer_type(config, index) for index in range(len(language_model.layers))]
    if not hasattr(language_model, "rotary_emb"):  # no positional encoding (Nemotron-H)
        return [None] * len(kinds)
    if getattr(language_model, "rope_types", None):  # Molmo2
        unscaled = language_model.rotary_emb_unscaled(hidden, positions)
        scaled = language_model.rotary_emb(hidden, positions)
        return [scaled if kind == "scaled" else unscaled for kind in language_model.rope_types]
    if getattr(config, "layer_rope_theta", None):  # Muse Glimmer: theta 0 where a layer has no RoPE
        return [language_model.rotary_emb(hidden, positions) if theta else None for theta in config.layer_rope_theta]
    if not set(kinds) & set(config.rope_parameters):  # one set for every layer
        return [language_model.rotary_emb(hidden, positions)] * len(kinds)
    # per layer type; none for a type without RoPE (Cohere's global layers, LFM3's convolutions)
    return [config.rope_parameters.get(kind) and language_model.rotary_emb(hidden, positions, kind) for kind in kinds]


def _language_model_call(model, inputs) -> dict:
    """The keyword arguments the unpatched model hands its language model for `inputs`."""
    call = {}
    hook = adapter_for(model).language_model.register_forward_pre_hook(
        lambda module, args, kwargs: call.update(kwargs), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return call


def _kept_deepstack(encoded, visual: list[int], kept: list[int], survivors: torch.Tensor) -> dict:
    """Qwen3-VL's DeepStack features of the kept visual tokens, as its language model takes them."""
    levels = getattr(encoded, "deepstack_features", None)
    if levels is None:
        return {}
    rows = torch.tensor([visual.index(position) for position in sorted(kept)])
    return {
        "visual_pos_masks": torch.isin(survivors, torch.tensor(kept))[None],
        "deepstack_visual_embeds": [torch.cat(level)[rows] for level in levels],  # each level: per video
    }


def _embedded(model, ids: torch.Tensor) -> torch.Tensor:
    """The input embeddings the model gives these ids: Gemma 4's models embed a generated placeholder id (an image,
    video or audio token of the random weights' choosing) as padding."""
    if model.config.model_type in ("gemma4", "gemma4_unified"):
        config = model.config
        placeholders = torch.tensor([config.image_token_id, config.video_token_id, config.audio_token_id])
        ids = torch.where(torch.isin(ids, placeholders), config.get_text_config().pad_token_id, ids)
    return multimodal(model).get_input_embeddings()(ids)


def _ovis_video_boundaries(model, inputs, embeds: torch.Tensor) -> None:
    """Ovis2.5 replaces a video's start and end tokens with its visual indicators 2 and 3 (in place)."""
    if model.config.model_type != "ovis2_5":
        return
    indicators = model.model.multi_modal_projector.get_visual_indicator_features(embeds.device)
    for indicator, token in zip(indicators[2:], (model.config.video_start_token_id, model.config.video_end_token_id)):
        embeds[inputs["input_ids"] == token] = indicator


def _kept_gemma4(model, inputs, survivors: torch.Tensor) -> dict:
    """Gemma 4's per-layer inputs of the kept tokens (their ids, visual ones as padding, as its model looks them up)
    and its own masks over them (a vision block per frame, both ways inside sliding layers; Gemma 4 Unified's
    forward: in every layer, and no per-layer inputs)."""
    if model.config.model_type not in ("gemma4", "gemma4_unified"):
        return {}
    from transformers.masking_utils import create_masks_for_generate
    from transformers.models.gemma4.modeling_gemma4 import (
        create_masks_for_vision_model,
        get_block_sequence_ids_for_mask,
    )

    language_model = adapter_for(model).language_model
    ids = inputs["input_ids"].masked_fill(inputs["input_ids"] == tiny.VIDEO, language_model.config.pad_token_id)
    embeds = language_model.embed_tokens(ids[:, survivors])
    blocks = get_block_sequence_ids_for_mask(inputs["mm_token_type_ids"][:, survivors], embeds.device)
    if model.config.model_type == "gemma4_unified":
        return {"attention_mask": create_masks_for_generate(language_model.config, embeds, None, None, None,
                                                            block_sequence_ids=blocks)}
    masks = create_masks_for_vision_model(language_model.config, embeds, None, None, None, blocks)
    return {"per_layer_inputs": language_model.get_per_layer_inputs(ids[:, survivors]), "attention_mask": masks}


def _visual_block_mask(model, inputs, embeds: torch.Tensor, survivors: torch.Tensor) -> dict:
    """Molmo2's mask over the kept tokens, as its model builds it: causal, but its visual tokens (with their frames'
    start and end tokens) one block attending both ways."""
    if model.config.model_type != "molmo2":
        return {}
    blocks = torch.where(inputs["mm_token_type_ids"][:, survivors] == 1, 0, -1)
    config = adapter_for(model).language_model.config
    positions = torch.arange(embeds.shape[1])[None]
    mask = create_causal_mask(config, embeds, None, **{CACHE_KEYWORD: None}, position_ids=positions,
                              block_sequence_ids=blocks)
    return {"attention_mask": mask}


def _layer_mask(language_model, index: int, hidden: torch.Tensor, cache, mask):
    """The mask decoder layer `index` gets: `mask`, or where there is none and a DSA indexer reads it (dots3's
    indexed layers), the causal mask tensor over the cache and `hidden`."""
    if mask is not None or compat.layer_type(language_model.config, index) != compat.INDEXED_LAYER:
        return mask
    return compat.build_attention_mask(language_model.config, index, hidden, None, cache, explicit=True)


def _original_positions(model, inputs):
    """The position ids the unpatched model hands its language model for this prompt (1-D: the indices)."""
    if not TINY[model.config.model_type].mrope:
        return torch.arange(inputs["input_ids"].shape[1])[None]
    seen = []
    record = lambda module, args, kwargs: seen.append(kwargs["position_ids"])  # noqa: E731
    hook = adapter_for(model).language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_manual_decode_loop_matches_generate(family, clip, method):
    """A hand-written cache loop (no position ids, no mask) continues from the original positions too, whatever
    stage shortened the cache."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    if not TINY[family].positions_from_mask:
        inputs.pop("attention_mask")
    with tokcompress.compress(model, method, ratio=0.3), torch.no_grad():
        expected = generate(model, inputs, max_new_tokens=4)[0].tolist()
        out = model(**inputs, use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        for _ in range(3):
            cache = {CACHE_KEYWORD: output_cache(out)}
            out = model(input_ids=torch.tensor([tokens[-1:]]), use_cache=True, **cache)
            tokens.append(int(out.logits[0, -1].argmax()))
    assert tokens == expected


def test_contiguous_positions_keep_batch_equal_to_single(clip, other_clip):
    model = model_for("llava_onevision")
    questions = ["What is moving in this video?", "Who?"]
    batch = inputs_for("llava_onevision", [clip, other_clip], questions)
    with tokcompress.compress(model, "dycoke", ratio=0.3, positions="contiguous"):
        together = generate(model, batch, max_new_tokens=5)
        for b, (frames, question) in enumerate(zip([clip, other_clip], questions)):
            alone = generate(model, inputs_for("llava_onevision", frames, question), max_new_tokens=5)
            assert torch.equal(alone[0], together[b])
