"""onnxattack command line. Each command parses, calls the library, prints.

Exit codes: 0 done, 1 internal error, 2 bad usage or input, 3 the model cannot be handled,
130 interrupted (the result file stays readable; continue with --resume).
"""

from __future__ import annotations

import _thread
import functools
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from onnxattack.attacks import METHODS, Disagree, PairAttack
from onnxattack.attacks.base import Option
from onnxattack.config import (
    DEVICE_CHOICES,
    ENGINE_CHOICES,
    GRADIENT_CHOICES,
    IMAGE_LAYOUTS,
    MEMORY_FORMATS,
    REDUCE_CHOICES,
    SCORES_CHOICES,
    AttackConfig,
    option_flag,
)
from onnxattack.errors import BadInputError, ConfigError, OnnxAttackError, first_line
from onnxattack.results import StoreWriteError, write_texts
from onnxattack.safety import check_image_output
from onnxattack.tokenizer import load_decoder

from . import warm
from .fast_exit import exit_now, settle

EXIT_CODES = ("Exit codes: 0 done (whatever the success rate), 1 internal error, 2 bad usage or input, "
              "3 the model cannot be handled, 130 interrupted (the file stays readable; --resume continues).")
# Config fields whose flag is not "--" + the field name with dashes.
FIELD_FLAGS = {"box": "--range", "output": "--output", "labels_file": "--labels", "max_iter": "--max-iter",
               "set_values": "--set"}


# Each method's declared options and defaults, asked once: every call inspects the constructor's
# signature, and building the options' help asked about a thousand times (50 ms of every start).
METHOD_OPTIONS: dict[str, dict[str, Option]] = {name: cls.declared_options() for name, cls in METHODS.items()}
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {name: cls.default_values() for name, cls in METHODS.items()}


def declared_options() -> dict[str, Option]:
    """Every method hyperparameter offered on the command line, as the methods declare them."""
    options: dict[str, Option] = {}
    for declared in METHOD_OPTIONS.values():
        options.update(declared)
    return options


ATTACK_OPTIONS = declared_options()


def flag_for(field: str) -> str:
    if field in FIELD_FLAGS:
        return FIELD_FLAGS[field]
    return option_flag(field) if field in ATTACK_OPTIONS else "--" + field.replace("_", "-")


def _fail(message: str, code: int) -> None:
    click.echo(f"onnxattack: error: {message}", err=True)
    sys.exit(code)


def _unraisable(unraisable) -> None:
    """Exceptions Python can only report ("Exception ignored in ..."), handled as a command line should.

    A Ctrl-C (or SIGTERM) whose KeyboardInterrupt is raised while a finalizer runs (a weakref callback,
    a __del__) is swallowed there and the command would run on as if never interrupted: it is delivered
    again a moment later, from a timer thread (raised in this hook, it would be swallowed again).
    After a failed write (disk full), h5py objects that are garbage-collected retry their flush and
    report each failure; the error line already said it."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        again = threading.Timer(0.05, _thread.interrupt_main)
        again.daemon = True
        again.start()
        return
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    if any("h5py" in frame.filename for frame in frames) or "h5py" in repr(getattr(unraisable, "object", "")):
        return
    sys.__unraisablehook__(unraisable)


# Set once a command has taken a Ctrl-C (handle_errors): `onnxattack serve` repeats a gone caller's until then.
INTERRUPT_TAKEN = threading.Event()


def handle_errors(command: Callable) -> Callable:
    """Typed library errors become one line and their exit code; Ctrl-C and SIGTERM exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        sys.unraisablehook = _unraisable
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return command(*args, **kwargs)
        except StoreWriteError as exc:  # the HDF5 library cannot be shut down cleanly after a failed write
            click.echo(f"onnxattack: error: {first_line(exc)}", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        except ConfigError as exc:
            bad = click.BadParameter(first_line(exc), param_hint=f"'{flag_for(exc.field)}'")
            _fail(bad.format_message(), 2)
        except OnnxAttackError as exc:
            _fail(first_line(exc), exc.exit_code)
        except KeyboardInterrupt:
            INTERRUPT_TAKEN.set()
            _fail("interrupted; what was written stays readable (continue with --resume)", 130)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES)
@click.version_option(package_name="onnxattack")
def main() -> None:
    """Targeted multi-label adversarial attacks on any exported ONNX model.

    Models are converted to differentiable torch graphs with onnx2torch; every adversarial
    input is re-scored by onnxruntime on the original model, and that verdict is recorded.
    """


@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--output", "output_name", metavar="NAME", help="Model output that holds the label scores.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False),
              help="Label names (JSON list or one per line).")
@click.option("--range", "box", nargs=2, type=float, default=None, metavar="LO HI",
              help="Valid input box, used for the conversion probe (default: the model's input_range metadata, "
                   "else 0 1).")
@click.option("--shape", metavar="D1,D2,...", help="Sample dims to probe with when the model's are symbolic.")
@click.option("--probe", "probe_path", type=click.Path(), metavar="INPUTS",
              help="Real inputs (.npy/.npz/.h5/image folder) to probe with; the first 4 rows are used.")
@click.option("--key", help="Array name inside a .npz or HDF5 probe file.")
@click.option("--attack-input", metavar="NAME",
              help="Models with several inputs: the one perturbed (default: the only floating input); "
                   "a --probe file then holds one array per input name.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def inspect(model: str, output_name: str | None, labels_file: str | None, box: tuple[float, float] | None,
            shape: str | None, probe_path: str | None, key: str | None, attack_input: str | None,
            as_json: bool) -> None:
    """Describe MODEL: inputs, outputs, opsets, producer, labels, the score output, whether its
    score graph converts to torch, and how `attack` would attack it: through the torch graph, or
    with gradients estimated from onnxruntime queries when it does not convert (exit code 0 for
    both). Exit code 3, naming the reason, when it cannot be attacked at all. Symbolic sample dims
    (e.g. ? x 3 x H x W) need --shape or --probe; without them the conversion is reported as not
    checked (exit code 0)."""
    from onnxattack.loader import inspect_model
    from onnxattack.model import open_model
    from onnxattack.pipeline import first_rows, open_model_inputs

    dims = _parse_shape(shape) if shape else None
    model_file = open_model(model)
    probe, probe_others = None, None
    if probe_path:
        _, source, others = open_model_inputs(model_file, probe_path, attack_input, key)
        probe, probe_others = first_rows(source, others, min(source.count, 4))
    report = inspect_model(model_file, output=output_name, labels_file=labels_file, box=box, shape=dims, probe=probe,
                           attack_input=attack_input, probe_others=probe_others)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(_format_inspect(report))
    if report["converts"] is None:
        click.echo(f"onnxattack: {report['reason']}", err=True)
        return
    if report["attack_route"] in ("labels", "ml-hotflip"):
        click.echo(f"onnxattack: {report['reason']}", err=True)
        return
    if report["attack_route"] == "estimated":
        click.echo(f"onnxattack: no torch graph ({first_line(report['reason'] or 'it does not convert')}); "
                   f"`attack` estimates gradients from onnxruntime queries", err=True)
        return
    if not report["converts"]:
        reason = report["reason"] or "the score graph does not convert"
        _fail(reason, 3)


_ROUTES = {"torch": "through the torch graph (--gradients auto)",
           "estimated": "no torch graph: budgeted methods run as ml-square (a black box), minimal-norm ones on "
                        "gradients estimated from onnxruntime queries (--gradients auto)",
           "labels": "label output only: --method ml-hsj (decision-based, onnxruntime's labels)",
           "ml-hotflip": "token ids, by substitution: --method ml-hotflip --attack-input NAME"}


def _converts_text(converts: bool | None) -> str:
    return "not checked (symbolic sample dims)" if converts is None else ("yes" if converts else "no")


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise BadInputError(f"--shape {text!r} is not a list of integers like 3,224,224") from None
    if not dims or any(dim < 1 for dim in dims):
        raise BadInputError(f"--shape {text!r}: every dim must be a positive integer")
    return dims


def _format_inspect(report: dict) -> str:
    def tensors(items: list[dict]) -> str:
        return "\n".join(f"    {t['name']}: {t['dtype']} {t['shape']}" for t in items)

    labels = report.get("labels")
    lines = [
        f"model       {report['path']}",
        f"producer    {report['producer']} (IR {report['ir_version']})",
        f"opsets      {', '.join(f'{d} {v}' for d, v in report['opsets'].items())}",
        "inputs", tensors(report["inputs"]), "outputs", tensors(report["outputs"]),
        f"labels      {', '.join(labels) if labels else '(unnamed)'}",
        f"scores      {report['score_output']} read as {report['scores_kind']}"
        + (f", threshold {report['threshold']}" if report.get("threshold") is not None else ""),
        f"converts    {_converts_text(report['converts'])}"
        + (f" (max |torch - onnxruntime| = {report['fidelity']:.2g})" if report.get("fidelity") is not None else ""),
        f"attack      {_ROUTES.get(report.get('attack_route'), 'not possible')}",
    ]
    if report["blocking_ops"]:
        lines.append(f"blocking    {', '.join(report['blocking_ops'])}")
    lines += [f"note        {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


def _method_help(name: str, option: Option, methods: dict) -> str:
    """An option's help: what it does, and the methods that take it (with their defaults)."""
    def shown(value: object) -> str:
        return f"{value:g}" if isinstance(value, float | int) and not isinstance(value, bool) else str(value)

    what = option.help[0].upper() + option.help[1:]
    takers = [method for method in methods if name in METHOD_OPTIONS[method]]
    if option.switch:
        return f"{what} ({', '.join(sorted(takers))})."
    defaults = ", ".join(f"{method} {shown(METHOD_DEFAULTS[method][name])}" for method in takers)
    return f"{what} (method default: {defaults})."


def _method_option(name: str, option: Option, methods: dict) -> Callable:
    if option.switch:
        return click.option(option.flag(name), option.switch.replace("-", "_"), is_flag=True,
                            help=_method_help(name, option, methods))
    kind = click.Choice(list(option.kind)) if isinstance(option.kind, tuple) else option.kind
    return click.option(option.flag(name), name, type=kind, help=_method_help(name, option, methods))


def _config_option(name: str, *flags: str, **kwargs) -> Callable:
    """A click option whose default and help come from AttackConfig."""
    default = AttackConfig.default(name)
    if default is not None and not kwargs.get("is_flag"):
        kwargs.setdefault("default", default)
        kwargs.setdefault("show_default", True)
    return click.option(*(flags or (flag_for(name),)), name, help=AttackConfig.help(name), **kwargs)


class ShardParam(click.ParamType):
    """--shard I/N -> (I, N); the range checks are AttackConfig's."""

    name = "I/N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        index, slash, count = str(value).partition("/")
        try:
            if not slash:
                raise ValueError
            return int(index), int(count)
        except ValueError:
            self.fail(f"expected I/N (shard I of N, I from 0), got {value!r}", param, ctx)


def run_options(command: Callable, curve: bool = False) -> Callable:
    """The options of `attack` (and of `curve`: budgeted methods only, where --eps takes a list and a PNG
    can be asked for, and no --shard: a curve runs every epsilon over the whole input set)."""
    methods = {name: cls for name, cls in METHODS.items() if cls.budgeted or not curve}
    method_options = {name: option for name, option in ATTACK_OPTIONS.items() if not (curve and name == "eps")
                      and any(name in METHOD_OPTIONS[method] for method in methods)}
    curve_options = [
        click.option("--eps", "eps_list", required=True, metavar="E1,E2,...",
                     help="The budgets, in input units: one full pass per epsilon."),
        click.option("--png", type=click.Path(dir_okay=False), help="Plot success against epsilon to this PNG."),
    ] if curve else []
    options = [
        click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
                     help="Curve file (HDF5, a group per epsilon)." if curve else "Result file (HDF5)."),
        *curve_options,
        _config_option("method", type=click.Choice(list(methods)), **({"default": "ml-pgd"} if curve else {})),
        _config_option("target"),
        _config_option("target_file", type=click.Path(dir_okay=False)),
        _config_option("scores", type=click.Choice(SCORES_CHOICES)),
        _config_option("threshold", type=float),
        _config_option("top_k", type=int),
        _config_option("output", "--output", metavar="NAME"),
        _config_option("box", "--range", nargs=2, type=float, metavar="LO HI"),
        _config_option("max_iter", type=int),
        *[_method_option(name, option, methods) for name, option in method_options.items()],
        _config_option("batch_size", type=int),
        _config_option("limit", type=int),
        _config_option("seed", type=int),
        _config_option("device", type=click.Choice(DEVICE_CHOICES)),
        _config_option("memory_format", type=click.Choice(MEMORY_FORMATS)),
        _config_option("key"),
        _config_option("attack_input", metavar="NAME"),
        _config_option("labels_file", "--labels", type=click.Path(dir_okay=False)),
        _config_option("image_layout", type=click.Choice(IMAGE_LAYOUTS)),
        _config_option("image_scale", type=float),
        _config_option("tolerance", type=float),
        _config_option("reduce", type=click.Choice(REDUCE_CHOICES)),
        _config_option("batch_axis", multiple=True, metavar="NAME=AXIS"),
        _config_option("ctc", is_flag=True),
        _config_option("ctc_blank", type=int, metavar="N"),
        _config_option("set_values", "--set", multiple=True, metavar="NAME=VALUE"),
        _config_option("broadcast", multiple=True, metavar="NAME"),
        _config_option("state", multiple=True, metavar="OUT=IN"),
        _config_option("chunk", type=int),
        _config_option("context", type=int),
        _config_option("per_chunk", is_flag=True),
        _config_option("gradients", type=click.Choice(GRADIENT_CHOICES)),
        _config_option("max_queries", type=int),
        _config_option("resume", is_flag=True),
        _config_option("overwrite", is_flag=True),
        *([] if curve else [_config_option("shard", type=ShardParam())]),
        _config_option("engine", type=click.Choice(ENGINE_CHOICES)),
        _config_option("address", metavar="ADDR"),
        _config_option("workers", type=int),
        _config_option("gpus_per_worker", type=float),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _pair_flags() -> dict[str, tuple[str, Option]]:
    """--disagree-<name> for each hyperparameter of the pair method disagree (its --max-iter too): parameter
    name -> (hyperparameter, declaration)."""
    declared = {"max_iter": Option(int, "iterations per constant step"), **Disagree.declared_options()}
    return {f"disagree_{name}": (name, option) for name, option in declared.items()}


def pair_method_options(command: Callable) -> Callable:
    defaults = Disagree.default_values()
    for parameter, (name, option) in reversed(_pair_flags().items()):
        command = click.option("--" + parameter.replace("_", "-"), parameter, type=option.kind,
                               help=f"disagree: {option.help} (default {defaults[name]}).")(command)
    return command


def _pair_method_from(options: dict) -> PairAttack:
    """The disagree method with the --disagree-* values given (removed from options); a bad value names its flag."""
    given = {name: options.pop(parameter) for parameter, (name, _) in _pair_flags().items()
             if options.get(parameter) is not None}
    for parameter in _pair_flags():
        options.pop(parameter, None)
    try:
        return Disagree(**given)
    except ConfigError as exc:
        raise ConfigError(f"disagree_{exc.field}", first_line(exc)) from None


def attack_options(command: Callable) -> Callable:
    return run_options(command)


def curve_options(command: Callable) -> Callable:
    return run_options(command, curve=True)


def _config_from(options: dict) -> AttackConfig:
    """AttackConfig from the parsed options; method options and switches become attack_options."""
    extra: dict[str, Any] = {}
    for name, option in ATTACK_OPTIONS.items():
        if option.switch:
            if options.pop(option.switch.replace("-", "_"), False):
                extra[name] = option.value
        elif options.get(name) is not None:
            extra[name] = options.pop(name)
        else:
            options.pop(name, None)
    return AttackConfig(**options, attack_options=extra)


class ProgressBar:
    """One tqdm bar per run (per epsilon for a curve), on stderr; silent with --quiet or --json."""

    def __init__(self, silent: bool) -> None:
        self.silent = silent
        self.bar: Any = None  # a tqdm bar once the first progress arrives
        self.label = ""

    def start(self, label: str) -> None:
        self.close()
        self.label = label

    def __call__(self, done: float, total: int, successes: int, attacked: int) -> None:
        """done: rows finished, plus the share of the batch in progress (the bar moves within a batch)."""
        if self.silent:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=0, unit="input", file=sys.stderr, dynamic_ncols=True,
                            desc=self.label or None, bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}"
                                                                ", {postfix}]")
        self.bar.n = round(float(done), 1)
        self.bar.set_postfix_str(f"success {successes}/{attacked}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", type=click.Path())
@attack_options
@click.option("--tokenizer", type=click.Path(dir_okay=False), metavar="FILE",
              help="Token-id runs: a HuggingFace tokenizers JSON file; prints the changed texts and stores every "
                   "row's text before and after in text/x, text/x_adv (needs the 'tokenizers' package).")
@handle_errors
def attack(model: str, inputs: str, out: str, as_json: bool, quiet: bool, tokenizer: str | None,
           **options) -> None:
    """Attack MODEL on INPUTS and write every result to OUT (HDF5).

    INPUTS is a .npy, .npz or .h5 file, or a folder of PNG/JPEG images, in the model's own
    input format; every value must be finite and inside --range. Success is judged by
    onnxruntime on the original model.
    """
    from onnxattack.engines import run as run_engine
    from onnxattack.report import format_summary, summarize

    config = _config_from(options)
    decode = None if tokenizer is None else load_decoder(tokenizer)  # refused before any work
    progress = ProgressBar(silent=quiet or as_json)
    try:
        path = run_engine(model, inputs, out, config, progress=progress)
    finally:
        progress.close()
    changed = [] if decode is None else write_texts(path, decode)
    summary = summarize(path)
    if config.ctc:
        from onnxattack.ctc import examples

        summary["decoded"] = examples(path)
    click.echo(json.dumps(summary, default=str) if as_json else format_summary(summary))
    if config.ctc and not as_json:
        decoded = summary["decoded"]
        click.echo(f"decoded (greedy CTC, blank {decoded['blank']}: {decoded['blank_source']}; every row in "
                   f"decoded/x, decoded/x_adv):")
        for example in decoded["examples"]:
            click.echo(f"  row {example['row']}: {example['x']!r} -> {example['x_adv']!r}")
    if not as_json:
        for before, after in changed:
            click.echo(f"  {before}\n-> {after}")


@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", type=click.Path())
@curve_options
@handle_errors
def curve(model: str, inputs: str, out: str, eps_list: str, png: str | None, as_json: bool, quiet: bool,
          **options) -> None:
    """Robustness curve: attack MODEL on INPUTS once per epsilon (--eps 0.01,0.02,...) with a budgeted
    method (default ml-pgd), and print (and plot, --png) success against epsilon. Every run is kept
    in OUT, a group eps/<value> each, with the layout of an attack's result file."""
    from onnxattack.curve import format_curve, parse_eps, run_curve, write_curve_figure

    eps_values = parse_eps(eps_list)
    config = _config_from(options)
    if png:  # an unwritable plot, or one that would replace an input, fails now, not after the runs
        check_image_output(png, inputs=(model, inputs, out), overwrite=True)
    progress = ProgressBar(silent=quiet or as_json)
    try:
        result = run_curve(model, inputs, out, config, eps_values, progress=progress,
                           on_pass=lambda index, total, eps: progress.start(f"eps {eps:g} ({index + 1}/{total})"))
    finally:
        progress.close()
    if png:
        write_curve_figure(result, png)
    click.echo(json.dumps(result, default=str) if as_json else format_curve(result))


@main.command(epilog=EXIT_CODES)
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--model", "models", multiple=True, required=True,
              metavar="FILE[:layout=nchw|nhwc,range=LO:HI,runtime=NAME]",
              help="Another ONNX model (repeatable). Its input layout and range are inferred from its declared "
                   "shape and input_range metadata, or stated after the path; runtime=openvino (or openvino-f32) "
                   "judges it in OpenVINO instead of onnxruntime.")
@click.option("--label-map", "label_map", type=click.Path(dir_okay=False),
              help="JSON object: the reference's label names -> the other models' (labels with equal names "
                   "match without it).")
@click.option("--match-labels-by-position", "by_position", is_flag=True,
              help="Match labels by index instead of by name (equal counts needed).")
@click.option("--scores", type=click.Choice(SCORES_CHOICES), default="auto", show_default=True,
              help="How to read the other models' score outputs.")
@click.option("--threshold", type=float, help="Their decision threshold (default 0 on logits, 0.5 on probabilities).")
@click.option("--top-k", "top_k", type=int, help="Ranking runs: their predicted set is the K best labels "
                                                 "(default: the run's K).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def validate(results: str, models: tuple[str, ...], label_map: str | None, by_position: bool, scores: str,
             threshold: float | None, top_k: int | None, device: str, as_json: bool) -> None:
    """Re-score the adversarial inputs of RESULTS on other models (transfer, cross-framework);
    store transfer/<model> groups in RESULTS and print per-model success and flip rates.

    Over the attacked rows: success = the other model's prediction on x_adv reaches the row's
    target (on the labels it shares with the reference); flip = its prediction on x_adv differs from
    its own prediction on x. Each row is first mapped into the other model's input space (layout,
    range, dtype); the mapping and the label matching used are printed and stored."""
    from onnxattack.adapt import parse_model_arg
    from onnxattack.labelmatch import read_label_map
    from onnxattack.transfer import ReadAs, run_transfer

    if top_k is not None and top_k < 1:
        raise ConfigError("top_k", f"must be an integer of at least 1, got {top_k}")
    read_as = ReadAs(scores, threshold, top_k, read_label_map(label_map), by_position)
    rates = run_transfer(results, [parse_model_arg(model) for model in models], device=device, read_as=read_as)
    if as_json:
        click.echo(json.dumps(rates))
        return
    for name, rate in rates.items():
        click.echo(f"{name}: success {rate['success_rate']:.1%}, flip {rate['flip_rate']:.1%} "
                   f"over {rate['attacked']} attacked inputs")
        click.echo(f"    input: {rate['input_mapping']}")
        click.echo(f"    labels: {rate['label_match']}")
        if rate["runtime"] != "onnxruntime":
            click.echo(f"    judged by: {rate['runtime_detail']}")


@main.command(epilog=EXIT_CODES)
@click.argument("reference", metavar="REF.onnx[:layout=..,range=..]")
@click.argument("inputs", type=click.Path())
@click.option("--model", "models", multiple=True, metavar="FILE[:layout=nchw|nhwc,range=LO:HI,runtime=NAME]",
              help="Another deployment of the model (repeatable); its input layout and range are inferred, or "
                   "stated after the path, and runtime=openvino judges it in OpenVINO.")
@click.option("--variants", metavar="V1,V2,...", help="Variants of REF to make and check: int8 (static QDQ, "
              "calibrated on INPUTS), int8-dynamic, fp16 (the 'variants' extra), ort-basic, ort-all; openvino, "
              "openvino-f32: REF's own file judged by OpenVINO (the 'openvino' extra).")
@click.option("--keep-variants", "keep_variants", type=click.Path(file_okay=False),
              help="Folder to keep the variant files in (default: made for the check, then removed).")
@click.option("--label-map", "label_map", type=click.Path(dir_okay=False),
              help="JSON object: REF's label names -> the other models' (equal names match without it).")
@click.option("--match-labels-by-position", "by_position", is_flag=True,
              help="Match labels by index instead of by name (equal counts needed).")
@click.option("--disagree", "pairs", multiple=True, metavar="A:B",
              help="Search members A and B (named as in the matrices: REF's file stem, a variant's name, a --model's "
                   "stem) for the smallest change of each input after which they predict different label sets "
                   "(method disagree, judged by onnxruntime); repeatable.")
@pair_method_options
@attack_options
@handle_errors
def crosscheck(reference: str, inputs: str, out: str, models: tuple[str, ...], variants: str | None,
               keep_variants: str | None, label_map: str | None, by_position: bool, pairs: tuple[str, ...],
               as_json: bool, quiet: bool, **options) -> None:
    """One model, every deployment of it, in one matrix: REF, its --variants and the other --model
    files are each attacked on INPUTS (in REF's input format, mapped into each model's input), and
    OUT (HDF5) holds the clean agreement matrix (share of inputs with equal predicted label sets on
    shared labels; largest score difference) and the transfer matrix (row: adversarial inputs crafted
    on that model; column: judged by onnxruntime on that model; diagonal: its own success).
    --resume reuses every finished per-model run."""
    from onnxattack.adapt import parse_model_arg
    from onnxattack.crosscheck import format_crosscheck, run_crosscheck
    from onnxattack.labelmatch import read_label_map
    from onnxattack.transfer import ReadAs
    from onnxattack.variants import parse_variants

    pair_method = _pair_method_from(options)
    config = _config_from(options)
    read_as = ReadAs(config.scores, config.threshold, config.top_k, read_label_map(label_map), by_position)
    announce = None if quiet or as_json else (lambda name: click.echo(f"attacking {name} ...", err=True))
    summary = run_crosscheck(parse_model_arg(reference), inputs, out, config,
                             [parse_model_arg(model) for model in models], parse_variants(variants), keep_variants,
                             read_as, on_member=announce, pairs=list(pairs), pair_method=pair_method)
    click.echo(json.dumps(summary) if as_json else format_crosscheck(summary))


@main.command(epilog=EXIT_CODES)
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--png", type=click.Path(dir_okay=False), help="Write a figure: examples and the norm histogram.")
@click.option("--html", type=click.Path(dir_okay=False),
              help="Write one self-contained HTML page (.html; no script, nothing fetched): for a crosscheck file "
                   "its matrices as heatmaps, examples judged on every model, mappings, label matching, settings; "
                   "for a result file its summary, examples and settings.")
@click.option("--examples", type=click.IntRange(1, 100), default=4, show_default=True,
              help="Examples in --png / --html (per attacked model of a crosscheck file).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def report(results: str, png: str | None, html: str | None, examples: int, as_json: bool) -> None:
    """Print the summary of RESULTS again, from the file alone (a result file or a crosscheck file)."""
    from onnxattack.report import figure_path, format_summary, summarize, write_figure
    from onnxattack.report_html import check_html_output, write_html
    from onnxattack.report_views import is_crosscheck, read_check, summarize_check

    crosscheck = is_crosscheck(results)
    if png and crosscheck:
        raise BadInputError("--png draws an attack result file; a crosscheck file's report is --html PAGE.html")
    if png:
        png = str(check_image_output(figure_path(png), inputs=(results,), overwrite=True))  # before any work
    if html:
        html = str(check_html_output(html, inputs=(results,)))
    if crosscheck:
        from onnxattack.crosscheck import format_crosscheck

        summary = summarize_check(read_check(results, 0))
        text = format_crosscheck(summary)
    else:
        summary = summarize(results)
        text = format_summary(summary)
    if png:
        summary["png"] = str(write_figure(results, png, examples))
    if html:
        summary["html"] = str(write_html(results, html, examples))
    click.echo(json.dumps(summary, default=str) if as_json else text)
    if png and not as_json:
        click.echo(f"figure: {summary['png']}")
    if html and not as_json:
        click.echo(f"page: {summary['html']}")


@main.command(epilog=EXIT_CODES)
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="Merged result file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@handle_errors
def merge(shards: tuple[str, ...], out: str, overwrite: bool, as_json: bool) -> None:
    """Merge the shard files of one run (attack --shard I/N) into OUT, the single-run layout.

    Refused (exit 2) when the shards differ in model, method, target, parameters, seed or inputs,
    or when a row is missing or in two shards (the message names the rows)."""
    from onnxattack.merge import merge_shards
    from onnxattack.report import format_summary, summarize

    summary = summarize(merge_shards(list(shards), out, overwrite=overwrite))
    click.echo(json.dumps(summary, default=str) if as_json else format_summary(summary))


@main.command(epilog=EXIT_CODES)
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="The .npz to write.")
@click.option("--only-success", is_flag=True, help="Keep only the rows whose attack succeeded.")
@click.option("--eps", metavar="VALUE", help="A curve file: the epsilon whose run to export (as its group "
                                             "eps/<value> is named).")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@handle_errors
def export(results: str, out: str, only_success: bool, eps: str | None, overwrite: bool) -> None:
    """Write the rows of RESULTS to a .npz (one array per dataset, `index` = input row, `attrs` = the
    file's attributes as JSON, transfer/<model>/<column> for each validated model), for users without
    HDF5."""
    from onnxattack.dataset import export_npz

    path, rows = export_npz(results, out, only_success=only_success, overwrite=overwrite, eps=eps)
    click.echo(f"{path}: {rows} rows")


@main.command(epilog="Exit codes: 0 stopped, 2 the socket's path is taken or not private.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), default=None,
              help="Where to listen (default: $ONNXATTACK_SERVER, else $XDG_RUNTIME_DIR/onnxattack/server.sock "
                   "or /tmp/onnxattack-UID/server.sock).")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Stop after this many seconds without a command (0: never).")
def serve(socket_path: str | None, idle_timeout: float) -> None:
    """Keep torch and the rest imported and run this user's `onnxattack` commands in forks of this process.

    While it runs, `onnxattack attack ...` (and every other command) started by the same user, with the same
    install and the same import-time settings (OMP_*, CUDA_*, ...), is handed to it and starts its first step
    ~2 s sooner; output, exit codes and files are those of a run in its own process. Set ONNXATTACK_SERVER=off
    to run a command in its own process. Stop with Ctrl-C.
    """
    from .serve import ServeError, preload
    from .serve import serve as serve_forever

    chosen = warm.chosen_socket()
    path = Path(socket_path) if socket_path else (chosen or warm.default_socket())
    preload()
    try:
        serve_forever(path.absolute(), idle_timeout, lambda line: click.echo(f"onnxattack serve: {line}", err=True),
                      run_in_child, INTERRUPT_TAKEN)
    except ServeError as exc:
        _fail(str(exc), 2)
    except OSError as exc:
        _fail(f"cannot listen on {path}: {exc.strerror or exc}", 2)


def run_in_child(argv: list[str]) -> int:
    """A command handed to `onnxattack serve`, run in its forked child; the child ends with os._exit."""
    try:
        main.main(args=argv, prog_name="onnxattack")
        code: object = 0
    except SystemExit as done:
        code = done.code
    if code is None:
        code = 0
    if not isinstance(code, int) or isinstance(code, bool):
        click.echo(str(code), err=True)
        code = 1
    settle()
    return code


@main.group(epilog=EXIT_CODES)
def zoo() -> None:
    """Reference models trained from data that packages ship, built into a user cache folder
    (ONNXATTACK_HOME overrides it)."""


@zoo.command("inputs", epilog=EXIT_CODES)
@click.argument("name")
@click.option("--count", type=int, default=32, show_default=True, help="How many test inputs.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="The .npy to write (.npz, keyed by input name, for a model with several inputs: topics-text).")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@handle_errors
def zoo_inputs(name: str, count: int, out: str, overwrite: bool) -> None:
    """Write COUNT held-out test inputs of zoo model NAME to a .npy (.npz), ready for `attack`."""
    from onnxattack.zoo.sample_inputs import write_inputs

    path, rows = write_inputs(name, count, Path(out), overwrite)
    click.echo(f"{rows} test inputs of {name} -> {path}")


@zoo.command("path")
@click.argument("name")
@handle_errors
def zoo_path(name: str) -> None:
    """Print where zoo model NAME is (or will be) built."""
    from onnxattack.zoo.registry import MODELS, model_path

    if name not in MODELS:
        _fail(f"unknown zoo model {name!r} (known: {', '.join(MODELS)})", 2)
    click.echo(str(model_path(name)))


@zoo.command("list")
def zoo_list() -> None:
    """List the zoo's models and whether they are built."""
    from onnxattack.zoo.registry import MODELS, model_path

    for spec in MODELS.values():
        path = model_path(spec.name)
        state = f"built: {path}" if path.exists() else "not built"
        click.echo(f"{spec.name}\n    {spec.description}\n    {state}")


@zoo.command("build", epilog=EXIT_CODES)
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Rebuild even when the file exists.")
@handle_errors
def zoo_build(names: tuple[str, ...], force: bool) -> None:
    """Train and export NAMES (all when none); print clean test metrics."""
    from onnxattack.zoo.build import build
    from onnxattack.zoo.registry import MODELS

    unknown = [name for name in names if name not in MODELS]
    if unknown:
        _fail(f"unknown zoo model(s) {', '.join(unknown)} (known: {', '.join(MODELS)})", 2)
    for name in names or tuple(MODELS):
        built = build(name, force=force)
        metrics = ", ".join(f"{key} {value:.3f}" for key, value in built.metrics.items())
        click.echo(f"{name}: {built.path} ({metrics})")


def entry() -> None:
    """The `onnxattack` process (console script, `python -m onnxattack.cli.main`): the command, then
    fast_exit.exit_now (no interpreter teardown). In-process callers (click's CliRunner) use `main`."""
    try:
        main()
    except SystemExit as done:
        exit_now(done.code)
    exit_now(0)


if __name__ == "__main__":
    entry()
