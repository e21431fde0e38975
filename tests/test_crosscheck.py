"""Cross-framework checks: input adaptation, labels matched by name, validate across two exports of one
network, and the crosscheck matrices, every number recomputed here from the stored rows."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main
from sklearn.datasets import load_digits
from torch import nn

from onnxattack.adapt import ModelArg, Side, parse_model_arg, plan_adapter
from onnxattack.config import AttackConfig
from onnxattack.crosscheck import run_crosscheck
from onnxattack.errors import BadInputError
from onnxattack.labelmatch import match_labels
from onnxattack.transfer import ReadAs

from . import exporters as ex

DIGITS = [str(i) for i in range(10)]
NAMED = [f"digit_{i}" for i in range(10)]


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def side(shape: tuple, box=(0.0, 1.0), dtype="float32", layout=None) -> Side:
    return Side(tuple(shape), box, np.dtype(dtype), layout)


# --- adaptation ------------------------------------------------------------------------------------
def test_nchw_rows_become_nhwc_uint8_rows_in_0_255():
    adapter = plan_adapter(side((3, 4, 5)), side((4, 5, 3), (0, 255), "uint8"))
    x = np.random.default_rng(0).random((2, 3, 4, 5))
    out = adapter(x)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 5, 3)
    assert np.array_equal(out, np.rint(x.transpose(0, 2, 3, 1) * 255).astype(np.uint8))
    back = plan_adapter(side((4, 5, 3), (0, 255)), side((3, 4, 5), (-1, 1)))
    assert np.allclose(back(out.astype(np.float32)), out.transpose(0, 3, 1, 2) / 127.5 - 1, atol=1e-6)


def test_sequences_and_size_one_dims_are_inferred():
    seq = plan_adapter(side((6, 20)), side((20, 6)))  # channel-first sequence -> channel-last
    x = np.arange(240.0).reshape(2, 6, 20)
    assert np.array_equal(seq(x), x.transpose(0, 2, 1))
    added = plan_adapter(side((8, 8)), side((1, 8, 8)))
    assert added(np.ones((3, 8, 8))).shape == (3, 1, 8, 8)
    one_channel = plan_adapter(side((1, 8, 8)), side((8, 8, 1)))
    image = np.random.default_rng(1).random((2, 1, 8, 8))
    assert np.array_equal(one_channel(image)[..., 0], image[:, 0].astype(np.float32))
    assert plan_adapter(side((3, 8, 8)), side((3, 8, 8))).identity


@pytest.mark.parametrize("source,target,message", [
    ((3, 8, 8), (3, 16, 16), "not resized"),
    ((8, 8, 8), (8, 8, 8, 2), "cannot map"),
])
def test_impossible_mappings_are_refused_naming_both_shapes(source, target, message):
    with pytest.raises(BadInputError) as error:
        plan_adapter(side(source), side(target))
    text = str(error.value)
    assert message in text and str(list(source)) in text and str(list(target)) in text and "\n" not in text


def test_an_ambiguous_layout_asks_for_one_and_a_stated_one_decides():
    with pytest.raises(BadInputError, match="ambiguous.*layout="):
        plan_adapter(side((8, 1, 8)), side((8, 8, 1)))  # drop-and-add the 1, or move the last axis first
    stated = plan_adapter(side((4, 4, 4)), side((4, 4, 4), layout="nhwc"), "a", "b")
    assert stated.axes is None  # both sides nhwc: the unstated side takes the stated layout when shapes are equal
    moved = plan_adapter(side((4, 4, 4), layout="nchw"), side((4, 4, 4), layout="nhwc"))
    x = np.arange(128.0).reshape(2, 4, 4, 4)
    assert np.array_equal(moved(x), x.transpose(0, 2, 3, 1))


def test_model_arguments_parse_in_one_place():
    arg = parse_model_arg("m/b.onnx:layout=NHWC,range=0:255")
    assert (arg.path, arg.layout, arg.range) == ("m/b.onnx", "nhwc", (0.0, 255.0))
    assert parse_model_arg("b.onnx:range=-1:1").range == (-1.0, 1.0)
    assert parse_model_arg("plain.onnx").layout is None
    for bad in ("b.onnx:layout=nchwx", "b.onnx:range=1:0", "b.onnx:range=a:b", "b.onnx:layout=nhwc,size=3"):
        with pytest.raises(BadInputError):
            parse_model_arg(bad)


def test_labels_match_by_name_map_or_position_and_one_sided_labels_are_left_out():
    match = match_labels(["cat", "dog", "owl"], ["dog", "cat", "emu"])
    assert match.pairs == (("cat", "cat"), ("dog", "dog")) and match.other == (1, 0)
    assert match.reference_only == ("owl",) and match.other_only == ("emu",)
    scores = np.array([[0.1, 0.2, 0.3]])
    assert np.array_equal(match.other_columns(scores), [[0.2, 0.1]])
    assert np.array_equal(match.in_reference_space(match.other_columns(scores), -1.0), [[0.2, 0.1, -1.0]])
    mapped = match_labels(DIGITS[:3], NAMED[:4], {d: n for d, n in zip(DIGITS[:3], NAMED, strict=False)})
    assert mapped.how == "label map" and mapped.other_only == ("digit_3",)
    assert match_labels(["a", "b"], ["x", "y"], by_position=True).how == "position"
    with pytest.raises(BadInputError, match="--label-map"):
        match_labels(["a"], ["x"])
    with pytest.raises(BadInputError, match="not labels of the reference"):
        match_labels(["a"], ["x"], {"b": "x"})
    with pytest.raises(BadInputError, match="labels"):
        match_labels(["a", "b"], ["x"], by_position=True)


# --- two exports of one network --------------------------------------------------------------------
class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                  nn.Linear(8 * 4 * 4, 10))

    def forward(self, x):
        return self.body(x)


class NHWC255(nn.Module):
    """The same weights behind another input convention: NHWC pixels in [0, 255] (and, with `columns`,
    only some labels, in another order)."""

    def __init__(self, net: nn.Module, columns: list[int] | None = None) -> None:
        super().__init__()
        self.net = net
        self.columns = columns or list(range(10))

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2) / 255.0)[:, self.columns]


def with_labels(path: Path, labels: list[str]) -> Path:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"labels": json.dumps(labels)})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A CNN trained for a second on scikit-learn digits (10 one-hot labels, multi-label logits), exported
    as NCHW in [0, 1] with labels 0..9 and, the same weights, as NHWC in [0, 255] with labels digit_0..9."""
    folder = tmp_path_factory.mktemp("digits")
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = np.eye(10, dtype=np.float32)[data.target]
    torch.manual_seed(0)
    net = DigitsCNN()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(60):
        optimiser.zero_grad()
        logits = net(torch.from_numpy(x[:1500]))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y[:1500]))
        loss.backward()
        optimiser.step()
    reference = with_labels(ex.export_torch(net, torch.zeros(1, 1, 8, 8), folder / "nchw.onnx", dynamo=False,
                                            opset=17), DIGITS)
    other = with_labels(ex.export_torch(NHWC255(net), torch.zeros(1, 8, 8, 1), folder / "nhwc255.onnx",
                                        dynamo=False, opset=17), NAMED)
    nine = list(range(9, 0, -1))  # digit_9 .. digit_1: no label 0, the others reversed
    with_labels(ex.export_torch(NHWC255(net, nine), torch.zeros(1, 8, 8, 1), folder / "nine.onnx", dynamo=False,
                                opset=17), [NAMED[i] for i in nine])
    np.save(folder / "x.npy", x[1500:1510])
    (folder / "map.json").write_text(json.dumps(dict(zip(DIGITS, NAMED, strict=True))))
    return reference, other, folder


def ort_scores(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_validate_maps_nchw_0_1_onto_nhwc_0_255_and_matches_labels_by_the_map(digits, tmp_path):
    reference, other, folder = digits
    out = tmp_path / "r.h5"
    attacked = invoke("attack", reference, folder / "x.npy", "-o", out, "--method", "ml-deepfool",
                      "--target", "hide-single", "--max-iter", "20", "--quiet")
    assert attacked.exit_code == 0, attacked.output
    result = invoke("validate", out, "--model", f"{other}:range=0:255", "--label-map", folder / "map.json")
    assert result.exit_code == 0, result.output
    assert "nchw -> nhwc" in result.output and "[0, 255]" in result.output and "label map" in result.output
    with h5py.File(out, "r") as handle:
        x_adv, target, attacked_rows = handle["x_adv"][:], handle["y_target"][:], handle["attacked"][:]
        own = handle["success"][:] & attacked_rows
        group = handle["transfer/nhwc255"]
        stored, mapping = group["success"][:], json.loads(group.attrs["input_mapping"])
        y_adv = group["y_adv"][:]
    assert mapping["axes"] == [1, 2, 0] and mapping["target_range"] == [0.0, 255.0]
    scores = ort_scores(other, (x_adv.transpose(0, 2, 3, 1).astype(np.float64) * 255).astype(np.float32))
    order = [NAMED.index(f"digit_{name}") for name in DIGITS]
    reached = ((scores[:, order] > 0) == target.astype(bool)).all(axis=1) & attacked_rows
    assert attacked_rows.sum() >= 5 and own.sum() >= 3
    assert np.array_equal(reached, stored) and np.array_equal(stored, own)  # same network: same verdicts
    assert np.array_equal(y_adv, (scores[:, order] > 0).astype(np.int8))


def test_labels_on_one_side_only_are_reported_and_left_out_of_the_verdict(digits, tmp_path):
    reference, _, folder = digits
    nine = folder / "nine.onnx"
    out = tmp_path / "r.h5"
    assert invoke("attack", reference, folder / "x.npy", "-o", out, "--method", "ml-deepfool", "--max-iter", "20",
                  "--quiet").exit_code == 0
    result = invoke("validate", out, "--model", f"{nine}:range=0:255", "--label-map", folder / "map.json")
    assert result.exit_code == 0, result.output
    assert "9 labels matched by label map; only in the reference (left out): 0" in result.output
    with h5py.File(out, "r") as handle:
        x_adv, target, attacked = handle["x_adv"][:], handle["y_target"][:].astype(bool), handle["attacked"][:]
        stored, y_adv = handle["transfer/nine/success"][:], handle["transfer/nine/y_adv"][:]
    scores = ort_scores(nine, (x_adv.transpose(0, 2, 3, 1).astype(np.float64) * 255).astype(np.float32))
    shared = scores[:, ::-1] > 0  # columns digit_1 .. digit_9 = reference labels 1 .. 9
    assert np.array_equal(stored, (shared == target[:, 1:]).all(axis=1) & attacked)
    assert (y_adv[:, 0] == -1).all() and np.array_equal(y_adv[:, 1:], shared.astype(np.int8))
    positional = CliRunner().invoke(main, ["validate", str(out), "--model", f"{nine}:range=0:255",
                                           "--match-labels-by-position"])
    assert positional.exit_code == 2 and "9" in positional.output and "10" in positional.output


def test_validate_refuses_an_unmatched_model_with_one_line(digits, tmp_path):
    reference, other, folder = digits
    out = tmp_path / "r.h5"
    assert invoke("attack", reference, folder / "x.npy", "-o", out, "--method", "ml-deepfool", "--limit", "2",
                  "--max-iter", "5", "--quiet").exit_code == 0
    result = CliRunner().invoke(main, ["validate", str(out), "--model", f"{other}:range=0:255"])
    assert result.exit_code == 2 and "--label-map" in result.output and len(result.output.splitlines()) == 1
    result = CliRunner().invoke(main, ["validate", str(out), "--model", f"{other}:layout=nchw"])
    assert result.exit_code == 2 and "[1, 8, 8]" in result.output and "[8, 8, 1]" in result.output


# --- crosscheck ------------------------------------------------------------------------------------
def as_input(name: str, x: np.ndarray) -> np.ndarray:
    """Rows in the reference's format (NCHW, [0, 1]) -> the named model's own (written out here, not
    through adapt.py)."""
    return (x.transpose(0, 2, 3, 1).astype(np.float64) * 255).astype(np.float32) if name == "nhwc255" else x


def as_reference(name: str, x: np.ndarray) -> np.ndarray:
    return (x.transpose(0, 3, 1, 2) / 255.0).astype(np.float32) if name == "nhwc255" else x


def test_crosscheck_matrices_are_recomputed_from_the_stored_rows(digits, tmp_path):
    reference, other, folder = digits
    out, kept = tmp_path / "check.h5", tmp_path / "variants"
    result = invoke("crosscheck", reference, folder / "x.npy", "-o", out, "--variants", "int8", "--keep-variants", kept,
                    "--model", f"{other}:range=0:255", "--label-map", folder / "map.json", "--method", "ml-deepfool",
                    "--max-iter", "20", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    names = ["nchw", "int8", "nhwc255"]
    assert summary["models"] == names and not (tmp_path / "check.h5.parts").exists()
    files = {"nchw": reference, "int8": kept / "nchw.int8.onnx", "nhwc255": other}
    labels = {"nchw": DIGITS, "int8": DIGITS, "nhwc255": NAMED}
    order = {name: [labels[name].index(label if name != "nhwc255" else f"digit_{label}") for label in DIGITS]
             for name in names}  # each model's column of reference label 0..9
    with h5py.File(out, "r") as handle:
        x = handle["x"][:]
        equal, diff = handle["agreement/equal"][:], handle["agreement/max_score_diff"][:]
        transfer = handle["transfer/success"][:]
        runs = {name: {key: handle[f"models/{name}/run/{key}"][:] for key in ("x_adv", "y_target", "attacked",
                                                                                "success")} for name in names}
        stored_scores = {name: handle[f"models/{name}/scores"][:] for name in names}
    assert np.allclose(summary["transfer"], transfer, atol=1e-6, equal_nan=True)
    clean = {name: ort_scores(files[name], as_input(name, x))[:, order[name]] for name in names}
    for i, a in enumerate(names):
        assert np.allclose(stored_scores[a], clean[a], atol=1e-6)
        for j, b in enumerate(names):
            assert equal[i, j] == pytest.approx(np.all((clean[a] > 0) == (clean[b] > 0), axis=1).mean())
            assert diff[i, j] == pytest.approx(np.abs(clean[a].astype(np.float64) - clean[b]).max(), abs=1e-6)
    assert diff[0, 2] < 1e-4 and diff[0, 1] > 0  # the same network exactly; int8 rounds
    for i, a in enumerate(names):
        run = runs[a]
        attacked = run["attacked"].astype(bool)
        assert attacked.sum() >= 5
        for j, b in enumerate(names):
            rows = as_input(b, as_reference(a, run["x_adv"]))
            predicted = ort_scores(files[b], rows)[:, order[b]] > 0
            target = run["y_target"][:, np.argsort(order[a])] if a == "nhwc255" else run["y_target"]
            reached = (predicted == target.astype(bool)).all(axis=1) & attacked
            if i == j:
                assert np.array_equal(reached, run["success"] & attacked)
            assert transfer[i, j] == pytest.approx(reached.sum() / attacked.sum()), (a, b)
    assert transfer[0, 2] == transfer[0, 0] and transfer[2, 0] == transfer[2, 2]  # same network


def test_crosscheck_refusals_are_one_line(digits, tmp_path):
    reference, other, folder = digits
    base = ["crosscheck", str(reference), str(folder / "x.npy"), "-o", str(tmp_path / "c.h5"), "--method",
            "ml-deepfool", "--max-iter", "3", "--limit", "2", "--quiet"]
    for extra, code, words in [(["--variants", "int9"], 2, "unknown variant"),
                               (["--model", f"{other}:layout=nchw"], 2, "[8, 8, 1]"),
                               (["--model", str(other)], 2, "--label-map")]:
        result = CliRunner().invoke(main, base + extra)
        assert result.exit_code == code and words in result.output and len(result.output.splitlines()) == 1, \
            result.output
    (tmp_path / "c.h5.parts").mkdir()
    result = CliRunner().invoke(main, base)
    assert result.exit_code == 2 and "--resume" in result.output
    if importlib.util.find_spec("onnxconverter_common") is None:
        result = CliRunner().invoke(main, base + ["--variants", "fp16", "--overwrite"])
        assert result.exit_code == 3 and "onnxconverter-common" in result.output
        assert len(result.output.splitlines()) == 1


def test_an_interrupted_crosscheck_resumes_keeping_the_finished_runs(digits, tmp_path):
    reference, other, folder = digits
    out = tmp_path / "check.h5"
    config = AttackConfig(method="ml-deepfool", max_iter=10, limit=6)
    models = [ModelArg(str(other), None, (0.0, 255.0))]
    read_as = ReadAs(label_map=json.loads((folder / "map.json").read_text()))
    started: list[str] = []

    def stop_at_the_second(name: str) -> None:
        started.append(name)
        if len(started) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_crosscheck(ModelArg(str(reference)), folder / "x.npy", out, config, models, ["int8"], read_as=read_as,
                       on_member=stop_at_the_second)
    assert not out.exists() and (tmp_path / "check.h5.parts" / "nchw.h5").exists()
    first_run = (tmp_path / "check.h5.parts" / "nchw.h5").read_bytes()
    refused = CliRunner().invoke(main, ["crosscheck", str(reference), str(folder / "x.npy"), "-o", str(out),
                                        "--method", "ml-deepfool", "--quiet"])
    assert refused.exit_code == 2 and "--resume" in refused.output
    started.clear()
    summary = run_crosscheck(ModelArg(str(reference)), folder / "x.npy", out, replace(config, resume=True), models,
                             ["int8"], read_as=read_as, on_member=started.append)
    assert started == ["int8", "nhwc255"]  # the reference's finished run was kept, not redone
    with h5py.File(out, "r") as handle:
        assert handle.attrs["complete"] and handle["models/nchw/run"].attrs["complete"]
        assert handle["transfer/success"].shape == (3, 3)
    assert summary["transfer"][0][2] == summary["transfer"][0][0] and len(first_run) > 0


def test_validate_keeps_taking_a_model_without_a_batch_dim_as_it_is(tmp_path):
    from .test_real_exports import SequenceNoteTagger

    torch.manual_seed(0)
    path = tmp_path / "notes.onnx"
    torch.onnx.export(SequenceNoteTagger().eval(), (torch.rand(16, 6),), str(path), dynamo=False, opset_version=17,
                      input_names=["spectrogram"], output_names=["notes"],
                      dynamic_axes={"spectrogram": {0: "time"}, "notes": {0: "frames"}})
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(0, 1, (2, 16, 6)).astype(np.float32))
    out = tmp_path / "r.h5"
    assert invoke("attack", path, tmp_path / "x.npy", "-o", out, "--target", "random", "--max-iter", "10",
                  "--binary-steps", "1", "--quiet").exit_code == 0
    result = invoke("validate", out, "--model", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["notes"]["input_mapping"].startswith("identity")
    with h5py.File(out, "r") as handle:
        assert np.array_equal(handle["transfer/notes/success"][:], handle["success"][:] & handle["attacked"][:])
