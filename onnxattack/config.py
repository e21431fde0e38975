"""AttackConfig: every setting of a run, documented and validated in one place.

The command line takes its default values, help texts and choices from here and from the attack
registry; library errors name the field (ConfigError.field) and the CLI maps it to its flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from .attacks import METHODS, Attack
from .errors import ConfigError

SCORES_CHOICES = ("auto", "logits", "probabilities", "softmax", "labels")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
IMAGE_LAYOUTS = ("chw", "hwc")
GRADIENT_CHOICES = ("auto", "torch", "estimate")
REDUCE_CHOICES = ("max", "mean")
ENGINE_CHOICES = ("local", "ray")
LAYOUTS = ("channels-last", "contiguous")  # the converted graph's 4-D weights (bridge/layout.py)
MEMORY_FORMATS = ("auto", *LAYOUTS)  # --memory-format: auto measures which of LAYOUTS is faster
MAX_SEED = 2**63 - 1


def option_flag(name: str) -> str:
    """The command-line flag of a method hyperparameter (as the methods declare it)."""
    for method in METHODS.values():
        option = method.declared_options().get(name)
        if option is not None:
            return option.flag(name)
    return "--" + name.replace("_", "-")


def method_flags(method: str) -> list[str]:
    """The flags a method takes besides the common ones: --max-iter and its declared options."""
    return ["--max-iter", *(option.flag(name) for name, option in METHODS[method].declared_options().items())]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class AttackConfig:
    """The settings of one `attack` run. Each field's help text is the CLI's."""

    method: str = field(default="ml-cw", metadata=_help("Attack method."))
    target: str = field(default="auto", metadata=_help(
        "auto (the method's default: hide-single; tkml-u, universal-topk: hide-all) | hide-single | hide-all | "
        "random | extreme | '+A,-B' (label indices or names) | top:K[:best|random|worst] (ranking methods). "
        "tkml-u: the labels hidden must leave the top K."))
    target_file: str | None = field(default=None, metadata=_help("(N, L) 0/1 .npy of per-input targets."))
    scores: str = field(default="auto", metadata=_help("How to read the score output."))
    threshold: float | None = field(default=None, metadata=_help(
        "Decision threshold (default 0 on logits, 0.5 on probabilities)."))
    top_k: int | None = field(default=None, metadata=_help(
        "Top-k methods (rank1, rank2, tkml-t, tkml-u, universal-topk): the predicted set is the K best labels."))
    output: str | None = field(default=None, metadata=_help("Model output that holds the label scores."))
    box: tuple[float, float] | None = field(default=None, metadata=_help(
        "Valid input box: every input must lie in it, and adversarial inputs stay in it. Default: the model's "
        "input_range metadata when it declares one, else 0 1."))
    max_iter: int | None = field(default=None, metadata=_help(
        "Iterations: per constant step (ml-cw, rank1, rank2, tkml-*), steps (ml-deepfool, mla-lp, ml-pgd), "
        "epochs over the set (universal*); the method's default if absent."))
    batch_size: int = field(default=32, metadata=_help("Inputs per batch."))
    limit: int | None = field(default=None, metadata=_help("Attack only the first N inputs."))
    seed: int = field(default=0, metadata=_help("Seed of the random targets and starts (0 .. 2^63 - 1)."))
    device: str = field(default="auto", metadata=_help("Where torch runs the attack."))
    memory_format: str = field(default="auto", metadata=_help(
        "The converted graph's 4-D weights (convolutions): auto measures once per model, device and torch on this "
        "machine whether channels-last is faster and keeps the answer for every later run (a run's processes "
        "must agree: the layouts round differently); channels-last | contiguous skip the measurement."))
    resume: bool = field(default=False, metadata=_help("Continue an interrupted result file."))
    overwrite: bool = field(default=False, metadata=_help("Replace an existing result file."))
    labels_file: str | None = field(default=None, metadata=_help("Label names (JSON list or one per line)."))
    key: str | None = field(default=None, metadata=_help("Array name inside a .npz or HDF5 input file."))
    attack_input: str | None = field(default=None, metadata=_help(
        "Models with several inputs: the one perturbed (default: the only floating input). The others come from "
        "the same .npz / .h5 file, one array per input name, pass through unchanged and are stored under "
        "inputs/<name>."))
    tolerance: float = field(default=1e-4, metadata=_help(
        "Max |torch - onnxruntime| score difference accepted on load."))
    reduce: str = field(default="max", metadata=_help(
        "Score outputs [N, ..., L] (frame-level taggers): fold the middle dims by max or mean."))
    batch_axis: tuple[str, ...] = field(default=(), metadata=_help(
        "NAME=AXIS: the batch dim of a score output that is not batch-first (time-major CTC scores [T, N, L]: "
        "NAME=1; inferred when exactly one dim matches the batch size), or of a pass-through input (a state "
        "[2, N, 128]: NAME=1; inferred when one dim is named like the attacked input's batch)."))
    ctc_blank: int | None = field(default=None, metadata=_help(
        "CTC recognisers (--ctc): the blank symbol's index for the greedy decoding of the strings before and "
        "after, stored in decoded/x, decoded/x_adv (default: the model's metadata ctc_blank, else 0)."))
    set_values: tuple[str, ...] = field(default=(), metadata=_help(
        "NAME=VALUE: an input given once, passed to every call unchanged: a number or a JSON list "
        "(silero-vad: sr=16000); its dtype is the model's."))
    broadcast: tuple[str, ...] = field(default=(), metadata=_help(
        "NAME: the inputs file's array NAME is that input whole, given once (not one row per sample) and "
        "passed to every call unchanged."))
    state: tuple[str, ...] = field(default=(), metadata=_help(
        "OUT=IN: a streaming model: the state output OUT feeds input IN on the next call. Each row of the "
        "attacked input is then a whole sequence, run chunk by chunk with the state carried (zeros first, or "
        "--set IN=...); the scores of every chunk fold by --reduce, or see --per-chunk."))
    chunk: int | None = field(default=None, metadata=_help(
        "Streaming (--state): samples per call along the sequence dim (default: the model's input shape)."))
    context: int = field(default=0, metadata=_help(
        "Streaming (--state): each call starts with the previous call's last N samples (zeros before the first), "
        "so a row advances by chunk - N per call (silero-vad's own wrapper: --chunk 576 --context 64)."))
    per_chunk: bool = field(default=False, metadata=_help(
        "Streaming (--state): one label per (chunk, label) pair instead of folding the chunks by --reduce."))
    ctc: bool = field(default=False, metadata=_help(
        "CTC recognisers: per symbol, the best per-frame log-probability is the score; a symbol appears when it "
        "exceeds log 0.5."))
    gradients: str = field(default="auto", metadata=_help(
        "auto: through the torch graph; when the model cannot convert, a budgeted method (ml-pgd) runs as "
        "ml-square (a black box) and a minimal-norm one on gradients estimated from onnxruntime queries (said in "
        "a note); torch: refuse such models; estimate: always estimate."))
    max_queries: int = field(default=20_000, metadata=_help(
        "Estimated gradients and black-box methods (ml-square, ml-hsj): onnxruntime queries allowed per input, "
        "every evaluation counted (the attack stops a row there)."))
    attack_options: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "Method hyperparameters (binary_steps, learning_rate, kappa, overshoot, ...)."))
    image_layout: str = field(default="chw", metadata=_help("Image folders: layout of each sample."))
    image_scale: float = field(default=1 / 255, metadata=_help("Image folders: pixel values are multiplied by this."))
    shard: tuple[int, int] | None = field(default=None, metadata=_help(
        "Attack only shard I of N (I counts from 0): a contiguous row range cut at batch boundaries; "
        "combine the shard files with `onnxattack merge`."))
    engine: str = field(default="local", metadata=_help(
        "local: this process; ray: one Ray actor per shard, merged into OUT at the end."))
    address: str | None = field(default=None, metadata=_help(
        "Ray: address of a running cluster (default: start a local one)."))
    workers: int | None = field(default=None, metadata=_help(
        "Ray: number of workers, one shard each (default: the cluster's CPUs, or GPUs / --gpus-per-worker)."))
    gpus_per_worker: float = field(default=0.0, metadata=_help("Ray: GPUs reserved by each worker."))

    def __post_init__(self) -> None:
        self.box = None if self.box is None else _check_box(self.box)
        _choice("method", self.method, tuple(METHODS))
        _choice("scores", self.scores, SCORES_CHOICES)
        _choice("device", self.device, DEVICE_CHOICES)
        _choice("image_layout", self.image_layout, IMAGE_LAYOUTS)
        _choice("gradients", self.gradients, GRADIENT_CHOICES)
        _choice("reduce", self.reduce, REDUCE_CHOICES)
        _choice("memory_format", self.memory_format, MEMORY_FORMATS)
        _at_least("max_queries", self.max_queries, 41)  # one forward + one default gradient estimate
        for name in ("batch_size", "limit", "top_k", "max_iter"):
            _at_least(name, getattr(self, name), 1)
        _at_least("seed", self.seed, 0)
        if self.seed > MAX_SEED:
            raise ConfigError("seed", f"must be at most 2^63 - 1, got {self.seed}")
        _positive("tolerance", self.tolerance)
        _positive("image_scale", self.image_scale)
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ConfigError("threshold", f"the threshold must be a finite number, got {self.threshold}")
        if self.resume and self.overwrite:
            raise ConfigError("resume", "resume and overwrite exclude each other")
        self.shard = _check_shard(self.shard)
        self.batch_axes()  # NAME=AXIS, checked
        self.state_pairs()  # OUT=IN, checked
        _at_least("chunk", self.chunk, 1)
        _at_least("ctc_blank", self.ctc_blank, 0)
        if self.ctc_blank is not None and not self.ctc:
            raise ConfigError("ctc_blank", "applies to CTC recognisers only (--ctc)")
        _at_least("context", self.context, 0)
        streaming_only = [name for name in ("chunk", "per_chunk", "context") if getattr(self, name)]
        if streaming_only and not self.state:
            raise ConfigError(streaming_only[0], "applies to streaming models only (--state OUT=IN)")
        self._check_engine()
        self.build_attack()  # the method checks its own hyperparameters
        if METHODS[self.method].learns_from_set and (self.shard is not None or self.engine != "local"):
            raise ConfigError("shard" if self.shard is not None else "engine",
                              f"{self.method} learns one perturbation from the whole input set: run it in one "
                              f"process (no --shard, --engine local)")

    def batch_axes(self) -> dict[str, int]:
        """--batch-axis NAME=AXIS entries as a mapping."""
        axes: dict[str, int] = {}
        for entry in self.batch_axis:
            name, equals, axis = str(entry).rpartition("=")
            try:
                if not (equals and name):
                    raise ValueError
                axes[name] = int(axis)
            except ValueError:
                raise ConfigError("batch_axis", f"expected NAME=AXIS (e.g. logits=1), got {entry!r}") from None
            if axes[name] < 0:
                raise ConfigError("batch_axis", f"the axis must be 0 or more, got {entry!r}")
        return axes

    def state_pairs(self) -> dict[str, str]:
        """--state OUT=IN entries as a mapping output -> input."""
        pairs: dict[str, str] = {}
        for entry in self.state:
            output, equals, feeds = str(entry).partition("=")
            if not (equals and output and feeds):
                raise ConfigError("state", f"expected OUT=IN (e.g. stateN=state), got {entry!r}")
            if output in pairs or feeds in pairs.values():
                raise ConfigError("state", f"{entry!r}: each state output feeds one input, each input one output")
            pairs[output] = feeds
        return pairs

    def build_attack(self) -> Attack:
        """The configured attack; refuses options the method does not take."""
        attack_class = METHODS[self.method]
        accepted = attack_class.default_values()
        options = dict(self.attack_options)
        if self.max_iter is not None:
            options["max_iter"] = self.max_iter
        refused = [name for name in options if name not in accepted]
        if refused:
            raise ConfigError(refused[0], f"{', '.join(option_flag(name) for name in refused)} does not apply to "
                                          f"{self.method} (it takes {', '.join(method_flags(self.method))})")
        return attack_class(**options)

    def _check_engine(self) -> None:
        _choice("engine", self.engine, ENGINE_CHOICES)
        _at_least("workers", self.workers, 1)
        if not (isinstance(self.gpus_per_worker, (int, float)) and math.isfinite(self.gpus_per_worker)
                and self.gpus_per_worker >= 0):
            raise ConfigError("gpus_per_worker", f"must be a number of at least 0, got {self.gpus_per_worker!r}")
        if self.engine == "ray" and self.shard is not None:
            raise ConfigError("shard", "--engine ray cuts and schedules the shards itself; give --shard only "
                                       "with --engine local")
        if self.engine == "local":
            given = [name for name, value in (("address", self.address), ("workers", self.workers),
                                              ("gpus_per_worker", self.gpus_per_worker or None)) if value is not None]
            if given:
                raise ConfigError(given[0], "applies to --engine ray only")

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of a field (the CLI takes its default values from here)."""
        spec = {f.name: f for f in fields(cls)}[name]
        return spec.default

    @classmethod
    def help(cls, name: str) -> str:
        return str({f.name: f for f in fields(cls)}[name].metadata.get("help", ""))


def _check_box(box: Any) -> tuple[float, float]:
    try:
        low, high = (float(value) for value in box)
    except (TypeError, ValueError):
        raise ConfigError("box", f"the box must be two numbers LO HI, got {box!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ConfigError("box", f"{low:g} {high:g}: LO must be below HI, both finite")
    return low, high


def _check_shard(shard: Any) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise ConfigError("shard", f"expected I/N, got {shard!r}") from None
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in (index, count)):
        raise ConfigError("shard", f"expected whole numbers I/N, got {shard!r}")
    if count < 1 or not 0 <= index < count:
        raise ConfigError("shard", f"{index}/{count}: N must be at least 1 and I in 0..N-1")
    return index, count


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(name, f"unknown {name.replace('_', ' ')} {value!r} (expected one of: {', '.join(choices)})")


def _at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and (not isinstance(value, int) or value < low):
        raise ConfigError(name, f"must be an integer of at least {low}, got {value!r}")


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(name, f"must be a positive number, got {value!r}")
