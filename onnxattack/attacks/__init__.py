"""The paper's four attacks behind one interface, and a registry by method name."""

from __future__ import annotations

from .base import Attack, AttackResult, Victim
from .ml_cw import MLCarliniWagner
from .ml_deepfool import MLDeepFool
from .rank1 import RankI
from .rank2 import RankII

METHODS: dict[str, type[Attack]] = {
    MLCarliniWagner.name: MLCarliniWagner,
    MLDeepFool.name: MLDeepFool,
    RankI.name: RankI,
    RankII.name: RankII,
}

__all__ = ["Attack", "AttackResult", "Victim", "METHODS", "MLCarliniWagner", "MLDeepFool", "RankI", "RankII"]
