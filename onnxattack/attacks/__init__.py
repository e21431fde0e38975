"""The paper's four attacks and their successors behind one interface, and a registry by method name.

A new method is one module here plus one line in METHODS: the command line, `curve` and the pipeline's
checks read what it declares (attacks/base.py: task, budgeted, needs_torch_gradients, learns_from_set,
options)."""

from __future__ import annotations

from .base import Attack, AttackResult, Option, PairAttack, PairVictim, SetAttack, Victim
from .disagree import Disagree
from .ml_cw import MLCarliniWagner
from .ml_deepfool import MLDeepFool
from .ml_hotflip import MLHotFlip
from .ml_hsj import MLHopSkipJump
from .ml_pgd import MLPGD
from .ml_square import MLSquare
from .mla_lp import MLALP
from .rank1 import RankI
from .rank2 import RankII
from .tkml import TkMLTargeted, TkMLUntargeted
from .universal import UniversalPerturbation, UniversalTopK

METHODS: dict[str, type[Attack]] = {
    MLCarliniWagner.name: MLCarliniWagner,
    MLDeepFool.name: MLDeepFool,
    RankI.name: RankI,
    RankII.name: RankII,
    MLPGD.name: MLPGD,
    MLALP.name: MLALP,
    MLSquare.name: MLSquare,
    MLHopSkipJump.name: MLHopSkipJump,
    TkMLUntargeted.name: TkMLUntargeted,
    TkMLTargeted.name: TkMLTargeted,
    UniversalPerturbation.name: UniversalPerturbation,
    UniversalTopK.name: UniversalTopK,
    MLHotFlip.name: MLHotFlip,
}

# Methods on two models at once (crosscheck --disagree A:B), never an `attack --method`.
PAIR_METHODS: dict[str, type[PairAttack]] = {
    Disagree.name: Disagree,
}

__all__ = ["Attack", "AttackResult", "Option", "PairAttack", "PairVictim", "SetAttack", "Victim", "METHODS",
           "PAIR_METHODS", "Disagree",
            "MLCarliniWagner", "MLDeepFool", "RankI",
           "RankII", "MLPGD", "MLALP", "MLSquare", "MLHopSkipJump",
           "TkMLUntargeted", "TkMLTargeted", "UniversalPerturbation", "UniversalTopK", "MLHotFlip"]
