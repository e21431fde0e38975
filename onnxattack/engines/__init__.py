"""Engines run an attack: `local` in this process (one shard or the whole input set), `ray` across a
Ray cluster (one actor per shard, merged at the end)."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import AttackConfig
from ..pipeline import Progress, run_attack

__all__ = ["run"]


def run(model_path: str | os.PathLike, inputs_path: str | os.PathLike, out_path: str | os.PathLike,
        config: AttackConfig, progress: Progress | None = None) -> Path:
    """Run the attack with the engine the config names; returns the result file's path."""
    if config.engine == "ray":
        from .ray import run_ray

        return run_ray(model_path, inputs_path, out_path, config, progress)
    return run_attack(model_path, inputs_path, out_path, config, progress)
