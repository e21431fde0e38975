"""Token-id models: the embedding lookup they start with, the graph cut after it, and what a discrete
attack (ml-hotflip) sees of them.

A text model's attacked input holds token ids: no gradient flows into an integer. Its graph starts with
an embedding lookup e_t = E[x_t] (a Gather on a [vocab, dim] initializer, as torch's nn.Embedding and
optimum's exports write it). The graph is cut at that Gather's output: the torch graph runs from the
embeddings onward, so an attack gets dL/de_t and scores a swap x_t -> v by (E[v] - E[x_t]) . dL/de_t.
Every verdict stays onnxruntime's, on the real model fed the real token ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from .bridge.convert import check_fidelity, to_torch
from .bridge.normalise import (
    constants_to_initializers,
    drop_reshape_allowzero,
    fold_constants,
    inline_functions,
    prune_to,
)
from .errors import BadInputError, OnnxAttackError, UnsupportedModelError
from .model import ModelInfo, TensorInfo, choose_attack_input, graph_inputs
from .passthrough import PassThroughInputs
from .runtime import OrtScorer
from .scores import ScoreReader
from .sources import TorchGraphSource
from .victim import Victim

_SAME_VALUE_OPS = ("Cast", "Identity")  # ids may reach the Gather through these (int32 ids cast to int64)


@dataclass(frozen=True)
class Embedding:
    """The lookup a token-id input feeds: `output` = weight[ids], weight [vocab, dim]."""

    gather: onnx.NodeProto
    ids: str
    weight: np.ndarray

    @property
    def output(self) -> str:
        return str(self.gather.output[0])

    @property
    def vocab(self) -> int:
        return int(self.weight.shape[0])


def find_embedding(proto: onnx.ModelProto, ids: str) -> Embedding:
    """The Gather (axis 0) whose data is a 2-D floating initializer and whose indices are the input `ids`
    (directly or through Cast / Identity); UnsupportedModelError naming why when there is none."""
    graph = constants_to_initializers(proto).graph
    weights = {init.name: init for init in graph.initializer}
    reach = {ids}
    for node in graph.node:  # topological order: a Cast of a Cast is followed too
        if node.op_type in _SAME_VALUE_OPS and node.input and node.input[0] in reach:
            reach.update(node.output)
    for node in graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.input[1] in reach and node.input[0] in weights and axis == 0:
            weight = numpy_helper.to_array(weights[node.input[0]])
            if weight.ndim == 2 and weight.dtype.kind == "f":
                return Embedding(node, ids, weight)
    raise UnsupportedModelError(f"input {ids!r} feeds no embedding lookup (a Gather on a [vocab, dim] weight "
                                f"matrix) for ml-hotflip to cut the graph at; its substitutions cannot be "
                                f"scored without one")


def token_route(proto: onnx.ModelProto, info: ModelInfo, name: str | None) -> str | None:
    """'ml-hotflip' when the input `name` (else any int32 / int64 input) feeds an embedding lookup; None
    otherwise (what `inspect` reports as the attack route of such a model)."""
    names = [name] if name is not None else [i.name for i in info.inputs if np.dtype(i.dtype).kind in "iu"]
    for candidate in names:
        try:
            find_embedding(proto, choose_attack_input(info, candidate, tokens=True).name)
        except OnnxAttackError:
            continue
        return "ml-hotflip"
    return None


def vocabulary_box(proto: onnx.ModelProto, ids: str,
                   requested: tuple[float, float] | None = None) -> tuple[tuple[float, float], str]:
    """The valid range of the token ids, with a note: 0 .. vocab - 1 of the embedding they index; without
    an embedding lookup, the user's --range (substitutions are then sampled and scored by onnxruntime)."""
    try:
        vocab = find_embedding(proto, ids).vocab
    except UnsupportedModelError as exc:
        if requested is None:
            raise UnsupportedModelError(f"{exc}; give the ids' range (--range 0 VOCAB-1) to sample substitutions "
                                        f"scored by onnxruntime queries instead") from None
        low, high = int(np.ceil(requested[0])), int(np.floor(requested[1]))
        if low < 0 or high <= low:
            raise BadInputError(f"--range {requested[0]:g} {requested[1]:g} holds no token ids (0 or more)") from None
        return (float(low), float(high)), (f"input {ids!r} feeds no embedding lookup: substitutions are sampled "
                                           f"from ids {low}..{high} (--range) and scored by onnxruntime queries")
    return (0.0, float(vocab - 1)), f"token ids of {ids!r} lie in 0..{vocab - 1} (the embedding's vocabulary)"


def cut_after_embedding(proto: onnx.ModelProto, embedding: Embedding, tensor_name: str,
                        score_output: str) -> onnx.ModelProto:
    """The score graph from the embeddings onward: the lookup removed, its output a graph input
    [batch, ..., dim] (the token-id input stays where other nodes read it, e.g. a Shape)."""
    model = constants_to_initializers(inline_functions(proto))
    graph = model.graph
    kept = [node for node in graph.node if list(node.output) != list(embedding.gather.output)]
    del graph.node[:]
    graph.node.extend(kept)
    ids_value = next(value for value in graph.input if value.name == embedding.ids)
    dims = [d.dim_param or d.dim_value or "?" for d in ids_value.type.tensor_type.shape.dim]
    element = helper.np_dtype_to_tensor_dtype(embedding.weight.dtype)
    graph.input.append(helper.make_tensor_value_info(embedding.output, element, [*dims, embedding.weight.shape[1]]))
    kept_info = [value for value in graph.value_info if value.name != embedding.output]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return fold_constants(drop_reshape_allowzero(prune_to(model, tensor_name, score_output)))


class EmbeddedGraph(torch.nn.Module):
    """ids -> attack tensor through the cut graph: E[ids] joined by the ids themselves and the pass-through
    inputs in the graph's order; `embedded(vectors, ids)` takes the embeddings from the caller."""

    def __init__(self, graph: torch.nn.Module, order: tuple[str, ...], embedding: Embedding,
                 passthrough: PassThroughInputs) -> None:
        super().__init__()
        self.graph = graph
        self.order = order
        self.cut, self.ids = embedding.output, embedding.ids
        self.passthrough = passthrough
        self.weight: torch.Tensor
        self.register_buffer("weight", torch.from_numpy(embedding.weight.copy()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedded(self.weight[ids.long()], ids)

    def embedded(self, vectors: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        feeds = {**self.passthrough.tensors_for(ids.shape[0], ids.device), self.ids: ids, self.cut: vectors}
        return self.graph(*(feeds[name] for name in self.order))


@dataclass(kw_only=True)
class TokenVictim(Victim):
    """A victim whose attacked input is token ids (its box: 0 .. vocab - 1): `logits` takes ids; besides
    it, `verdict(ids)` (onnxruntime's attack tensor on the real model), `attended(m)` (bool [m, T]: the
    positions the attention mask keeps, None without a mask; rows as `on_rows` selected them), and, when
    the graph starts with an embedding lookup, its matrix E [vocab, dim] and `embedded(vectors, ids)` (the
    attack tensor from embeddings, differentiable); None for a model without one."""

    verdict: Callable[[torch.Tensor], torch.Tensor]
    attended: Callable[[int], torch.Tensor | None] = field(default=lambda m: None)
    embedding: torch.Tensor | None = None
    embedded: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


def mask_input(ids: TensorInfo, others: tuple[TensorInfo, ...]) -> str | None:
    """The attention mask among the pass-through inputs: an integer or boolean input of the ids' rank whose
    name says mask (optimum and torch exports call it attention_mask)."""
    return next((info.name for info in others if "mask" in info.name.lower() and not info.is_float
                 and len(info.shape) == len(ids.shape)), None)


@dataclass(frozen=True)
class TokenQueries:
    """What both token sources ask onnxruntime: the attack tensor on real ids (`verdict`: the logits when
    the graph ends in a head) and the attention mask among the pass-through rows (`mask`: its name)."""

    verdict: Callable[[np.ndarray], np.ndarray]
    passthrough: PassThroughInputs
    mask: str | None

    def victim(self, logits: Callable[[torch.Tensor], torch.Tensor], reader: ScoreReader, box: tuple[float, float],
               passthrough: PassThroughInputs | None, **embedding: Any) -> TokenVictim:
        def verdict(ids: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(self.verdict(ids.detach().cpu().numpy()), device=ids.device)

        def attended(m: int) -> torch.Tensor | None:
            return None if self.mask is None else torch.as_tensor(self.passthrough.rows_for(m)[self.mask] != 0)

        return TokenVictim(logits=logits, reader=reader, box=box,
                           select=passthrough.select if passthrough is not None else None,
                           verdict=verdict, attended=attended, **embedding)


class TokenSource(TorchGraphSource):
    """Gradients through the graph cut after the embedding lookup; the victim is a TokenVictim."""

    def __init__(self, graph: EmbeddedGraph, fidelity: float, queries: TokenQueries) -> None:
        super().__init__(graph, fidelity)
        self.embedded_graph = graph
        self.queries = queries

    def victim(self, reader: ScoreReader, box: tuple[float, float], passthrough: PassThroughInputs | None) -> Victim:
        graph = self.embedded_graph
        return self.queries.victim(self.logits, reader, box, passthrough, embedding=graph.weight,
                                   embedded=graph.embedded)


class QueryTokenSource:
    """A token-id model without an embedding lookup: no gradient; the attack tensor and every score come
    from onnxruntime (substitutions are sampled and scored by queries)."""

    kind = "estimated"

    def __init__(self, queries: TokenQueries, scores: Callable[[np.ndarray], np.ndarray]) -> None:
        self.queries = queries
        self.score_fn = scores

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.queries.verdict(x.detach().cpu().numpy()), device=x.device)

    def victim(self, reader: ScoreReader, box: tuple[float, float], passthrough: PassThroughInputs | None) -> Victim:
        return self.queries.victim(self.logits, reader, box, passthrough)

    def scores(self, x: torch.Tensor, reader: ScoreReader) -> torch.Tensor:
        return torch.as_tensor(self.score_fn(x.detach().cpu().numpy()), device=x.device)

    def queries_spent(self) -> np.ndarray | None:
        return None

    def stall_reasons(self) -> np.ndarray | None:
        return None


def token_source(proto: onnx.ModelProto, ids: TensorInfo, others: tuple[TensorInfo, ...],
                 passthrough: PassThroughInputs, reader: ScoreReader, scorer: OrtScorer,
                 logits: OrtScorer | None, tensor_name: str, score_output: str, probe: np.ndarray,
                 tolerance: float, device: torch.device) -> TokenSource | QueryTokenSource:
    """The cut graph converted and checked against onnxruntime on the probe ids (fed whole to both), with
    the onnxruntime verdict on the attack tensor (`logits`, else the real output when it is the attack
    tensor); a QueryTokenSource when the ids feed no embedding lookup."""
    if logits is None and reader.head is not None:
        raise UnsupportedModelError(f"onnxruntime cannot run the graph cut before its final {reader.head}: "
                                    f"ml-hotflip needs its logits to rank substitutions")
    queries = TokenQueries(logits or scorer, passthrough, mask_input(ids, others))
    try:
        embedding = find_embedding(proto, ids.name)
    except UnsupportedModelError:
        return QueryTokenSource(queries, scorer)
    cut = cut_after_embedding(proto, embedding, tensor_name, score_output)
    order = tuple(value.name for value in graph_inputs(cut))
    graph = EmbeddedGraph(to_torch(cut), order, embedding, passthrough).to(device)
    fidelity = check_fidelity(graph, reader, scorer, probe, tolerance, torch.int64, device)
    return TokenSource(graph, fidelity, queries)


def read_token_ids(path: str | Path, flag: str = "--vocab") -> np.ndarray:
    """Token ids from a .npy (integers) or a .txt (whitespace- or comma-separated integers)."""
    path = Path(path)
    try:
        values = np.load(path, allow_pickle=False) if path.suffix == ".npy" else \
            np.array(path.read_text().replace(",", " ").split(), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read {flag} {path}: {exc}") from None
    values = np.asarray(values).reshape(-1)
    if values.dtype.kind not in "iuf" or not np.array_equal(values, np.rint(values)) or (values < 0).any():
        raise BadInputError(f"{flag} {path} must hold non-negative whole token ids")
    return np.unique(values.astype(np.int64))


__all__ = ["Embedding", "EmbeddedGraph", "QueryTokenSource", "TokenQueries", "TokenSource", "TokenVictim",
           "cut_after_embedding", "find_embedding", "mask_input", "read_token_ids", "token_route", "token_source",
           "vocabulary_box"]
