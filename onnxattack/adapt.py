"""Input adaptation between two deployments of one model: a source model's rows mapped into a target
model's input space (layout, value range, dtype).

A model argument may carry what its input expects: `other.onnx:layout=nhwc,range=0:255`
(`parse_model_arg`, the one parser of that form), and the runtime that scores it (`runtime=openvino`,
runtimes.py; default onnxruntime). What is not stated is inferred:
- layout: from the two sample shapes. The candidate moves are: keep the axes, move the first axis last
  (channel-first -> channel-last: NCHW -> NHWC, [C, T] -> [T, C]), move the last axis first, and add or
  drop size-1 dims. Moves that give the target's declared shape and arrange the elements differently
  are counted (size-1 dims are added or dropped only without a move); one -> it is used; several ->
  ambiguous (exit 2 naming both shapes, asking for `layout=`); none -> impossible (exit 2). Equal shapes keep
  the axes unless a layout says otherwise. A spatial size that differs is refused: nothing is resized.
- range: the source's box (the run's --range) mapped affinely onto the target's (`range=`, else the
  target's `input_range` metadata, else the source's own).
- dtype: the target input's; an integer dtype is rounded and clipped to its range.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import BadInputError
from .runtimes import get_runtime

LAYOUTS = ("nchw", "nhwc")
_OPTION = re.compile(r"^(?P<path>.+?):(?P<options>(?:layout|range|runtime)=.*)$")


@dataclass(frozen=True)
class ModelArg:
    """A model path with what its input expects, as the user stated it (None: infer)."""

    path: str
    layout: str | None = None
    range: tuple[float, float] | None = None
    runtime: str = "onnxruntime"  # what scores it (runtimes.RUNTIMES)

    def __str__(self) -> str:
        return self.path


def _parse_range(text: str, where: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(":"))
    except ValueError:
        raise BadInputError(f"{where}: range={text!r} is not LO:HI (e.g. range=0:255)") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise BadInputError(f"{where}: range={text!r} needs finite LO < HI")
    return low, high


def parse_model_arg(text: str) -> ModelArg:
    """`FILE` or `FILE:layout=nchw|nhwc,range=LO:HI,runtime=NAME` (any key, any order). A path that exists
    as given is taken whole, so a file whose name holds ':layout=' still opens."""
    match = _OPTION.match(text)
    if match is None or Path(text).is_file():
        return ModelArg(text)
    path, options = match.group("path"), match.group("options")
    layout, box, runtime = None, None, "onnxruntime"
    for item in options.split(","):
        key, _, value = item.partition("=")
        if key == "layout":
            if value.lower() not in LAYOUTS:
                raise BadInputError(f"{text}: layout={value!r} is not one of {', '.join(LAYOUTS)}")
            layout = value.lower()
        elif key == "range":
            box = _parse_range(value, text)
        elif key == "runtime":
            runtime = get_runtime(value.lower()).name
        else:
            raise BadInputError(f"{text}: unknown model option {key!r} (expected layout=nchw|nhwc, range=LO:HI, "
                                f"runtime=NAME)")
    return ModelArg(path, layout, box, runtime)


@dataclass(frozen=True)
class Side:
    """One model's input as the mapping sees it: sample shape (symbolic dims as str/None), layout, box,
    dtype."""

    shape: tuple[int | str | None, ...]
    box: tuple[float, float]
    dtype: np.dtype
    layout: str | None = None


@dataclass(frozen=True)
class Adapter:
    """The mapping in use: axes permuted (`axes`, None: kept), reshaped to `shape` (size-1 dims added or
    dropped), values moved from box `source` to box `target`, cast to `dtype`."""

    source_shape: tuple[int, ...]
    shape: tuple[int, ...]
    axes: tuple[int, ...] | None
    source: tuple[float, float]
    target: tuple[float, float]
    dtype: np.dtype
    layouts: tuple[str | None, str | None] = (None, None)

    @property
    def identity(self) -> bool:
        return (self.axes is None and self.shape == self.source_shape and self.source == self.target
                and np.issubdtype(self.dtype, np.floating))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Rows [N, *source_shape] -> rows [N, *shape] in the target's box and dtype."""
        x = np.asarray(x, dtype=np.float64)
        if self.axes is not None:
            x = x.transpose(0, *(axis + 1 for axis in self.axes))
        x = self._rescaled(x)
        if np.issubdtype(self.dtype, np.integer):
            x = np.clip(np.rint(x), *self._integer_bounds())
        return x.astype(self.dtype)

    def _rescaled(self, x: Any) -> Any:
        """Rows (numpy or torch, axes already in the target's order) reshaped and moved into the target's box."""
        x = x.reshape(len(x), *self.shape)
        (slo, shi), (tlo, thi) = self.source, self.target
        if (slo, shi) != (tlo, thi):
            x = (x - slo) / (shi - slo) * (thi - tlo) + tlo
        return x

    def _integer_bounds(self) -> tuple[float, float]:
        """The values an integer target input can take inside its box."""
        info = np.iinfo(self.dtype)
        return max(info.min, np.ceil(self.target[0])), min(info.max, np.floor(self.target[1]))

    def on_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The same mapping on torch rows, differentiable; an integer input's rounding passes gradients
        straight through, and the rows stay in x's float dtype (the torch graph takes them so)."""
        if self.axes is not None:
            x = x.permute(0, *(axis + 1 for axis in self.axes))
        x = self._rescaled(x)
        if np.issubdtype(self.dtype, np.integer):
            rounded = torch.round(x).clamp(*self._integer_bounds())
            x = x + (rounded - x).detach()
        return x

    def describe(self) -> str:
        """One line: what is done to each row."""
        source, target = (f"{list(self.source_shape)}", f"{list(self.shape)}")
        parts = []
        if self.axes is not None:
            names = "" if self.layouts == (None, None) else f" ({self.layouts[0] or '?'} -> {self.layouts[1] or '?'})"
            parts.append(f"axes {list(self.axes)}{names}")
        if self.axes is not None or source != target:
            parts.append(f"shape {source} -> {target}")
        if self.source != self.target:
            parts.append(f"range [{self.source[0]:g}, {self.source[1]:g}] -> [{self.target[0]:g}, {self.target[1]:g}]")
        if not np.issubdtype(self.dtype, np.floating):
            parts.append(f"dtype {np.dtype(self.dtype).name} (rounded)")
        elif not parts:
            return "identity (same shape, range and a float dtype)"
        else:
            parts.append(f"dtype {np.dtype(self.dtype).name}")
        return ", ".join(parts)

    def to_json(self) -> str:
        return json.dumps({"source_shape": list(self.source_shape), "shape": list(self.shape),
                           "axes": None if self.axes is None else list(self.axes), "source_range": list(self.source),
                           "target_range": list(self.target), "dtype": np.dtype(self.dtype).name,
                           "layouts": list(self.layouts), "description": self.describe()})


def fits(shape: tuple[int, ...], declared: tuple[int | str | None, ...]) -> bool:
    """A concrete shape against a declared one (symbolic dims match any size)."""
    return len(shape) == len(declared) and all(not isinstance(want, int) or want <= 0 or want == have
                                               for have, want in zip(shape, declared, strict=True))


def _reshaped(shape: tuple[int, ...], declared: tuple[int | str | None, ...]) -> tuple[int, ...] | None:
    """`shape` with size-1 dims added or dropped so that it fits `declared` (None: it cannot)."""
    if fits(shape, declared):
        return shape
    kept = [dim for dim in shape if dim != 1]
    wanted = [dim for dim in declared if dim != 1]
    if len(kept) != len(wanted):
        return None
    out = list(kept)
    result = []
    for dim in declared:
        result.append(1 if dim == 1 else out.pop(0))
    return tuple(result) if fits(tuple(result), declared) else None


def _moves(rank: int) -> dict[str, tuple[int, ...] | None]:
    """The layout moves considered: keep, channel first -> last, channel last -> first."""
    moves: dict[str, tuple[int, ...] | None] = {}
    if rank >= 2:  # before "keep": a move and a reshape that arrange alike are named as the move
        moves["first-to-last"] = (*range(1, rank), 0)
        moves["last-to-first"] = (rank - 1, *range(rank - 1))
    moves["keep"] = None
    return moves


def _stated_move(source: str | None, target: str | None, equal: bool) -> str | None:
    """The move that stated layouts imply (None: not stated). An unstated side is taken to have the
    stated side's layout when the shapes are equal, the other layout when they differ."""
    if source is None and target is None:
        return None
    other = {"nchw": "nhwc", "nhwc": "nchw"}
    if source is None:
        source = target if equal else other[str(target)]
    if target is None:
        target = source if equal else other[str(source)]
    if source == target:
        return "keep"
    return "first-to-last" if source == "nchw" else "last-to-first"


def _arrangement(shape: tuple[int, ...], axes: tuple[int, ...] | None, out: tuple[int, ...]) -> bytes:
    """The element order a move gives (moves with the same order are one mapping)."""
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    if axes is not None:
        index = index.transpose(axes)
    return index.reshape(out).tobytes()


def plan_adapter(source: Side, target: Side, source_name: str = "the reference", target_name: str = "the model"
                 ) -> Adapter:
    """The mapping from `source` rows to `target` rows; BadInputError (one line, both shapes) when it is
    ambiguous or impossible."""
    shape = tuple(int(dim) for dim in source.shape)  # type: ignore[arg-type]
    declared = target.shape
    both = f"{source_name} takes {list(shape)}, {target_name} takes {list(declared)}"
    equal = fits(shape, declared)
    stated = _stated_move(source.layout, target.layout, equal)
    found: dict[bytes, tuple[str, tuple[int, ...] | None, tuple[int, ...]]] = {}
    for name, axes in _moves(len(shape)).items():
        if stated is not None and name != stated:
            continue
        moved = shape if axes is None else tuple(shape[axis] for axis in axes)
        out = _reshaped(moved, declared) if axes is None else (moved if fits(moved, declared) else None)
        if out is not None:
            found.setdefault(_arrangement(shape, axes, out), (name, axes, out))
    if not found:
        if stated is not None:
            raise BadInputError(f"cannot map the input: {both}, and layouts {source.layout or '?'} -> "
                                f"{target.layout or '?'} do not make one into the other")
        raise BadInputError(f"cannot map the input: {both} (no layout move or size-1 dim fits; a different size "
                            f"is not resized)")
    if equal and stated is None:
        name, axes, out = "keep", None, shape
    elif len(found) > 1:
        raise BadInputError(f"ambiguous input mapping: {both}; state the layouts, e.g. --model FILE:layout=nhwc")
    else:
        name, axes, out = next(iter(found.values()))
    layouts = (source.layout, target.layout)
    if axes is not None and layouts == (None, None) and len(shape) == 3:
        layouts = ("nchw", "nhwc") if name == "first-to-last" else ("nhwc", "nchw")
    return Adapter(shape, tuple(out), axes, source.box, target.box, np.dtype(target.dtype), layouts)
