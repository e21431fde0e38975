"""What a run imports before its first step: torchvision (and the torch._dynamo and sympy it pulls in)
only when a graph needs one of its ops."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.converter_checks import const, model_of, session
from tests.fuzz_inputs import FEATURES, tiny_model


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    return set(out.stdout.split())


def test_the_cli_and_the_bridge_import_without_torchvision() -> None:
    loaded = _imported_after("import cli.main\nimport onnxattack.bridge.convert")
    assert "onnx2torch" in loaded
    assert not {"torchvision", "torch._dynamo", "sympy"} & loaded


def test_torchvision_imported_later_is_the_real_module() -> None:
    code = ("import onnxattack.bridge.convert\nimport torchvision\nimport torchvision.ops\n"
            "print(torchvision.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip()[0].isdigit()


def test_roi_align_converts_and_runs_through_the_deferred_torchvision() -> None:
    from onnx2torch.node_converters import roialign

    from onnxattack.bridge.convert import to_torch

    assert roialign.roi_align.__module__ == "onnxattack.bridge._deferred_vision"  # the stand-in, not torchvision's

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(2, 3, 8, 8)).astype(np.float32)
    rois = np.array([[0, 0, 4, 4], [1, 2, 7, 6], [2, 1, 5, 7]], dtype=np.float32)
    node = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], output_height=2, output_width=2,
                            sampling_ratio=2, spatial_scale=1.0, coordinate_transformation_mode="half_pixel")
    model = model_of([node], [("x", TensorProto.FLOAT, [2, 3, 8, 8])], ["y"],
                     [onnx.numpy_helper.from_array(rois, "rois"), const("idx", [0, 1, 1], np.int64)], opset=16)
    expected = session(model).run(None, {"x": x})[0]
    import torch

    got = to_torch(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_cli_asks_each_method_for_its_options_a_few_times_not_per_option() -> None:
    """Every method's declarations come from its constructor's signature; building the options' help once
    asked ~1100 times (50 ms of every start), now a few times per method."""
    code = ("import inspect\nfrom onnxattack.attacks import METHODS\ncalls = [0]\nsignature = inspect.signature\n"
            "def counted(*args, **kwargs):\n    calls[0] += 1\n    return signature(*args, **kwargs)\n"
            "inspect.signature = counted\nimport cli.main\nprint(calls[0], len(METHODS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    calls, methods = map(int, out.stdout.split())
    assert calls <= 3 * methods, calls


def test_an_ml_cw_run_does_not_import_sympy(tmp_path) -> None:
    """autograd imports torch.fx.experimental.symbolic_shapes (and sympy: 0.3-0.7 s) the first time it is given
    tensors as grad_outputs; ML-CW's step seeds its backward through a scalar instead, so a run never pays it."""
    model = tiny_model(tmp_path / "tiny.onnx")
    code = f"""
import sys
import numpy as np
import torch
from onnxattack.attacks import MLCarliniWagner
from onnxattack.loader import load
from onnxattack.scores import ThresholdCriterion
model = load({str(model)!r})
x = np.random.default_rng(1).uniform(0, 1, (4, {FEATURES})).astype(np.float32)
criterion = ThresholdCriterion(threshold=model.reader.threshold)
target = criterion.predict(model.ort_scores(x)).astype(bool)
target[:, 0] = ~target[:, 0]
result = MLCarliniWagner(max_iter=20, binary_steps=2)(model.victim(), model.as_tensor(x), torch.as_tensor(target),
                                                     criterion)
print(int(result.model_calls.min()), "sympy" in sys.modules, "torch.fx.experimental.symbolic_shapes" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    calls, sympy, symbolic_shapes = out.stdout.split()
    assert int(calls) > 2  # the search ran past its first iteration (which seeds with term.sum())
    assert (sympy, symbolic_shapes) == ("False", "False")
