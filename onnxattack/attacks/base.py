"""The attack interface: a victim (attack tensor + score reader + box), inputs, targets and the
criterion that judges them in; an AttackResult out.

As in Foolbox 3, the public call is final and the same for every method: it checks the inputs
against the box, restates the criterion on the attack tensor, and runs the method. Methods
implement `run` only, and ask the criterion they are given whether a sample succeeded.

A pair method (`PairAttack`: `disagree`) sees two models at once through a `PairVictim` and has no
target: what it seeks is defined by the pair (their decisions differ). It declares itself the same
way (`Declared`: options, defaults), but is no `Attack`: `attack --method` never offers it.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import BadInputError
from ..scores import Criterion
from ..types import Task
from ..victim import PairVictim, Victim, working_dtype

__all__ = ["Attack", "AttackResult", "Declared", "Epoch", "Option", "PairAttack", "PairVictim", "SetAttack", "Victim",
           "verify_input_bounds"]


@dataclass(frozen=True)
class Option:
    """A hyperparameter as a method declares it: its type (a Python type, or a tuple of choices), what it
    does, and for a boolean a `switch`: the flag name that sets it to `value` (e.g. no-early-stop)."""

    kind: Any
    help: str
    switch: str | None = None
    value: Any = None

    def flag(self, name: str) -> str:
        return "--" + (self.switch or name.replace("_", "-"))


@dataclass
class AttackResult:
    """Per sample: the adversarial input, torch's verdict, iterations used, the norms, and the cost.

    model_calls: passes through the model per row, forward and backward each counting 1 (a
    forward+backward of a row is 2; a Jacobian by one vectorised backward is 2; L separate
    backward passes are 1 + L). Machine-independent: compare methods and settings by it.
    """

    x_adv: torch.Tensor
    success: torch.Tensor  # bool [N], judged on the torch graph; the pipeline re-judges in onnxruntime
    iterations: torch.Tensor  # int [N]
    l2: torch.Tensor
    linf: torch.Tensor
    model_calls: torch.Tensor  # int64 [N]

    @classmethod
    def from_inputs(cls, x: torch.Tensor, x_adv: torch.Tensor, success: torch.Tensor,
                    iterations: torch.Tensor, model_calls: torch.Tensor | None = None) -> AttackResult:
        delta = (x_adv - x).flatten(1)
        calls = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if model_calls is None else model_calls
        return cls(x_adv=x_adv.detach(), success=success, iterations=iterations,
                   l2=delta.norm(dim=1), linf=delta.abs().amax(dim=1), model_calls=calls.long())


def verify_input_bounds(x: torch.Tensor, box: tuple[float, float]) -> None:
    """Inputs must be finite and inside the box the attack keeps them in."""
    if x.numel() == 0:
        return
    finite = torch.isfinite(x.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise BadInputError(f"input row {row} holds NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < box[0] or high > box[1]:
        raise BadInputError(f"inputs span [{low:g}, {high:g}], outside the box [{box[0]:g}, {box[1]:g}]")


class Declared:
    """What every method declares: its name, task, hyperparameters (the constructor's keywords, with
    their defaults) and the help text of those offered as options (merged down the class hierarchy)."""

    name: ClassVar[str]
    task: ClassVar[Task]
    options: ClassVar[dict[str, Option]] = {}

    def params(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if not key.startswith("_")}

    @classmethod
    def default_values(cls) -> dict[str, Any]:
        """Every hyperparameter the constructor takes, with its default (the one source of default values)."""
        return {name: parameter.default for name, parameter in inspect.signature(cls).parameters.items()
                if parameter.default is not inspect.Parameter.empty}

    @classmethod
    def declared_options(cls) -> dict[str, Option]:
        """The hyperparameters offered as options (max_iter is every method's --max-iter, not listed)."""
        declared: dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            declared.update(getattr(klass, "options", {}) if issubclass(klass, Declared) else {})
        taken = cls.default_values()
        return {name: option for name, option in declared.items() if name in taken and name != "max_iter"}


class Attack(Declared, ABC):
    """One method. Subclasses hold their hyperparameters and implement `run`.

    A method declares what it needs and takes, and everything around it (the CLI's options and help,
    `curve`, the pipeline's checks) is derived from the declarations: `task` (which targets and
    criterion), `budgeted` (it works within --eps / --norm), `needs_torch_gradients` (it refuses
    gradients estimated from onnxruntime queries), `queries_only` (a black box: it sees onnxruntime's
    scores through a query-counting victim, never a torch graph, even where one exists),
    `learns_from_set` (it learns from the whole input set before any row: no shards), `discrete` (it
    attacks an integer token-id input by substitution, cut at the graph's embedding lookup), and
    `options`: a help text per hyperparameter (merged down the class hierarchy; hyperparameters without
    one are library-only)."""

    default_target: ClassVar[str] = "hide-single"  # what target 'auto' means for this method
    budgeted: ClassVar[bool] = False
    needs_torch_gradients: ClassVar[bool] = False
    queries_only: ClassVar[bool] = False
    learns_from_set: ClassVar[bool] = False
    discrete: ClassVar[bool] = False  # it substitutes token ids (the victim is a tokens.TokenVictim)

    def __call__(self, victim: Victim, x: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> AttackResult:
        """Attack a batch: x [N, ...] inside the box, target [N, L] of 0/1 (1 = must be positive,
        or in the target set), criterion on the model's real output (as onnxruntime judges)."""
        if criterion.task is not self.task:
            raise BadInputError(f"{self.name} attacks {self.task.value} targets, the criterion is "
                                f"for {criterion.task.value}")
        verify_input_bounds(x, victim.box)
        work = working_dtype(x.dtype)  # half-precision inputs are attacked in float32, handed back as given
        result = self.run(victim.working(x.dtype), x.to(work), target, criterion.in_attack_space(victim.reader))
        result.x_adv = result.x_adv.to(x.dtype)
        return result

    @abstractmethod
    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> AttackResult:
        """The method itself; `criterion` is stated on the attack tensor."""


class PairAttack(Declared, ABC):
    """A method on two models at once (A, B): what it seeks is defined by the pair, not by a target.
    `needs_torch_gradients`: it refuses a member whose gradients are estimated from onnxruntime queries.
    The call is final: the inputs are checked against the pair's box, then `run`."""

    needs_torch_gradients: ClassVar[bool] = False

    def __call__(self, pair: PairVictim, x: torch.Tensor) -> AttackResult:
        """x [N, ...]: rows in the reference's input format, inside `pair.box`; torch's verdict per row in
        the result (the caller judges in onnxruntime)."""
        verify_input_bounds(x, pair.box)
        result = self.run(pair, x.to(working_dtype(x.dtype)))
        result.x_adv = result.x_adv.to(x.dtype)
        return result

    @abstractmethod
    def run(self, pair: PairVictim, x: torch.Tensor) -> AttackResult:
        """The method itself."""


# One pass over an input set: (attacked rows x [m, ...], their targets [m, L]) per batch.
Epoch = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


class SetAttack(Attack):
    """A method that learns from the whole input set before any input is attacked (a universal
    perturbation): the pipeline calls `fit` over every batch first, stores what it learnt, and a
    resumed run hands it back with `use`; `run` then applies it batch by batch."""

    learns_from_set = True
    needs_torch_gradients = True  # the fit steps through the whole set with autograd

    @abstractmethod
    def fit(self, victim: Victim, epoch: Epoch, batches: int, criterion: Criterion) -> torch.Tensor:
        """Learn from the set `epoch()` yields (in `batches` batches); the criterion is on the
        model's real output, as onnxruntime judges."""

    @abstractmethod
    def use(self, learnt: torch.Tensor, learning_calls: int = 0) -> None:
        """Attack with what a previous `fit` learnt (learning_calls: the model calls per row it took)."""

    @property
    @abstractmethod
    def learning_calls(self) -> int:
        """Model calls per row the last `fit` took (counted in every row's model_calls)."""
