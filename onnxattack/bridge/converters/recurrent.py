"""LSTM, GRU and RNN (versions 7, 14, 22; 14 added `layout`).

ONNX semantics (per direction, gates stacked in W [dirs, G*H, in], R [dirs, G*H, H],
B [dirs, 2*G*H] = Wb then Rb):
- RNN (G=1):  H = f(X W^T + H R^T + Wb + Rb); f is Tanh by default.
- GRU (G=3, gates z, r, h):  z = f(.), r = f(.),
  h = g(X Wh^T + (r * H) Rh^T + Rbh + Wbh)        (linear_before_reset=0)
  h = g(X Wh^T + r * (H Rh^T + Rbh) + Wbh)        (linear_before_reset=1)
  H' = (1 - z) * h + z * H; f, g default to Sigmoid, Tanh.
- LSTM (G=4, gates i, o, f, c; peepholes P [dirs, 3*H] = Pi, Po, Pf):
  i = f(. + Pi * C), f = f(. + Pf * C), c = g(.), C' = f * C + i * c,
  o = f(. + Po * C'), H' = o * h(C'); f, g, h default to Sigmoid, Tanh, Tanh.
`activations` lists the functions of the forward direction, then the reverse one; their
alpha/beta values are consumed in that order by the functions that take them, with
onnxruntime's default values when the lists run out. `clip` bounds every gate's pre-activation.
sequence_lens (constant or run time) masks steps past each sequence's end: Y is 0 there and
Y_h / Y_c hold the last valid step's state, as onnxruntime does.
Outputs: Y [seq, dirs, batch, H] (layout 1: [batch, seq, dirs, H]); Y_h, Y_c [dirs, batch, H]
(layout 1: [batch, dirs, H]). Not supported: LSTM input_forget=1.
"""

from __future__ import annotations

from typing import Any

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult
from torch import nn

from ._common import register

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
# (takes alpha, takes beta) and onnxruntime's default values when the attribute lists run out
_ACTIVATION_ARGS = {
    "relu": (False, False), "tanh": (False, False), "sigmoid": (False, False), "affine": (True, True),
    "leakyrelu": (True, False), "thresholdedrelu": (True, False), "scaledtanh": (True, True),
    "hardsigmoid": (True, True), "elu": (True, False), "softsign": (False, False), "softplus": (False, False),
}
_ACTIVATION_DEFAULTS = {"leakyrelu": (0.01, 0.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, 0.0)}

Activation = tuple[str, float, float]


def _activate(function: Activation, x: torch.Tensor) -> torch.Tensor:
    name, alpha, beta = function
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "relu":
        return torch.relu(x)
    if name == "affine":
        return alpha * x + beta
    if name == "leakyrelu":
        return nn.functional.leaky_relu(x, alpha)
    if name == "thresholdedrelu":
        return torch.where(x > alpha, x, torch.zeros_like(x))
    if name == "scaledtanh":
        return alpha * torch.tanh(beta * x)
    if name == "hardsigmoid":
        return torch.clamp(alpha * x + beta, 0.0, 1.0)
    if name == "elu":
        return nn.functional.elu(x, alpha)
    if name == "softsign":
        return nn.functional.softsign(x)
    return nn.functional.softplus(x)


def parse_activations(kind: str, names: list[str] | None, alphas: list[float], betas: list[float],
                      directions: int) -> list[list[Activation]]:
    """Per direction, the activation functions with their alpha and beta."""
    per_direction = len(_DEFAULT_ACTIVATIONS[kind])
    names = list(names) if names else _DEFAULT_ACTIVATIONS[kind] * directions
    if len(names) == per_direction and directions == 2:
        names = names * 2
    if len(names) != per_direction * directions:
        raise NotImplementedError(f"{kind} with {len(names)} activations for {directions} direction(s)")
    alpha_values, beta_values = iter(alphas), iter(betas)
    parsed: list[Activation] = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATION_ARGS:
            raise NotImplementedError(f"{kind} activation {name!r}")
        takes_alpha, takes_beta = _ACTIVATION_ARGS[key]
        default_alpha, default_beta = _ACTIVATION_DEFAULTS.get(key, (0.0, 0.0))
        alpha = next(alpha_values, default_alpha) if takes_alpha else 0.0
        beta = next(beta_values, default_beta) if takes_beta else 0.0
        parsed.append((key, float(alpha), float(beta)))
    return [parsed[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


class Recurrent(nn.Module, OnnxToTorchModule):
    """ONNX RNN / GRU / LSTM, unrolled step by step (differentiable in every input)."""

    def __init__(self, kind: str, hidden_size: int, direction: str, activations: list[list[Activation]],
                 clip: float | None, linear_before_reset: bool, layout: int, outputs: int) -> None:
        super().__init__()
        self.kind = kind
        self.hidden_size = hidden_size
        self.directions = ["forward", "reverse"] if direction == "bidirectional" else [direction]
        self.activations = activations
        self.clip = clip
        self.linear_before_reset = linear_before_reset
        self.layout = layout
        self.outputs = outputs
        self.torch_equations = self._torch_equations()
        self.prepared: list[str] = []  # the torch-order weight buffers prepare_torch_parameters registered
        self.prepared_bias = False

    def prepare_torch_parameters(self, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None) -> None:
        """Constant W, R, B reordered to torch's gate order once, at conversion, as buffers: torch.gru / lstm /
        rnn_* then read them as they are instead of slicing and concatenating four tensors per call."""
        parameters = self.torch_parameters(w, r, b)
        self.prepared = [f"torch_parameter_{index}" for index in range(len(parameters))]
        for name, tensor in zip(self.prepared, parameters, strict=True):
            self.register_buffer(name, tensor.contiguous())
        self.prepared_bias = b is not None

    def forward(self, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None = None,
                sequence_lens: torch.Tensor | None = None, initial_h: torch.Tensor | None = None,
                initial_c: torch.Tensor | None = None, p: torch.Tensor | None = None):
        return self.recur(x, w, r, b, sequence_lens, initial_h, initial_c, p)

    def input_product(self, x: torch.Tensor, w: Any, direction: int) -> torch.Tensor:
        """X W^T of one direction, every step at once (DynamicQuantizeLSTM quantises X here)."""
        return torch.matmul(x, w[direction].transpose(0, 1))

    def hidden_product(self, h: torch.Tensor, r: Any, direction: int) -> torch.Tensor:
        """H R^T of one direction and step."""
        return torch.matmul(h, r[direction].transpose(0, 1))

    def recur(self, x: torch.Tensor, w: Any, r: Any, b: torch.Tensor | None, sequence_lens: torch.Tensor | None,
              initial_h: torch.Tensor | None, initial_c: torch.Tensor | None, p: torch.Tensor | None):
        """The recurrence; w and r are only read by input_product and hidden_product (and GRU's step)."""
        if self.layout == 1:
            x = x.transpose(0, 1)
            initial_h = None if initial_h is None else initial_h.transpose(0, 1)
            initial_c = None if initial_c is None else initial_c.transpose(0, 1)
        steps, batch = x.shape[0], x.shape[1]
        if self.native_kernel(w, r, sequence_lens, p):
            y, y_h, y_c = self._native(x, w, r, b, initial_h, initial_c)
            return self._finish(y, y_h, y_c)
        gates = _GATES[self.kind] * self.hidden_size
        zeros = x.new_zeros(batch, self.hidden_size)
        valid = None
        if sequence_lens is not None:
            valid = torch.arange(steps, device=x.device)[:, None] < sequence_lens.to(x.device)[None, :]
            valid = valid[:, :, None]  # [seq, batch, 1]
        ys, hs, cs = [], [], []
        for d, direction in enumerate(self.directions):
            bias_w = b[d, :gates] if b is not None else None
            bias_r = b[d, gates:] if b is not None else None
            projected = self.input_product(x, w, d)
            if bias_w is not None:
                projected = projected + bias_w
            h = initial_h[d] if initial_h is not None else zeros
            c = initial_c[d] if initial_c is not None else zeros
            peepholes = p[d] if p is not None else None
            outputs: list[torch.Tensor] = [zeros] * steps
            order = range(steps) if direction == "forward" else range(steps - 1, -1, -1)
            for t in order:
                new_h, new_c = self._step(projected[t], h, c, r, d, bias_r, peepholes, self.activations[d])
                if valid is not None:
                    new_h = torch.where(valid[t], new_h, h)
                    new_c = torch.where(valid[t], new_c, c)
                    outputs[t] = torch.where(valid[t], new_h, zeros)
                else:
                    outputs[t] = new_h
                h, c = new_h, new_c
            ys.append(torch.stack(outputs))
            hs.append(h)
            cs.append(c)
        return self._finish(torch.stack(ys, dim=1), torch.stack(hs), torch.stack(cs))

    def _finish(self, y: torch.Tensor, y_h: torch.Tensor, y_c: torch.Tensor):
        """y [seq, dirs, batch, H], y_h and y_c [dirs, batch, H] in the node's layout, as many as it outputs."""
        if self.layout == 1:
            y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
        results = (y, y_h, y_c)[: self.outputs]
        return results[0] if self.outputs == 1 else results

    def native_kernel(self, w: Any, r: Any, sequence_lens: torch.Tensor | None, p: torch.Tensor | None) -> bool:
        """Whether torch's own RNN kernel computes this node: the activations and gate equations torch's
        GRU / LSTM / RNN use (GRU with linear_before_reset), no clip, peepholes or sequence lengths,
        float weights read by this class's own products. It runs the whole sequence in one call instead
        of a Python loop of a dozen ops per step (2x the fwd+bwd time of a small GRU: bench/overhead.py)."""
        if sequence_lens is not None or p is not None or not self.torch_equations:
            return False
        return isinstance(w, torch.Tensor) and isinstance(r, torch.Tensor) and w.is_floating_point()

    def _torch_equations(self) -> bool:
        """The part of native_kernel fixed at conversion (the node's attributes, this class's products)."""
        if self.clip is not None:
            return False
        if type(self).input_product is not Recurrent.input_product \
                or type(self).hidden_product is not Recurrent.hidden_product:
            return False
        names = {tuple(name for name, _, _ in functions) for functions in self.activations}
        if len(names) != 1:
            return False
        (functions,) = names
        if self.kind == "GRU":
            return self.linear_before_reset and functions == ("sigmoid", "tanh")
        if self.kind == "LSTM":
            return functions == ("sigmoid", "tanh", "tanh")
        return functions in (("tanh",), ("relu",))

    def torch_parameters(self, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None) -> list[torch.Tensor]:
        """torch's flat weight list (per direction w_ih, w_hh[, b_ih, b_hh]) from ONNX's W, R, B: gate blocks
        reordered (GRU z,r,h -> r,z,n; LSTM i,o,f,c -> i,f,g,o)."""
        size = self.hidden_size
        order = {"GRU": (1, 0, 2), "LSTM": (0, 2, 3, 1), "RNN": (0,)}[self.kind]

        def torch_order(matrix: torch.Tensor) -> torch.Tensor:
            return torch.cat([matrix[k * size:(k + 1) * size] for k in order])

        gates = _GATES[self.kind] * size
        params: list[torch.Tensor] = []
        for d in range(len(self.directions)):
            params += [torch_order(w[d]), torch_order(r[d])]
            if b is not None:
                params += [torch_order(b[d, :gates]), torch_order(b[d, gates:])]
        return params

    def _native(self, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None,
                initial_h: torch.Tensor | None, initial_c: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The recurrence by torch.gru / torch.lstm / torch.rnn_* on torch_parameters (prepared at conversion when
        W, R and B are constants); a reverse-only node runs forward on the flipped sequence."""
        size, directions = self.hidden_size, len(self.directions)
        if self.prepared and self.prepared_bias == (b is not None):
            params = [getattr(self, name) for name in self.prepared]
        else:
            params = self.torch_parameters(w, r, b)
        reverse_only = self.directions == ["reverse"]
        if reverse_only:
            x = x.flip(0)
        zeros = x.new_zeros(directions, x.shape[1], size)
        h0 = zeros if initial_h is None else initial_h
        bidirectional = directions == 2
        # train=True: cuDNN computes a backward only in training mode; there is no dropout (0.0)
        if self.kind == "LSTM":
            c0 = zeros if initial_c is None else initial_c
            out, h_n, c_n = torch.lstm(x, (h0, c0), params, b is not None, 1, 0.0, True, bidirectional, False)
        else:
            function = torch.gru if self.kind == "GRU" else \
                torch.rnn_tanh if self.activations[0][0][0] == "tanh" else torch.rnn_relu
            out, h_n = function(x, h0, params, b is not None, 1, 0.0, True, bidirectional, False)
            c_n = zeros
        y = out.reshape(out.shape[0], out.shape[1], directions, size).permute(0, 2, 1, 3)
        if reverse_only:
            y = y.flip(0)
        return y, h_n, c_n

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.clip is None else torch.clamp(x, -self.clip, self.clip)

    def _step(self, xw: torch.Tensor, h: torch.Tensor, c: torch.Tensor, r: Any, direction: int,
              bias_r: torch.Tensor | None, peepholes: torch.Tensor | None,
              functions: list[Activation]) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.hidden_size
        hr = self.hidden_product(h, r, direction)
        if bias_r is not None:
            hr = hr + bias_r
        if self.kind == "RNN":
            return _activate(functions[0], self._clip(xw + hr)), c
        if self.kind == "GRU":
            f, g = functions
            z = _activate(f, self._clip(xw[:, :size] + hr[:, :size]))
            reset = _activate(f, self._clip(xw[:, size:2 * size] + hr[:, size:2 * size]))
            if self.linear_before_reset:
                candidate = xw[:, 2 * size:] + reset * hr[:, 2 * size:]
            else:
                recurrent = torch.matmul(reset * h, r[direction][2 * size:].transpose(0, 1))
                if bias_r is not None:
                    recurrent = recurrent + bias_r[2 * size:]
                candidate = xw[:, 2 * size:] + recurrent
            new_h = (1 - z) * _activate(g, self._clip(candidate)) + z * h
            return new_h, c
        f, g, h_function = functions
        pre = xw + hr
        pre_i, pre_o, pre_f, pre_c = (pre[:, k * size:(k + 1) * size] for k in range(4))
        if peepholes is not None:
            pre_i = pre_i + peepholes[:size] * c
            pre_f = pre_f + peepholes[2 * size:] * c
        i = _activate(f, self._clip(pre_i))
        forget = _activate(f, self._clip(pre_f))
        new_c = forget * c + i * _activate(g, self._clip(pre_c))
        if peepholes is not None:
            pre_o = pre_o + peepholes[size:2 * size] * new_c
        o = _activate(f, self._clip(pre_o))
        return o * _activate(h_function, new_c), new_c


def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    kind = node.operation_type
    attributes = node.attributes
    if kind == "LSTM" and attributes.get("input_forget", 0):
        raise NotImplementedError("LSTM with input_forget=1")
    direction = attributes.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise NotImplementedError(f"{kind} direction={direction!r}")
    directions = 2 if direction == "bidirectional" else 1
    activations = parse_activations(kind, attributes.get("activations"), attributes.get("activation_alpha", []),
                                    attributes.get("activation_beta", []), directions)
    clip = attributes.get("clip")
    outputs = len(node.output_values)
    module = Recurrent(kind, int(attributes["hidden_size"]), direction, activations,
                       None if clip is None else float(clip), bool(attributes.get("linear_before_reset", 0)),
                       int(attributes.get("layout", 0)), outputs)
    names = list(node.input_values) + [""] * 3
    constants = [graph.initializers[name].to_torch() if name in graph.initializers else None for name in names[1:4]]
    w, r, b = constants
    if w is not None and r is not None and (b is not None or not names[3]) and w.is_floating_point() \
            and module.native_kernel(w, r, None, None):
        module.prepare_torch_parameters(w, r, b)
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=OnnxMapping(inputs=node.input_values, outputs=node.output_values))


for _kind in _GATES:
    register(_kind, [7, 14, 22])(_convert)
