"""Engines run an attack: `local` in this process (one shard or the whole input set), `ray` across a
Ray cluster (one actor per shard, merged at the end). `pipeline.run_attack` picks one from
`AttackConfig.engine`; `run` is the same call under the name the CLI has always used."""

from __future__ import annotations

from ..pipeline import Progress, run_attack

run = run_attack

__all__ = ["Progress", "run"]
