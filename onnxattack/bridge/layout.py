"""The converted graph's 4-D weights in channels-last memory format where that is measured faster.

On the CPU, oneDNN's convolutions and torch's max-pool run much faster on NHWC data than on NCHW:
a fwd+bwd of the zoo's digits CNN 1.3-1.4x (`layout_speedup` in make bench), a [187, 96] audio tagger
1.5-1.7x (bench/large_inputs.py's, timed alone).
Converting the weights is enough: a convolution whose weight is channels-last returns channels-last
output, every later op keeps that format, and the attacked input (and so its gradient) stays as it
came (converting the input too made openwakeword's tf2onnx embedding model, NHWC and transposed in the
graph, 0.8x). Not every graph gains: that model runs 0.99x with its weights converted. So the choice
is measured, never guessed: both layouts' fwd+bwd
timed on the probe's rows repeated to `TIMING_ROWS` (a run's first batch: with the 4 rows of a probe, the
zoo CNN's channels-last saved 5% where at 32 rows it saves 30%), interleaved, fastest of `_TIMING_REPEATS`;
scores and input gradients compared on the probe; channels-last kept when it agrees and saves `MIN_SAVING`.

The two layouts' convolutions sum in different orders (results differ by ~1e-6), so every process
of a run must make the same choice: a resumed run, the shards of a Ray run or of `--shard` runs,
and a later single-process run that should equal them bit for bit. A measured choice is therefore
made once per (model, score output, attacked input, device, torch version, thread count) on this
machine and kept in `home()/layouts/<key>.json` (a lock serialises processes that start together);
every later process reads it. `--memory-format channels-last | contiguous` skips the measurement.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import LAYOUTS
from .compare import agrees, fastest_passes

MIN_SAVING = 0.15  # channels-last must take at most 85% of the NCHW fwd+bwd time
_TIMING_REPEATS = 5
TIMING_ROWS = 32  # AttackConfig.batch_size's default: the rows a default run's steps start with
# channels-last / contiguous time ratios between which the timing runs all its repeats; outside, two
# rounds decide (the rule's threshold, 1 - MIN_SAVING = 0.85, lies inside)
_CLOSE_CALL = (0.7, 1.0)
_MAX_STORED_BYTES = 4096  # a stored choice is ~150 bytes; more is not ours and is not read


@dataclass(frozen=True)
class LayoutChoice:
    graph: torch.nn.Module
    memory_format: str  # "channels-last" | "contiguous"
    why: str  # one line: what was measured or asked for


def has_4d_weights(graph: torch.nn.Module) -> bool:
    return any(tensor.dim() == 4 for tensor in (*graph.parameters(), *graph.buffers()))


def channels_last(graph: torch.nn.Module) -> torch.nn.Module:
    """A copy of the graph whose 4-D parameters and buffers are channels-last (the original is untouched)."""
    return copy.deepcopy(graph).to(memory_format=torch.channels_last)


def choose_layout(graph: torch.nn.Module, probe: torch.Tensor, requested: str, key: str,
                  tolerance: float) -> LayoutChoice:
    """The graph in the memory format asked for, or for "auto" the one measured faster (kept per `key`:
    a stored contiguous choice costs no copy of the graph)."""
    if requested == "contiguous":
        return LayoutChoice(graph, "contiguous", "contiguous (asked for)")
    if not has_4d_weights(graph):
        return LayoutChoice(graph, "contiguous", "contiguous (the graph has no 4-D weights)")
    if requested == "auto" and probe.device.type != "cpu":  # measured on the CPU only so far
        return LayoutChoice(graph, "contiguous", "contiguous (auto measures on the CPU only)")
    if requested == "auto":
        stored = _read(_stored_path(key))
        if stored is not None and stored["memory_format"] == "contiguous":
            return LayoutChoice(graph, "contiguous", stored["why"])
    candidate = _checked_copy(graph, probe, tolerance)
    if isinstance(candidate, str):
        return LayoutChoice(graph, "contiguous", candidate)
    if requested == "channels-last":
        return LayoutChoice(candidate, "channels-last", "channels-last (asked for)")
    decision = remembered(key, lambda: _measure(graph, candidate, probe))
    chosen = candidate if decision["memory_format"] == "channels-last" else graph
    return LayoutChoice(chosen, decision["memory_format"], decision["why"])


def _checked_copy(graph: torch.nn.Module, x: torch.Tensor, tolerance: float) -> torch.nn.Module | str:
    """The channels-last copy when it agrees with the graph on x (scores, input gradients), else why not."""
    try:
        candidate = channels_last(graph)
    except Exception:  # a module that cannot be copied or converted: the graph stays as it is
        return "contiguous (the graph cannot be copied to channels-last)"
    try:
        with torch.enable_grad():
            same = agrees(graph, candidate, x, tolerance, 10 * tolerance)
    except Exception:  # an op that cannot take a channels-last tensor: the graph stays as it is
        return "contiguous (the channels-last graph fails)"
    if same:
        return candidate
    return "channels-last scores or input gradients differ: kept contiguous"


def _measure(graph: torch.nn.Module, candidate: torch.nn.Module, probe: torch.Tensor) -> dict[str, str]:
    def clear(best: dict[str, float]) -> bool:  # a large model's 32-row passes take a while: stop once it is plain
        return not _CLOSE_CALL[0] < best["channels-last"] / best["contiguous"] < _CLOSE_CALL[1]

    layouts = {"contiguous": graph, "channels-last": candidate}
    x = probe.repeat((-(-TIMING_ROWS // probe.shape[0]),) + (1,) * (probe.dim() - 1))[:TIMING_ROWS]
    try:
        best = fastest_passes(layouts, x, _TIMING_REPEATS, settled=clear)
    except Exception:  # a graph that takes no other batch than the probe's (a batch size baked in)
        x = probe
        best = fastest_passes(layouts, x, _TIMING_REPEATS, settled=clear)
    pays = best["channels-last"] <= (1 - MIN_SAVING) * best["contiguous"]
    chosen = "channels-last" if pays else "contiguous"
    return {"memory_format": chosen,
            "why": (f"{chosen}: a fwd+bwd of {x.shape[0]} rows took {best['channels-last'] * 1e3:.2f} ms in "
                    f"channels-last vs {best['contiguous'] * 1e3:.2f} ms contiguous, measured "
                    f"{time.strftime('%Y-%m-%d')}")}


def layout_key(model_sha256: str, score_output: str, attack_input: str, device: torch.device) -> str:
    parts = (model_sha256, score_output, attack_input, device.type, torch.__version__, str(torch.get_num_threads()),
             f"timed at {TIMING_ROWS} rows")  # choices timed on the bare probe (4 rows) are measured again
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def layouts_dir() -> Path:
    from ..zoo.registry import home

    return home() / "layouts"


def _stored_path(key: str) -> Path:
    return layouts_dir() / f"{key}.json"


def remembered(key: str, decide: Callable[[], dict[str, str]]) -> dict[str, str]:
    """The decision stored under `key`, else decide() stored there. Processes starting together wait
    on one lock, so only the first measures; a stored decision is read even where the folder cannot be
    written. A folder that can be neither read nor written: decide() unstored."""
    path = _stored_path(key)
    folder = path.parent
    stored = _read(path)  # written by os.replace: never seen half-written
    if stored is not None:
        return stored
    with _locked(folder):
        stored = _read(path)
        if stored is not None:
            return stored
        decision = decide()
        _store(path, decision)
        return decision


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on folder/.lock, or no lock where that cannot be had (no fcntl, no folder)."""
    try:
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def _store(path: Path, decision: dict[str, str]) -> None:
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(decision))
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _read(path: Path) -> dict[str, str] | None:
    try:
        if not path.is_file():  # absent, or a device / FIFO put in its place: never opened
            return None
        with open(path, "rb") as handle:
            stored = json.loads(handle.read(_MAX_STORED_BYTES))
    except (OSError, ValueError):
        return None
    if (isinstance(stored, dict) and stored.get("memory_format") in LAYOUTS
            and isinstance(stored.get("why"), str)):
        return {"memory_format": stored["memory_format"], "why": stored["why"]}
    return None  # a damaged or foreign file is measured again and replaced
