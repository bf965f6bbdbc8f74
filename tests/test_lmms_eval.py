"""lmms-eval end to end on the CPU: a tiny model saved to disk, the toy video task, compression fields per sample.

Stand-in, said plainly: HF's video processors need torchvision, which has no CPU build here, so this test
swaps the checkpoint's processor for `tiny_checkpoint.FramesProcessor`. Everything else - lmms-eval, the
stock llava_hf wrapper, our plugin, the task - is the real path. On a GPU machine the real processor is used.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval")
from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402
from lmms_eval.models.simple import llava_hf as stock_llava_hf  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from tokcompress.integrations import lmms_eval as plugin  # noqa: E402
from tokcompress.tiny_checkpoint import FramesProcessor, save_checkpoint  # noqa: E402

from .test_eval import load  # noqa: E402

TASKS = Path(__file__).parents[1] / "eval" / "tasks"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("tiny_llava_onevision"))


@pytest.fixture(scope="module")
def stand_in_processor():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stock_llava_hf, "AutoProcessor", FramesProcessor)
        yield


RUNS = {"none": {}, "fastv": {"ratio": 0.3, "layer": 1}}


@pytest.fixture(scope="module")
def evaluations(checkpoint, stand_in_processor) -> dict[str, dict]:
    """lmms-eval's results for the toy task, uncompressed and with fastv, through the real plugin class."""
    outputs = {}
    for method, arguments in RUNS.items():
        model = plugin.LlavaHf(
            pretrained=str(checkpoint), device="cpu", device_map="cpu", dtype="float32", max_frames_num=8,
            method=method, **arguments,
        )
        assert model.compression.method.name == method
        outputs[method] = simple_evaluate(
            model=model, tasks=["tokcompress_toy_video_mc"], batch_size=1, device="cpu", log_samples=True,
            task_manager=TaskManager(include_path=str(TASKS), model_name="llava_hf"),
        )
    return outputs


def test_entry_points_register_the_compression_aware_wrappers():
    assert get_model("tokcompress_llava_hf") is plugin.LlavaHfChat
    assert get_model("tokcompress_llava_hf", force_simple=True) is plugin.LlavaHf
    assert get_model("tc_qwen2_5_vl") is plugin.Qwen2_5_VLChat
    assert get_model("tokcompress_qwen2_vl") is plugin.Qwen2_VL
    assert get_model("tokcompress_qwen3_vl") is plugin.Qwen3_VLChat
    assert get_model("tokcompress_qwen3_5") is plugin.Qwen3_5Chat
    assert get_model("tokcompress_qwen3_5", force_simple=True) is plugin.Qwen3_5
    assert get_model("tokcompress_internvl_hf") is plugin.InternVLHfChat
    assert get_model("tokcompress_glm4v") is plugin.GLM4V
    assert get_model("tokcompress_gemma4") is plugin.Gemma4


@pytest.mark.parametrize("method", RUNS)
def test_lmms_eval_end_to_end_records_compression_per_sample(evaluations, method):
    results = evaluations[method]
    assert 0.0 <= results["results"]["tokcompress_toy_video_mc"]["accuracy,none"] <= 1.0
    samples = results["samples"]["tokcompress_toy_video_mc"]
    assert len(samples) == 6
    for sample in samples:
        (counts,) = sample["token_counts"]
        assert counts["method"] == method and counts["visual_tokens_in"] == 8 * 9 + 1
        assert counts["prefill_ms"] > 0 and counts["output_tokens"] >= 1
        if method == "fastv":
            assert abs(counts["achieved_ratio"] - 0.3) * counts["visual_tokens_in"] <= 1
            assert counts["visual_tokens_out"] < counts["visual_tokens_in"]
        else:
            assert counts["achieved_ratio"] == 1.0 and counts["visual_tokens_out"] == counts["visual_tokens_in"]


def test_unknown_method_in_model_args_names_the_known_ones(checkpoint, stand_in_processor):
    with pytest.raises(ValueError, match=f"known methods: {', '.join(sorted(plugin.METHODS))}"):
        plugin.LlavaHf(pretrained=str(checkpoint), device="cpu", device_map="cpu", method="fastvv")


def test_a_composition_in_model_args_patches_the_wrapper_model(checkpoint, stand_in_processor):
    wrapper = plugin.LlavaHf(pretrained=str(checkpoint), device="cpu", device_map="cpu",
                             method="earlytom@encoder:ratio=0.5+fastv:layer=1", ratio=0.3)  # members' knobs
    assert wrapper.compression.method.name == "earlytom@encoder+fastv" and wrapper.compression.ratio == 0.3
    assert wrapper.compression.method.methods[1].layer == 1
    record = wrapper._counts(None).to_dict()  # what each sample's token_counts carry
    expected = ("earlytom@encoder+fastv", 0.3, "earlytom@encoder at 0.5")
    assert (record["method"], record["ratio"], record["members"]) == expected
    with pytest.raises(ValueError, match="known methods"):
        plugin.LlavaHf(pretrained=str(checkpoint), device="cpu", device_map="cpu", method="framededup+fastvv")


def test_a_request_whose_generate_failed_records_the_failure_not_the_last_requests_figures(
    checkpoint, stand_in_processor
):
    """The stock wrappers answer a failed generate (out of memory) with nothing and go on: its record says it
    failed, and why, instead of carrying the previous request's compression figures."""
    wrapper = plugin.LlavaHf(pretrained=str(checkpoint), device="cpu", device_map="cpu", method="fastv", ratio=0.3)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    wrapper._last_request = {}
    with pytest.raises(torch.OutOfMemoryError):
        wrapper._timed_generate(out_of_memory)(input_ids=torch.ones(1, 4, dtype=torch.long))
    record = wrapper._counts(None).to_dict()
    assert record["failed"] is True and "OutOfMemoryError: CUDA out of memory" in record["error"]
    assert "visual_tokens_in" not in record and "achieved_ratio" not in record and record["spec"] == "fastv"


def test_sweep_commands_and_plots(evaluations, tmp_path):
    sweep, plot_sweep = load("sweep"), load("plot_sweep")
    config = {
        "model": "llava_hf", "model_args": {"pretrained": "x"}, "tasks": ["a", "b"], "output": str(tmp_path),
        "ratios": [0.5, 0.3], "methods": {"fastv": {"layer": 2}, "uniform": {}},
    }
    planned = [sweep.command(config, *run)[0] for run in sweep.runs(config)]
    assert len(planned) == 5 and all(line[line.index("--model") + 1] == "tokcompress_llava_hf" for line in planned)
    assert planned[1][planned[1].index("--model_args") + 1] == "pretrained=x,method=fastv,layer=2,ratio=0.5"
    for method, results in evaluations.items():  # lmms-eval's own file layout
        folder = tmp_path / method / "tiny"
        folder.mkdir(parents=True)
        (folder / "20261123_results.json").write_text(json.dumps({"results": results["results"]}, default=str))
        lines = [json.dumps(sample, default=str) for sample in results["samples"]["tokcompress_toy_video_mc"]]
        (folder / "20261123_samples_tokcompress_toy_video_mc.jsonl").write_text("\n".join(lines))
    assert plot_sweep.main([str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    # a method's rows named with the knobs it ran with (two settings of one method are two rows)
    assert [(r["method"], r["metric"]) for r in rows] == [("none", "accuracy"), ("fastv:layer=1", "accuracy")]
    assert [int(r["failed"]) for r in rows] == [0, 0]
    assert float(rows[1]["achieved_ratio"]) == pytest.approx(0.3, abs=1 / 73)
    assert (tmp_path / "accuracy_vs_ratio.png").exists() and (tmp_path / "accuracy_vs_latency.png").exists()
    assert "| fastv:layer=1 | 0.3 |" in (tmp_path / "sweep.md").read_text()


def test_a_group_task_without_a_score_of_its_own_becomes_one_column_the_mean_of_its_subtasks():
    """MVBench in lmms-eval 0.7.3: 20 subtasks, no aggregate - one column, MVBench's own average."""
    plot_sweep = load("plot_sweep")
    row = dict(method="fastv", ratio=0.3, metric="accuracy", achieved_ratio=0.3, prefill_ms=10.0,
               decode_ms_per_token=1.0)
    rows = [dict(row, task="mvbench_a", score=0.5, samples=10), dict(row, task="mvbench_b", score=0.7, samples=30,
                                                                     prefill_ms=20.0),
            dict(row, task="videomme", score=0.6, samples=5)]
    grouped = plot_sweep._grouped(rows, {"mvbench": ["mvbench_a", "mvbench_b"]})
    assert sorted(r["task"] for r in grouped) == ["mvbench", "videomme"]
    (mvbench,) = [r for r in grouped if r["task"] == "mvbench"]
    assert mvbench["score"] == pytest.approx(0.6) and mvbench["samples"] == 40 and mvbench["prefill_ms"] == 17.5
