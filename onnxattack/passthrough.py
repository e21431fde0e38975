"""The inputs of a multi-input model that are not attacked (a mask, metadata, a second view).

They pass through unchanged, row by row: whatever rows of the attacked input reach the model (a
batch, the rows an attack still works on, the K copies of each row a replicated Jacobian sends),
the pass-through inputs of the same rows go with them. The batch binds them (`bind`), an attack
names the sub-batch it sends (`select`, relative to the rows already selected), and the scorer and
the torch graph ask `feeds_for(m)` for what a call of m rows is fed.

Rows are held batch-first whatever the model's layout: an input whose batch is in another dim
(silero-vad's state [2, batch, 128]: `axes`) is moved there only when it is fed. Inputs given once
(`constants`: a scalar sample rate from --set, an array from --broadcast) have no rows and go to
every call unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import numpy as np
import torch


class PassThroughInputs:
    """Pass-through arrays by input name, bound per batch; empty (nothing bound) for one-input models."""

    def __init__(self, names: tuple[str, ...] = (), axes: Mapping[str, int] | None = None,
                 constants: Mapping[str, np.ndarray] | None = None) -> None:
        self.names = names  # the inputs with one row per row of the batch
        self.axes = {name: int(axis) for name, axis in (axes or {}).items() if name in names and axis}
        self.constants = {name: np.asarray(value) for name, value in (constants or {}).items()}
        self._arrays: dict[str, np.ndarray] | None = None
        self._selection: list[np.ndarray] = []

    def __bool__(self) -> bool:
        return bool(self.names or self.constants)

    @contextlib.contextmanager
    def bind(self, arrays: Mapping[str, np.ndarray]) -> Iterator[None]:
        """Calls inside the block belong to a batch whose pass-through rows are `arrays`."""
        missing = [name for name in self.names if name not in arrays]
        if missing:
            raise ValueError(f"no rows for input(s) {', '.join(missing)}")
        previous, previous_selection = self._arrays, self._selection
        self._arrays = {name: np.asarray(arrays[name]) for name in self.names}
        self._selection = []
        try:
            yield
        finally:
            self._arrays, self._selection = previous, previous_selection

    @contextlib.contextmanager
    def select(self, rows: np.ndarray | torch.Tensor) -> Iterator[None]:
        """Calls inside the block send the rows `rows` of the current selection, in that order."""
        index = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        self._selection.append(index.astype(np.int64).reshape(-1))
        try:
            yield
        finally:
            self._selection.pop()

    def _selected(self, array: np.ndarray) -> np.ndarray:
        for index in self._selection:
            array = array[index]
        return array

    def rows_for(self, m: int) -> dict[str, np.ndarray]:
        """The pass-through rows of a call of m rows: the selected rows, or each of them repeated m/n
        times in a row (a replicated Jacobian sends K consecutive copies of each row)."""
        if not self.names:
            return {}
        if self._arrays is None:
            raise RuntimeError(f"input(s) {', '.join(self.names)} were not bound to the batch")
        chosen = {name: self._selected(array) for name, array in self._arrays.items()}
        n = len(next(iter(chosen.values())))
        if m == n:
            return chosen
        if n and m % n == 0:
            return {name: np.repeat(array, m // n, axis=0) for name, array in chosen.items()}
        raise RuntimeError(f"a call of {m} rows while the pass-through inputs hold {n} rows: the attack must "
                           f"name the rows it sends (Victim.on_rows)")

    def model_layout(self, rows: Mapping[str, np.ndarray], per_sample: bool = False) -> dict[str, np.ndarray]:
        """What the model is fed for batch-first `rows`: each moved to its batch dim (per_sample: a model
        without a batch dim takes the one row as it is), and the inputs given once."""
        if per_sample:
            fed = {name: array[0] for name, array in rows.items()}
        else:
            fed = {name: np.moveaxis(array, 0, self.axes[name]) if name in self.axes else array
                   for name, array in rows.items()}
        return {**fed, **self.constants}

    def feeds_for(self, m: int) -> dict[str, np.ndarray]:
        return self.model_layout(self.rows_for(m))

    def tensors_for(self, m: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.ascontiguousarray(array)).to(device)
                for name, array in self.feeds_for(m).items()}


class BoundGraph(torch.nn.Module):
    """A multi-input torch graph seen as x -> scores: the pass-through inputs join x in the graph's order."""

    def __init__(self, graph: torch.nn.Module, order: tuple[str, ...], attacked: str,
                 passthrough: PassThroughInputs) -> None:
        super().__init__()
        self.graph = graph
        self.order = order
        self.attacked = attacked
        self.passthrough = passthrough

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        others = self.passthrough.tensors_for(x.shape[0], x.device)
        return self.graph(*(x if name == self.attacked else others[name] for name in self.order))
