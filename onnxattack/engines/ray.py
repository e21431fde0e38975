"""The Ray engine: one actor per shard, each running the single-process pipeline on its rows.

Shard i of K is written to OUT.shard-i-of-K.h5 next to OUT (merge.shard_path) and always resumed when
it exists (its identity is checked as for --resume), so a worker that Ray restarts after a crash, and a
rerun of the whole command after the driver died, continue where each shard stopped. When every shard is
complete they are merged into OUT (merge.merge_shards) and deleted.

Paths must be readable and writable at the same place on every node (a shared filesystem), and
onnxattack installed there; the actors get absolute paths.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import AttackConfig
from ..errors import BadInputError, ConfigError, OnnxAttackError, UnsupportedModelError
from ..inputs import open_inputs
from ..merge import merge_shards, shard_path
from ..pipeline import Progress, run_local
from ..results import check_output_path

RESTARTS = 3  # per worker: Ray restarts a killed actor and retries its shard, which resumes from its file
_POLL_S = 0.5


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BadInputError("--engine ray needs Ray: pip install onnxattack[ray]") from None
    return ray


class ProgressBoard:
    """A Ray actor the workers report to after every batch; the driver reads the sums."""

    def __init__(self) -> None:
        self.shards: dict[int, tuple[int, int, int]] = {}

    def update(self, shard: int, done: int, successes: int, attacked: int) -> None:
        self.shards[shard] = (done, successes, attacked)

    def totals(self) -> tuple[int, int, int]:
        done, successes, attacked = (sum(values) for values in zip((0, 0, 0), *self.shards.values(), strict=True))
        return done, successes, attacked


class ShardWorker:
    """A Ray actor that attacks one shard into its own file (resuming it if present)."""

    def run(self, model: str, inputs: str, path: str, config: AttackConfig, board: Any) -> dict[str, Any]:
        assert config.shard is not None
        index = config.shard[0]
        config = replace(config, resume=Path(path).exists(), overwrite=False)

        last: list[int] = []

        def report(done: float, total: int, successes: int, attacked: int) -> None:
            if not last or int(done) != last[-1]:  # whole rows only: one message per row at most
                last.append(int(done))
                board.update.remote(index, int(done), successes, attacked)

        try:
            run_local(model, inputs, path, config, progress=report)
        except OnnxAttackError as exc:  # sent back as plain data: the driver raises it as the same kind
            return {"error": str(exc), "exit_code": exc.exit_code, "field": getattr(exc, "field", None)}
        return {"pid": os.getpid()}


def _absolute(config: AttackConfig) -> AttackConfig:
    """The workers' working folder is not ours: file options become absolute paths."""
    files: dict[str, Any] = {name: str(Path(value).resolve()) for name in ("target_file", "labels_file")
             if (value := getattr(config, name)) is not None}
    return replace(config, **files)


def _worker_count(ray: Any, config: AttackConfig) -> int:
    if config.workers is not None:
        return config.workers
    resources = ray.cluster_resources()
    if config.gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) / config.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1)))


def _raise(outcome: dict[str, Any]) -> None:
    message, code, field = outcome["error"], outcome["exit_code"], outcome.get("field")
    if field:
        raise ConfigError(field, message)
    raise {2: BadInputError, 3: UnsupportedModelError}.get(code, OnnxAttackError)(message)


def run_ray(model_path: str | os.PathLike, inputs_path: str | os.PathLike, out_path: str | os.PathLike,
            config: AttackConfig, progress: Progress | None = None) -> Path:
    """Attack on a Ray cluster (config.address, or a local one started here) with config.workers actors;
    returns OUT, merged from the shards, identical row for row to a single-process run."""
    out = Path(out_path).resolve()
    check_output_path(out, resume=config.resume, overwrite=config.overwrite,
                      inputs=(model_path, inputs_path, config.target_file, config.labels_file))
    if config.resume and out.exists():
        return out  # the shards were merged: the run is complete
    source = open_inputs(inputs_path, config.key, config.image_layout, config.image_scale)
    count = source.count if config.limit is None else min(source.count, config.limit)
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=config.address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    try:
        return _run_on_cluster(ray, Path(model_path).resolve(), Path(inputs_path).resolve(), out, count,
                               _absolute(config), progress)
    finally:
        if started_here:
            ray.shutdown()


def _run_on_cluster(ray: Any, model: Path, inputs: Path, out: Path, count: int, config: AttackConfig,
                    progress: Progress | None) -> Path:
    shards = _worker_count(ray, config)
    paths = [shard_path(out, index, shards) for index in range(shards)]
    if config.overwrite:
        for path in paths:
            path.unlink(missing_ok=True)
    local = replace(config, engine="local", address=None, workers=None, gpus_per_worker=0.0)
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    worker_class = ray.remote(num_cpus=1, num_gpus=config.gpus_per_worker, max_restarts=RESTARTS,
                              max_task_retries=RESTARTS)(ShardWorker)
    workers = [worker_class.remote() for _ in range(shards)]
    running = {worker.run.remote(str(model), str(inputs), str(path), replace(local, shard=(index, shards)), board):
               index for index, (worker, path) in enumerate(zip(workers, paths, strict=True))}
    outcomes: dict[int, dict[str, Any]] = {}
    pending = list(running)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_S)
            for ref in ready:
                try:
                    outcomes[running[ref]] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise OnnxAttackError(f"the worker of shard {running[ref]}/{shards} failed "
                                          f"{RESTARTS + 1} times ({type(exc).__name__}); rerun the command "
                                          f"to resume every shard") from None
            if progress:
                progress(*_sum_progress(ray, board, count))
    finally:
        for actor in (*workers, board):
            ray.kill(actor)
    for index in sorted(outcomes):
        if "error" in outcomes[index]:
            _raise(outcomes[index])
    merged = merge_shards(paths, out, overwrite=config.overwrite)
    for path in paths:
        path.unlink(missing_ok=True)
    return merged


def _sum_progress(ray: Any, board: Any, count: int) -> tuple[int, int, int, int]:
    done, successes, attacked = ray.get(board.totals.remote())
    return done, count, successes, attacked

