"""How each input of a multi-input model is fed: rows along its batch dim, or one value given once.

- A pass-through input has one row per row of the batch, along its batch dim: the first, unless
  `--batch-axis NAME=AXIS` says otherwise or the dims make it plain (silero-vad's state
  [2, batch, 128] against the audio's [batch, sequence]: the one dim named like the attacked
  input's batch).
- An input given once (`--set NAME=VALUE`, a literal; `--broadcast NAME`, an array of the inputs
  file) goes unchanged to every call: a sample rate scalar, a shared table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import BadInputError
from .model import ModelInfo, TensorInfo
from .runtime import to_input_dtype


def without(info: ModelInfo, names: set[str] | frozenset[str]) -> ModelInfo:
    """The model as the attacked-input choice sees it: inputs given once or carried as state are not
    candidates."""
    return replace(info, inputs=tuple(i for i in info.inputs if i.name not in names)) if names else info


def input_batch_axes(others: tuple[TensorInfo, ...], attacked: TensorInfo,
                     explicit: Mapping[str, int]) -> tuple[dict[str, int], list[str]]:
    """The batch dim of each pass-through input, and a note for each one inferred (not the first dim).
    An input without a dim that can hold the batch (a scalar) must be given once: exit 2 saying how."""
    axes: dict[str, int] = {}
    notes: list[str] = []
    batch = attacked.shape[0] if attacked.shape else None
    for info in others:
        rank = len(info.shape)
        if info.name in explicit:
            axis = explicit[info.name]
            if not axis < rank:
                raise BadInputError(f"--batch-axis {info.name}={axis}: input {info.name!r} has shape "
                                    f"{list(info.shape)} ({rank} dims)")
            axes[info.name] = axis
            continue
        if rank == 0:
            raise BadInputError(f"input {info.name!r} is a scalar (no batch dim): give it once with "
                                f"--set {info.name}=VALUE, or store it in the inputs file and pass --broadcast "
                                f"{info.name}")
        named = [axis for axis, dim in enumerate(info.shape) if isinstance(batch, str) and dim == batch]
        if len(named) == 1 and named[0] != 0:
            axes[info.name] = named[0]
            notes.append(f"input {info.name!r} {list(info.shape)} has its batch in dim {named[0]} (named like the "
                         f"batch of {attacked.name!r}; --batch-axis {info.name}=AXIS overrides)")
        else:
            axes[info.name] = 0
    return axes, notes


def parse_set(entries: tuple[str, ...] | list[str]) -> dict[str, str]:
    """--set NAME=VALUE entries by name (the values parsed later, in the input's dtype)."""
    given: dict[str, str] = {}
    for entry in entries:
        name, equals, value = str(entry).partition("=")
        if not (equals and name and value):
            raise BadInputError(f"--set expects NAME=VALUE (e.g. sr=16000), got {entry!r}")
        if name in given:
            raise BadInputError(f"--set {name} is given twice")
        given[name] = value
    return given


def literal(text: str, name: str) -> np.ndarray:
    """A --set value: a number or a JSON list of numbers (nested for more dims); never evaluated as code."""
    try:
        value = json.loads(text)
    except ValueError:
        raise BadInputError(f"--set {name}={text}: not a number or a JSON list of numbers") from None
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise BadInputError(f"--set {name}={text}: not a number or a JSON list of numbers")
    return array


def check_given_once(info: TensorInfo, value: np.ndarray, where: str) -> np.ndarray:
    """A value given once checked against the model's input: the same number of dims, its fixed dims
    equal, finite, whole numbers for an integer input; cast to the input's dtype."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise BadInputError(f"{where}: {array.dtype} values, the model's input {info.name!r} takes {info.dtype}")
    if array.ndim != len(info.shape) or any(isinstance(d, int) and d > 0 and d != s
                                            for d, s in zip(info.shape, array.shape, strict=False)):
        raise BadInputError(f"{where} has shape {list(array.shape)}, the model's input {info.name!r} takes "
                            f"{list(info.shape)} (given once: the whole tensor, batch dim included if it has one)")
    if array.size and not np.isfinite(array.astype(np.float64)).all():
        raise BadInputError(f"{where}: NaN or infinite values")
    if not info.is_float and array.size and not np.array_equal(np.rint(array), array):
        raise BadInputError(f"{where}: the model's input {info.name!r} takes {info.dtype}, the values are not whole "
                            f"numbers")
    return to_input_dtype(array, info.dtype)


def given_once(info: ModelInfo, set_values: Mapping[str, str], broadcast: Mapping[str, np.ndarray],
               attacked: str | None = None) -> dict[str, np.ndarray]:
    """The inputs given once by name (--set literals and --broadcast arrays), checked and cast."""
    inputs = {i.name: i for i in info.inputs}
    values: dict[str, np.ndarray] = {}
    for name in [*set_values, *broadcast]:
        flag = "--set" if name in set_values else "--broadcast"
        if name not in inputs:
            raise BadInputError(f"{flag} {name}: the model has no input {name!r} (inputs: {', '.join(inputs)})")
        if name == attacked:
            raise BadInputError(f"{flag} {name}: that is the attacked input")
        if name in values:
            raise BadInputError(f"input {name!r} is given by both --set and --broadcast")
        raw = literal(set_values[name], name) if name in set_values else broadcast[name]
        values[name] = check_given_once(inputs[name], raw, f"{flag} {name}")
    return values



def replayed(info: ModelInfo, params: Mapping[str, Any], stored: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """LoadSettings overrides that feed `info` as a run fed its model (validate re-scoring a result file):
    the inputs given once that it takes (`stored`: the file's given/<name>; a file without them: the
    --set texts of `params`), the batch dims of its pass-through inputs, and a streaming run's state
    pairs, chunk, context and folding when the model has every state named."""
    takes = {i.name for i in info.inputs}
    texts = parse_set([str(entry) for entry in params.get("set") or []])
    overrides: dict[str, Any] = {
        "constants": given_once(info, {name: value for name, value in texts.items() if name in takes
                                       and name not in stored},
                                {name: value for name, value in stored.items() if name in takes}),
        "batch_axes": {name: int(axis) for name, axis in (params.get("batch_axes") or {}).items() if name in takes}}
    states: dict[str, str] = dict(params.get("state") or {})
    outputs = {o.name for o in info.outputs}
    if states and all(output in outputs and feeds in takes for output, feeds in states.items()):
        overrides.update(states=states, chunk=params.get("chunk"), per_chunk=bool(params.get("per_chunk")),
                         context=int(params.get("context") or 0), reduce=params.get("reduce") or "max")
    return overrides
