"""Shard files and their merge into one result file.

A shard is a row range [row_start, row_stop) of the input set (see pipeline.shard_rows); its file has the
result layout over those rows only, plus the attributes below. `merge_shards` checks that the files belong
to one run and cover every row exactly once, then copies their rows, in input order, into a new file with
the single-run layout and attributes (a physical concatenation: the merged file stands alone, the shard
files may be deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError
from .inputs import InputSource
from .results import (
    PASSTHROUGH_GROUP,
    ROW_DATASETS,
    RUN_IDENTITY,
    ResultFile,
    ResultWriter,
    check_output_path,
    passthrough_name,
    plain,
)

# Attributes only a shard file has; the merged file drops them.
SHARD_ATTRS = ("shard_index", "shard_count", "row_start", "row_stop", "inputs_total")
# Attributes every shard of one run must share (besides the datasets' shapes and dtypes).
SAME_RUN = tuple(key for key in RUN_IDENTITY if key not in ("n_inputs", "row_start", "row_stop")) + (
    "shard_count", "inputs_total", "inputs_fingerprint", "task", "labels", "output", "gradients")
_FINGERPRINT_ROWS = 8
_COPY_ROWS = 1024


def inputs_fingerprint(source: InputSource, count: int) -> str:
    """A cheap identity of the input set: its size, sample shape, and its first and last few rows."""
    digest = hashlib.sha256(json.dumps([count, list(source.sample_shape)]).encode())
    for start in sorted({0, max(0, count - _FINGERPRINT_ROWS)}):
        stop = min(count, start + _FINGERPRINT_ROWS)
        if stop > start:
            rows = np.ascontiguousarray(next(source.batches(start, stop, stop - start))[1])
            digest.update(str(rows.dtype).encode())
            digest.update(rows.tobytes())
    return digest.hexdigest()


def shard_attrs(source: InputSource, count: int, shard: tuple[int, int], start: int, stop: int) -> dict[str, Any]:
    """The attributes that make a result file a shard file."""
    return {"shard_index": shard[0], "shard_count": shard[1], "row_start": start, "row_stop": stop,
            "inputs_total": count, "inputs_fingerprint": inputs_fingerprint(source, count)}


def shard_path(out: str | os.PathLike, index: int, count: int) -> Path:
    """Where the Ray engine writes shard `index` of `count` for result file `out`: next to it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{index}-of-{count}{out.suffix or '.h5'}")


def _span(rows: list[int], most: int = 6) -> str:
    """'3..5, 9' for [3, 4, 5, 9] (the first `most` runs, then '...')."""
    runs: list[list[int]] = []
    for row in rows:
        if runs and row == runs[-1][1] + 1:
            runs[-1][1] = row
        else:
            runs.append([row, row])
    text = [str(a) if a == b else f"{a}..{b}" for a, b in runs[:most]]
    return ", ".join(text + (["..."] if len(runs) > most else []))


def _read_shard(path: Path) -> dict[str, Any]:
    with ResultFile.open(path) as results:
        attrs = dict(results.attrs)
        missing = [key for key in ("row_start", "row_stop", "shard_index", "shard_count") if key not in attrs]
        if missing:
            raise BadInputError(f"{path} is not a shard file (no {missing[0]} attribute; written without --shard)")
        for key in ("row_start", "row_stop", "shard_index", "shard_count", "inputs_total"):
            value = attrs.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadInputError(f"{path}: attribute {key}={value!r} is not a row count")
        absent = [name for name in ROW_DATASETS if not results.has(name)]
        if absent:
            raise BadInputError(f"{path} lacks the dataset(s) {', '.join(absent)}")
        attrs["_layout"] = {name: (list(shape), dtype) for name, (shape, dtype) in results.layout().items()}
        attrs["rows_written"] = results.rows
    return attrs


def check_shards(paths: list[Path]) -> list[dict[str, Any]]:
    """The shards' attributes, ordered by first row, once they are shown to be one run covering every row
    exactly once; otherwise BadInputError naming the difference or the missing / overlapping rows."""
    if not paths:
        raise BadInputError("no shard files given")
    shards = [_read_shard(path) for path in paths]
    first = shards[0]
    for path, attrs in zip(paths[1:], shards[1:], strict=True):
        for key in (*SAME_RUN, "_layout"):
            if plain(attrs.get(key)) != plain(first.get(key)):
                what = "dataset shapes and dtypes" if key == "_layout" else key
                raise BadInputError(f"{path} is not from the same run as {paths[0]}: its {what} differ"
                                    + ("" if key in ("_layout", "labels", "params") else
                                       f" ({attrs.get(key)!r} vs {first.get(key)!r})"))
    total = int(first["inputs_total"])
    owner = np.full(total, -1, dtype=np.int64)
    for number, (path, attrs) in enumerate(zip(paths, shards, strict=True)):
        start = int(attrs["row_start"])
        done = start + min(int(attrs.get("rows_written", 0)), int(attrs["row_stop"]) - start)
        taken = np.flatnonzero(owner[start:done] >= 0) + start
        if taken.size:
            other = paths[int(owner[taken[0]])]
            raise BadInputError(f"rows {_span(taken.tolist())} are in both {other} and {path}")
        owner[start:done] = number
    missing = np.flatnonzero(owner < 0)
    if missing.size:
        raise BadInputError(f"rows {_span(missing.tolist())} of {total} are in no shard file "
                            f"(a shard is missing or unfinished: rerun it with --resume)")
    order = sorted(range(len(paths)), key=lambda i: int(shards[i]["row_start"]))
    return [{**shards[i], "_path": paths[i]} for i in order]


def merge_shards(paths: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check the shards (check_shards), then write their rows in input order to `out`: the single-run
    layout and attributes (`n_inputs`, `rows_written`, `complete`, ...) plus `merged_from`."""
    out = Path(out)
    shard_paths = [Path(path) for path in paths]
    if out.resolve() in {path.resolve() for path in shard_paths}:
        raise BadInputError(f"the merged file {out} would replace one of its shards")
    check_output_path(out, resume=False, overwrite=overwrite, inputs=shard_paths)
    shards = check_shards(shard_paths)
    first = shards[0]
    attrs = {key: value for key, value in first.items() if not key.startswith("_") and key not in SHARD_ATTRS
             and key not in ("created", "complete", "rows_written")}
    attrs.update(n_inputs=int(first["inputs_total"]), elapsed_s=sum(float(s.get("elapsed_s", 0.0)) for s in shards),
                 merged_from=json.dumps([s["_path"].name for s in shards]))
    layout = first["_layout"]
    partial = out.with_name(out.name + ".merging")  # renamed to `out` once complete: never a half merge
    batch_size = int(json.loads(first.get("params", "{}")).get("batch_size") or 32)
    passthrough = {passthrough_name(name.split("/", 1)[1]): (tuple(shape), np.dtype(dtype))
                   for name, (shape, dtype) in layout.items() if name.startswith(PASSTHROUGH_GROUP + "/")}
    writer = ResultWriter.create(partial, tuple(layout["x"][0]), np.dtype(layout["x"][1]),
                                 int(layout["y_target"][0][0]), attrs, rows_per_chunk=batch_size, overwrite=True,
                                 passthrough=passthrough, given=_given(shards[0]["_path"]))
    try:
        for shard in shards:
            rows = min(int(shard.get("rows_written", 0)), int(shard["row_stop"]) - int(shard["row_start"]))
            with ResultFile.open(shard["_path"]) as results:
                for start in range(0, rows, _COPY_ROWS):
                    stop = min(rows, start + _COPY_ROWS)
                    writer.append({name: results.column(name, start, stop) for name in layout})
        writer.set_attrs(complete=True)
    finally:
        writer.close()
    os.replace(partial, out)
    return out


def _given(path: Path) -> dict[str, np.ndarray]:
    """The inputs given once to a shard's run (every shard was fed the same)."""
    with ResultFile.open(path) as results:
        return results.given_inputs()
