"""The converted graph run as a TorchScript trace: no per-node Python dispatch in the attack's hot loop.

onnx2torch's graph calls one Python module per ONNX node, and every Shape -> Gather -> Concat ->
Reshape chain an exporter leaves is recomputed on each call; on a small attention model that is
2-3x the fwd+bwd time of the same function written natively (bench/overhead.py, graph_overhead).
torch.jit.trace records the aten ops once. A trace is specialised to the shapes it saw, so:

- one trace per batch-size bucket (1, 2, 3, 4, 6, 8, 12, 16, 24, ...): a batch is padded to its
  bucket with copies of its last row and the padding cut from the output (a shrinking search
  traces at most two buckets per doubling, and computes at most 1.5x the rows it needs);
- each new trace is checked before use, on the batch itself and on a second batch of other values:
  scores and input gradients against the untraced graph; any difference beyond the tolerance, or an
  exception while tracing (data-dependent control flow, ops the tracer cannot record), leaves the
  untraced graph in charge for good;
- the first trace is timed against the untraced graph before it is checked (fwd+bwd, interleaved, the
  fastest of `_TIMING_REPEATS` each, or of two when the trace is no faster at all by then): when it does
  not save `MIN_SAVING` of the time, tracing is switched off unchecked (a conv net whose nodes are few and
  large gains nothing and would pay for padding; the [187, 96] tagger of bench/large_inputs.py spent
  310 ms of its first call on a trace it then dropped when the trace was checked first, 140 ms now).
Graphs holding control flow (If, Loop, Scan) or data-dependent shapes are never traced.
"""

from __future__ import annotations

import warnings

import onnx
import torch

from .compare import agrees, fastest_passes, scores_and_gradient

UNTRACEABLE_OPS = frozenset({"If", "Loop", "Scan", "NonZero", "Unique", "Compress", "NonMaxSuppression",
                             "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                             "Multinomial", "Bernoulli", "Dropout", "SequenceConstruct", "SplitToSequence"})
MIN_SAVING = 0.25  # the trace must take at most 75% of the untraced fwd+bwd time: a wide margin, so load noise
# cannot flip the choice for a graph the trace hardly changes (a conv net: ~1.0x), whose runs then stay bit-identical
_TIMING_REPEATS = 5
_WARMUP_RUNS = 3  # TorchScript's profiling executor runs a trace slowly at first: the attention tagger's
# (bench/overhead.py) takes 40-120 ms for each of its first three fwd+bwd passes, 1.3-2.8 ms from the fourth
# (the untraced graph: ~3 ms)


def bucket(rows: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... that holds `rows`."""
    size = 1
    while True:
        for candidate in (size, size * 3 // 2):
            if candidate >= rows:
                return max(candidate, 1)
        size *= 2


def traceable(model: onnx.ModelProto) -> bool:
    return not any(node.op_type in UNTRACEABLE_OPS for node in model.graph.node)


def _padded(x: torch.Tensor, size: int) -> torch.Tensor:
    missing = size - x.shape[0]
    return x if missing <= 0 else torch.cat([x, x[-1:].expand(missing, *x.shape[1:])])


class TracedGraph(torch.nn.Module):
    """graph(x), computed by a checked trace per batch-size bucket while tracing pays (see the module doc)."""

    def __init__(self, graph: torch.nn.Module, tolerance: float = 1e-4, gradient_tolerance: float = 1e-3,
                 min_saving: float = MIN_SAVING) -> None:
        super().__init__()
        self.graph = graph
        self.min_saving = min_saving
        self.tolerance = tolerance
        self.gradient_tolerance = gradient_tolerance
        self.traces: dict[tuple, torch.jit.ScriptModule] = {}
        self.enabled = True
        self.status = "not traced yet"  # why the graph runs traced or not (bench and tests read it)
        self.timing: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or x.dim() == 0 or not x.is_floating_point() or x.shape[0] == 0:
            return self.graph(x)
        rows = x.shape[0]
        size = bucket(rows)
        key = (size, tuple(x.shape[1:]), x.dtype, x.device)
        trace = self.traces.get(key)
        if trace is None:
            trace = self._trace(_padded(x.detach(), size), key)
            if trace is None:
                return self.graph(x)
        return trace(_padded(x, size))[:rows]

    def _disable(self, why: str) -> None:
        self.enabled = False
        self.traces.clear()
        self.status = why

    def _trace(self, x: torch.Tensor, key: tuple) -> torch.jit.ScriptModule | None:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                trace = torch.jit.trace(self.graph, x, check_trace=False)
            with torch.enable_grad():  # the first call may come under no_grad; the checks take gradients
                if not (self.traces or self._pays(trace, x)):  # timed first: a trace that does not pay is not checked
                    return None
                if not self._agrees(trace, x):
                    self._disable("untraced: the trace differs from the graph (scores or input gradients)")
                    return None
        except Exception as exc:  # the tracer cannot record this graph: it keeps running untraced
            self._disable(f"untraced: tracing failed ({type(exc).__name__})")
            return None
        self.traces[key] = trace
        self.status = "traced"
        return trace

    def _agrees(self, trace: torch.jit.ScriptModule, x: torch.Tensor) -> bool:
        other = (x.flip(0) * 0.75 + x * 0.25) if x.shape[0] > 1 else x * 0.9  # other values, same shape
        generator = torch.Generator(device="cpu").manual_seed(0)
        for batch in (x, other):
            with torch.no_grad():
                shape = self.graph(batch).shape
            weights = torch.rand(shape, generator=generator).to(batch.device, batch.dtype)
            if not agrees(self.graph, trace, batch, self.tolerance, self.gradient_tolerance, weights):
                return False
        return True

    def _pays(self, trace: torch.jit.ScriptModule, x: torch.Tensor) -> bool:
        """Interleaved fwd+bwd timings of the untraced graph and the trace on the first batch."""
        for _ in range(_WARMUP_RUNS):  # TorchScript optimises a trace over its first runs
            scores_and_gradient(trace, x)
        # no faster at all after two rounds: far from the saving asked for, stop timing
        self.timing = fastest_passes({"graph": self.graph, "trace": trace}, x, _TIMING_REPEATS,
                                     settled=lambda best: best["trace"] >= best["graph"])
        if self.timing["trace"] > (1 - self.min_saving) * self.timing["graph"]:
            self._disable(f"untraced: the trace did not pay ({self.timing['trace'] * 1e3:.2f} ms vs "
                          f"{self.timing['graph'] * 1e3:.2f} ms per fwd+bwd of {x.shape[0]} rows)")
            return False
        return True
