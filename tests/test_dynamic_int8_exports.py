"""Legacy torch exports shrunk by onnxruntime.quantization.quantize_dynamic (int8 / uint8 weights),
attacked from the command line through the torch graph; success recomputed from onnxruntime on the
stored x_adv (never from the library's own verdict). Inputs: scikit-learn's 8x8 digits in [0, 1].

quantize_dynamic turns Gemm / MatMul into DynamicQuantizeLinear + MatMulInteger, Conv into
ConvInteger and LSTM into com.microsoft DynamicQuantizeLSTM; onnxruntime's own optimiser fuses the
MatMul chain into com.microsoft DynamicQuantizeMatMul (the "ort-fused" case attacks that file)."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from . import exporters as ex
from .test_real_exports import RecurrentTagger, attack, recomputed_success

warnings.filterwarnings("ignore")
LABELS = 4


def _digits(rows: int) -> np.ndarray:
    return (load_digits().images[:rows] / 16.0).astype(np.float32)  # [rows, 8, 8] in [0, 1]


def _quantised(float_path: Path, weight_type: str) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = float_path.with_name(f"{float_path.stem}-{weight_type}.onnx")
    # DefaultTensorType: shape inference cannot type the outputs of com.microsoft ops (optimised graphs)
    quantize_dynamic(str(float_path), str(path), weight_type=getattr(QuantType, weight_type),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return path


def _ort_fused(path: Path) -> Path:
    """The model as onnxruntime's extended session optimiser rewrites it (DynamicQuantizeMatMul,
    MatMulIntegerToFloat, SkipLayerNormalization, Gelu)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path.with_name(path.stem + "-fused.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Path(options.optimized_model_filepath)


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


class GatedMLP(nn.Module):
    """Two layers reading the same input: onnxruntime fuses one of them into MatMulIntegerToFloat."""

    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Linear(64, 16)
        self.gate = nn.Linear(64, 16)
        self.fc = nn.Linear(16, LABELS)

    def forward(self, x):
        return self.fc(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x)))


NETS = {"mlp": lambda: ex.MLP(64, LABELS), "cnn": lambda: ex.CNN(LABELS), "gated": GatedMLP}
CASES = [
    # id, model, sample shape, weight type, ops the quantised graph must hold
    ("mlp-s8", "mlp", (64,), "QInt8", {"DynamicQuantizeLinear", "MatMulInteger"}),
    ("mlp-u8", "mlp", (64,), "QUInt8", {"DynamicQuantizeLinear", "MatMulInteger"}),
    ("mlp-s8-ort-fused", "mlp", (64,), "QInt8", {"DynamicQuantizeMatMul"}),
    ("gated-s8-ort-fused", "gated", (64,), "QInt8", {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}),
    ("cnn-s8", "cnn", (1, 8, 8), "QInt8", {"ConvInteger", "MatMulInteger"}),
    ("cnn-u8", "cnn", (1, 8, 8), "QUInt8", {"ConvInteger", "MatMulInteger"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_quantize_dynamic_models_are_attacked_through_torch(tmp_path, case):
    name, kind, shape, weight_type, ops = case
    torch.manual_seed(0)
    net = NETS[kind]()
    float_path = ex.export_torch(net, torch.rand(2, *shape), tmp_path / f"{kind}.onnx", dynamo=False, opset=13)
    path = _quantised(float_path, weight_type)
    if name.endswith("ort-fused"):
        path = _ort_fused(path)
    assert ops <= _ops(path), _ops(path)
    x = _digits(20).reshape(20, *shape)
    summary, out = attack(path, x, tmp_path, "--gradients", "torch", "--method", "ml-deepfool", "--max-iter", "30")
    assert summary["gradients"] == "torch"
    with h5py.File(out, "r") as handle:
        assert handle.attrs["gradients"] == "torch"
    success = recomputed_success(path, out, "scores")  # also: matches the file's success column
    assert success.mean() >= 0.8, success.mean()


def test_a_quantize_dynamic_lstm_tagger_is_as_attackable_as_its_float_model(tmp_path):
    torch.manual_seed(0)
    float_path = ex.export_torch(RecurrentTagger(nn.LSTM), torch.rand(2, 8, 6), tmp_path / "lstm.onnx", dynamo=False,
                                 opset=14)
    path = _quantised(float_path, "QInt8")
    assert "DynamicQuantizeLSTM" in _ops(path)
    x = _digits(20)[:, :, 1:7]  # 8 steps of 6 features
    one_thread = ort.SessionOptions()  # the verdict's session: on more threads the quantisation depends on them
    one_thread.intra_op_num_threads = 1
    rates = []
    for model in (float_path, path):
        summary, out = attack(model, x, tmp_path, "--gradients", "torch", "--method", "ml-deepfool", "--max-iter", "30")
        assert summary["gradients"] == "torch"
        rates.append(recomputed_success(model, out, "scores", options=one_thread).mean())
    # this random-weight tagger saturates on many digits: about 45% are attackable in [0, 1], float or int8
    assert rates[0] >= 0.3 and rates[1] >= rates[0] - 0.1, rates


def _transformer_optimised(float_path: Path, gelu_approximation: bool) -> Path:
    """onnxruntime.transformers' BERT fusions: SkipLayerNormalization, BiasGelu or FastGelu."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_gelu_approximation = gelu_approximation
    optimised = optimize_model(str(float_path), model_type="bert", num_heads=2, hidden_size=16, opt_level=1,
                               optimization_options=options)
    path = float_path.with_name(f"{float_path.stem}-optimised.onnx")
    optimised.save_model_to_file(str(path))
    return path


class TinyViT(nn.Module):
    """Rows of the 8x8 digit as 8 tokens, one post-norm GELU encoder layer, mean-pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, activation="gelu")
        self.fc = nn.Linear(16, LABELS)
        with torch.no_grad():  # trained-like gains: an untrained head barely reacts to its input
            self.embed.weight.mul_(3.0)
            self.fc.weight.mul_(3.0)

    def forward(self, x):
        return self.fc(self.encoder(self.embed(x.reshape(x.shape[0], 8, 8))).mean(dim=1))


TRANSFORMER_CASES = [
    # id, onnxruntime.transformers' approximate GELU, quantize_dynamic, then onnxruntime's session optimiser
    ("optimised", False, False, False),
    ("optimised-fast-gelu-then-int8", True, True, False),
    ("int8-then-session-optimised", None, True, True),
]


@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=[c[0] for c in TRANSFORMER_CASES])
def test_a_transformer_from_onnxruntimes_optimiser_and_quantiser(tmp_path, case):
    _, gelu_approximation, quantise, session_optimised = case
    torch.manual_seed(0)
    # opset 17: below it onnxruntime writes LayerNormalization into the default domain, which ONNX's
    # checker (run by the loader) refuses
    float_path = ex.export_torch(TinyViT(), torch.rand(2, 64), tmp_path / "vit.onnx", dynamo=False, opset=17)
    path = float_path if gelu_approximation is None else _transformer_optimised(float_path, gelu_approximation)
    if quantise:
        path = _quantised(path, "QInt8")
    if session_optimised:
        path = _ort_fused(path)
    ops = _ops(path)
    gelu = "Gelu" if gelu_approximation is None else "FastGelu" if gelu_approximation else "BiasGelu"
    assert {"SkipLayerNormalization", gelu} <= ops, ops
    assert not quantise or {"MatMulInteger", "DynamicQuantizeMatMul"} & ops, ops
    # int8: the re-quantised activations move each step's landing point; the default 2% overshoot
    # reaches 70% here, 20% reaches every row (the float model: every row at the default)
    overshoot = ["--overshoot", "0.2"] if quantise else []
    summary, out = attack(path, _digits(20).reshape(20, 64), tmp_path, "--gradients", "torch",
                          "--method", "ml-deepfool", "--max-iter", "30", *overshoot)
    assert summary["gradients"] == "torch"
    success = recomputed_success(path, out, "scores")
    assert success.mean() >= 0.8, success.mean()


def test_the_zoos_int8_variant_is_made_by_onnxruntime_and_attacked_through_torch(tmp_path, zoo_model, zoo_inputs):
    path = zoo_model("yeast-mlp-int8")
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(path)
    summary, out = attack(path, zoo_inputs("yeast-mlp-int8", 16), tmp_path, "--gradients", "torch",
                          "--range", "-1", "1", "--method", "ml-deepfool", "--max-iter", "30")
    assert summary["gradients"] == "torch"
    success = recomputed_success(path, out, "scores")
    assert success.mean() >= 0.8, success.mean()


def test_only_dynamic_quantize_lstm_models_get_a_one_thread_session(tmp_path):
    from onnxattack import load
    from onnxattack.runtime import ONE_THREAD_NOTE

    torch.manual_seed(0)
    float_path = ex.export_torch(RecurrentTagger(nn.LSTM), torch.rand(2, 8, 6), tmp_path / "lstm.onnx", dynamo=False,
                                 opset=14)
    loaded = [load(path, convert=False, probe=np.random.default_rng(0).random((2, 8, 6)))
              for path in (float_path, _quantised(float_path, "QInt8"))]
    threads = [model.scorer.session.get_session_options().intra_op_num_threads for model in loaded]
    assert threads[0] != 1 and threads[1] == 1, threads
    assert ONE_THREAD_NOTE not in loaded[0].notes and ONE_THREAD_NOTE in loaded[1].notes


class BertStyleAttention(nn.Module):
    """Digit rows as 8 tokens through one BERT-style self-attention block (separate Q, K, V layers, post-norm
    residual): the pattern onnxruntime.transformers fuses into com.microsoft Attention."""

    def __init__(self, hidden: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.size = heads, hidden // heads
        self.embed = nn.Linear(8, hidden)
        self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))
        self.norm = nn.LayerNorm(hidden)
        self.fc = nn.Linear(hidden, LABELS)
        with torch.no_grad():  # trained-like gains: an untrained head barely reacts to its input
            self.embed.weight.mul_(3.0)
            self.fc.weight.mul_(3.0)

    def _heads(self, x):
        return x.view(x.shape[0], x.shape[1], self.heads, self.size).permute(0, 2, 1, 3)

    def forward(self, x):
        tokens = self.embed(x.reshape(x.shape[0], 8, 8))
        q, k, v = self._heads(self.query(tokens)), self._heads(self.key(tokens)), self._heads(self.value(tokens))
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / self.size ** 0.5, dim=-1)
        context = torch.matmul(weights, v).permute(0, 2, 1, 3).contiguous().view(tokens.shape)
        return self.fc(self.norm(self.out(context) + tokens).mean(dim=1))


def test_a_fused_attention_block_float_and_int8_is_as_attackable_as_the_export(tmp_path):
    torch.manual_seed(0)
    float_path = ex.export_torch(BertStyleAttention(), torch.rand(2, 64), tmp_path / "bert.onnx", dynamo=False,
                                 opset=17)
    fused = _transformer_optimised(float_path, gelu_approximation=False)
    int8 = _quantised(fused, "QInt8")  # quantize_dynamic turns Attention into QAttention
    assert {"Attention", "SkipLayerNormalization"} <= _ops(fused) and "QAttention" in _ops(int8)
    rates = []
    for path in (float_path, fused, int8):
        summary, out = attack(path, _digits(20).reshape(20, 64), tmp_path, "--gradients", "torch",
                              "--method", "ml-deepfool", "--max-iter", "30", "--overshoot", "0.2")
        assert summary["gradients"] == "torch"
        rates.append(recomputed_success(path, out, "scores").mean())
    # measured 80%, 80%, 75%: the fused graph computes the export's scores to float rounding (a row may
    # still flip), int8 within 10 points of it
    assert rates[0] >= 0.7 and abs(rates[1] - rates[0]) <= 0.05 and rates[2] >= rates[0] - 0.1, rates
