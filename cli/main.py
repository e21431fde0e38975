"""onnxattack command line. Each command parses, calls the library, prints.

Exit codes: 0 done, 1 internal error, 2 bad usage or input, 3 the model cannot be handled,
130 interrupted (the result file stays readable; continue with --resume).
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import warnings
from collections.abc import Callable

import click

from onnxattack.errors import OnnxAttackError


def _fail(message: str, code: int) -> None:
    click.echo(f"onnxattack: error: {message}", err=True)
    sys.exit(code)


def handle_errors(command: Callable) -> Callable:
    """Typed library errors become one line and their exit code; Ctrl-C and SIGTERM exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return command(*args, **kwargs)
        except OnnxAttackError as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; what was written stays readable (continue with --resume)", 130)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="onnxattack")
def main() -> None:
    """Targeted multi-label adversarial attacks on any exported ONNX model.

    Models are converted to differentiable torch graphs with onnx2torch; every adversarial
    input is re-scored by onnxruntime on the original model, and that verdict is recorded.
    """


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--output", "output_name", metavar="NAME", help="Model output that holds the label scores.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False),
              help="Label names (JSON list or one per line).")
@click.option("--range", "box", nargs=2, type=float, default=(0.0, 1.0), show_default=True,
              metavar="LO HI", help="Valid input box, used for the conversion probe.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def inspect(model: str, output_name: str | None, labels_file: str | None, box: tuple[float, float],
            as_json: bool) -> None:
    """Describe MODEL: inputs, outputs, opsets, producer, labels, the score output, and whether
    its score graph converts to torch (exit code 3, naming the blocking ops, when it does not)."""
    from onnxattack.loader import inspect_model

    report = inspect_model(model, output=output_name, labels_file=labels_file, box=box)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(_format_inspect(report))
    if not report["converts"]:
        reason = report["reason"] or "the score graph does not convert"
        _fail(reason, 3)


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
        f"converts    {'yes' if report['converts'] else 'no'}"
        + (f" (max |torch - onnxruntime| = {report['fidelity']:.2g})" if report.get("fidelity") is not None else ""),
    ]
    if report["blocking_ops"]:
        lines.append(f"blocking    {', '.join(report['blocking_ops'])}")
    lines += [f"note        {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", type=click.Path())
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="Result file (HDF5).")
@click.option("--method", type=click.Choice(["ml-cw", "ml-deepfool", "rank1", "rank2"]), default="ml-cw",
              show_default=True, help="Attack method.")
@click.option("--target", default="hide-single", show_default=True,
              help="hide-single | hide-all | random | extreme | '+A,-B' (label indices or names) | "
                   "top:K[:best|random|worst] (ranking methods).")
@click.option("--target-file", type=click.Path(dir_okay=False), help="(N, L) 0/1 .npy of per-input targets.")
@click.option("--scores", type=click.Choice(["auto", "logits", "probabilities", "softmax"]), default="auto",
              show_default=True, help="How to read the score output.")
@click.option("--threshold", type=float, help="Decision threshold (default 0 on logits, 0.5 on probabilities).")
@click.option("--top-k", type=int, help="Rankers: the predicted set is the K best labels.")
@click.option("--output", "output_name", metavar="NAME", help="Model output that holds the label scores.")
@click.option("--range", "box", nargs=2, type=float, default=(0.0, 1.0), show_default=True, metavar="LO HI",
              help="Valid input box.")
@click.option("--max-iter", type=int, help="Iterations per search step (method default if absent).")
@click.option("--binary-steps", type=int, help="ML-CW / Rank I / Rank II: constant search steps.")
@click.option("--learning-rate", type=float, help="ML-CW / Rank I / Rank II: Adam learning rate.")
@click.option("--kappa", type=float, help="ML-CW / Rank I / Rank II: confidence margin on logits.")
@click.option("--overshoot", type=float, help="ML-DeepFool: margin asked beyond each boundary.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Inputs per batch.")
@click.option("--limit", type=int, help="Attack only the first N inputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random targets.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--key", help="Array name inside a .npz or HDF5 input file.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False), help="Label names file.")
@click.option("--image-layout", type=click.Choice(["chw", "hwc"]), default="chw", show_default=True,
              help="Image folders: layout of each sample.")
@click.option("--image-scale", type=float, default=1 / 255, show_default=True,
              help="Image folders: pixel values are multiplied by this.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Max |torch - onnxruntime| score difference accepted on load.")
@click.option("--resume", is_flag=True, help="Continue an interrupted result file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing result file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def attack(model: str, inputs: str, out: str, **options) -> None:
    """Attack MODEL on INPUTS and write every result to OUT (HDF5).

    INPUTS is a .npy, .npz or .h5 file, or a folder of PNG/JPEG images, in the model's own
    input format. Success is judged by onnxruntime on the original model.
    """
    from onnxattack.pipeline import AttackConfig, run_attack
    from onnxattack.report import format_summary, summarize

    extra = {name: options.pop(name) for name in ("binary_steps", "learning_rate", "kappa", "overshoot")}
    config = AttackConfig(
        method=options["method"], target=options["target"], target_file=options["target_file"],
        scores=options["scores"], threshold=options["threshold"], top_k=options["top_k"],
        output=options["output_name"], box=tuple(options["box"]), max_iter=options["max_iter"],
        batch_size=options["batch_size"], limit=options["limit"], seed=options["seed"],
        device=options["device"], resume=options["resume"], overwrite=options["overwrite"],
        labels_file=options["labels_file"], key=options["key"], tolerance=options["tolerance"],
        attack_options={k: v for k, v in extra.items() if v is not None},
        image_layout=options["image_layout"], image_scale=options["image_scale"],
    )
    bar = None

    def progress(done: int, total: int, successes: int, attacked: int) -> None:
        nonlocal bar
        if options["quiet"] or options["as_json"]:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=done, unit="input", file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)
        bar.set_postfix_str(f"success {successes}/{attacked}")

    try:
        path = run_attack(model, inputs, out, config, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(path)
    click.echo(json.dumps(summary, default=str) if options["as_json"] else format_summary(summary))


@main.command()
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--model", "models", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Another ONNX model with the same labels (repeatable).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def validate(results: str, models: tuple[str, ...], device: str, as_json: bool) -> None:
    """Re-score the adversarial inputs of RESULTS on other models (transfer, cross-framework);
    store transfer/<model> groups in RESULTS and print per-model success and flip rates."""
    from onnxattack.pipeline import run_transfer

    rates = run_transfer(results, list(models), device=device)
    if as_json:
        click.echo(json.dumps(rates))
        return
    for name, rate in rates.items():
        click.echo(f"{name}: success {rate['success_rate']:.1%}, flip {rate['flip_rate']:.1%} "
                   f"over {rate['attacked']} attacked inputs")


@main.command()
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--png", type=click.Path(dir_okay=False), help="Write a figure: examples and the norm histogram.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def report(results: str, png: str | None, as_json: bool) -> None:
    """Print the summary of RESULTS again, from the file alone."""
    from onnxattack.report import format_summary, summarize, write_figure

    summary = summarize(results)
    if png:
        summary["png"] = str(write_figure(results, png))
    click.echo(json.dumps(summary, default=str) if as_json else format_summary(summary))
    if png and not as_json:
        click.echo(f"figure: {summary['png']}")


@main.group()
def zoo() -> None:
    """Reference models trained from data that packages ship."""


@zoo.command("list")
def zoo_list() -> None:
    """List the zoo's models and whether they are built."""
    from model_zoo.registry import MODELS, model_path

    for spec in MODELS.values():
        path = model_path(spec.name)
        state = f"built: {path}" if path.exists() else "not built"
        click.echo(f"{spec.name}\n    {spec.description}\n    {state}")


@zoo.command("build")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Rebuild even when the file exists.")
@handle_errors
def zoo_build(names: tuple[str, ...], force: bool) -> None:
    """Train and export NAMES (all when none); print clean test metrics."""
    from model_zoo.build import build
    from model_zoo.registry import MODELS

    unknown = [name for name in names if name not in MODELS]
    if unknown:
        _fail(f"unknown zoo model(s) {', '.join(unknown)} (known: {', '.join(MODELS)})", 2)
    for name in names or tuple(MODELS):
        built = build(name, force=force)
        metrics = ", ".join(f"{key} {value:.3f}" for key, value in built.metrics.items())
        click.echo(f"{name}: {built.path} ({metrics})")


if __name__ == "__main__":
    main()
