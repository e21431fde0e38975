"""The converted graph's 4-D weights in channels-last memory format (onnxattack/bridge/layout.py): same
scores and input gradients as contiguous, checked against onnxruntime; a measured choice made once per
model and machine and read back by every later process, so a run's processes agree bit for bit."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main
from torch import nn

from onnxattack import MLCarliniWagner, attack_arrays, load
from onnxattack.bridge.layout import TIMING_ROWS, layout_key, layouts_dir
from onnxattack.bridge.trace import TracedGraph

from . import exporters as ex


class PooledCNN(nn.Module):
    """Convolutions and max-pools: the ops whose speed depends on the memory format."""

    def __init__(self, labels: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 4 * 4, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.features(x).flatten(1)) * 3)


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("layout") / "pooled.onnx"
    return str(ex.export_torch(PooledCNN(), torch.rand(2, 1, 16, 16), path, dynamo=False, opset=17))


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXATTACK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _untraced(graph: torch.nn.Module) -> torch.nn.Module:
    return graph.graph if isinstance(graph, TracedGraph) else graph


def _conv_weights(graph: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in _untraced(graph).parameters() if p.dim() == 4 and p.shape[1] > 1]  # one channel: both layouts


def _scores_and_gradient(graph: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_(True)
    z = graph(leaf)
    (grad,) = torch.autograd.grad((z * torch.linspace(-1, 1, z.shape[1])).sum(), leaf)
    return z.detach(), grad


def test_channels_last_graph_matches_contiguous_and_onnxruntime(cnn_path, home) -> None:
    contiguous = load(cnn_path, device="cpu", memory_format="contiguous", trace=False)
    fast = load(cnn_path, device="cpu", memory_format="channels-last", trace=False)
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
               for w in _conv_weights(fast.graph))
    assert all(w.is_contiguous() for w in _conv_weights(contiguous.graph))
    assert any(note.startswith("memory format channels-last") for note in fast.notes)
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    z0, g0 = _scores_and_gradient(contiguous.graph, x)
    z1, g1 = _scores_and_gradient(fast.graph, x)
    torch.testing.assert_close(z1, z0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)
    assert g1.is_contiguous()  # the attacked input's gradient keeps the input's layout
    np.testing.assert_allclose(fast.reader.to_scores(z1).numpy(), fast.ort_scores(x.numpy()), atol=1e-5)
    assert fast.fidelity is not None and fast.fidelity <= 1e-4
    assert not (home / "layouts").exists()  # asked for: nothing measured, nothing stored


def test_auto_measures_once_and_every_later_load_reads_the_stored_choice(cnn_path, home) -> None:
    first = load(cnn_path, device="cpu", trace=False)
    stored = list((home / "layouts").glob("*.json"))
    assert len(stored) == 1
    decision = json.loads(stored[0].read_text())
    assert decision["memory_format"] in ("channels-last", "contiguous")
    assert (_conv_weights(first.graph)[0].is_contiguous() is (decision["memory_format"] == "contiguous"))
    for planted in ("channels-last", "contiguous"):  # a later process follows the file, whatever it times
        stored[0].write_text(json.dumps({"memory_format": planted, "why": f"{planted}: planted by the test"}))
        later = load(cnn_path, device="cpu", trace=False)
        weight = _conv_weights(later.graph)[0]
        assert weight.is_contiguous() is (planted == "contiguous")
        assert (f"memory format {planted}: planted by the test" in later.notes) is (planted == "channels-last")


def test_the_layouts_are_timed_at_a_runs_first_batch_not_on_the_probes_few_rows(cnn_path, home) -> None:
    load(cnn_path, device="cpu", trace=False, probe=np.random.default_rng(0).random((3, 1, 16, 16), np.float32))
    (stored,) = (home / "layouts").glob("*.json")
    assert f"a fwd+bwd of {TIMING_ROWS} rows took" in json.loads(stored.read_text())["why"]


def test_a_damaged_choice_file_is_measured_again_and_replaced(cnn_path, home) -> None:
    model = load(cnn_path, device="cpu", trace=False)
    key = layout_key(model.info.sha256, model.score_output.name, model.input.name, model.device)
    path = layouts_dir() / f"{key}.json"
    for damage in ("{not json", json.dumps({"memory_format": "sideways", "why": 1}), json.dumps([1, 2])):
        path.write_text(damage)
        load(cnn_path, device="cpu", trace=False)
        assert json.loads(path.read_text())["memory_format"] in ("channels-last", "contiguous")


def test_graphs_without_4d_weights_are_left_alone(tmp_path, home) -> None:
    torch.manual_seed(0)
    path = ex.export_torch(ex.MLP(head="sigmoid"), torch.rand(2, 12), tmp_path / "mlp.onnx", dynamo=False, opset=17)
    load(path, device="cpu", memory_format="channels-last")
    load(path, device="cpu")
    assert not (home / "layouts").exists()


def test_runs_in_either_layout_succeed_by_onnxruntime_and_agree(cnn_path, home) -> None:
    x = np.random.default_rng(0).uniform(0, 1, size=(6, 1, 16, 16)).astype(np.float32)
    results = {}
    for memory_format in ("contiguous", "channels-last"):
        model = load(cnn_path, device="cpu", memory_format=memory_format)
        results[memory_format] = attack_arrays(model, x, MLCarliniWagner(max_iter=60, binary_steps=3),
                                               target="hide-single")
    contiguous, fast = results["contiguous"], results["channels-last"]
    assert contiguous.success.sum() >= 4 and fast.success.sum() >= 4  # judged by onnxruntime
    both = contiguous.success & fast.success
    np.testing.assert_allclose(fast.l2[both], contiguous.l2[both], rtol=0.1)


def test_cli_memory_format(cnn_path, home, tmp_path) -> None:
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.random.default_rng(0).uniform(0, 1, size=(4, 1, 16, 16)).astype(np.float32))
    runner = CliRunner()
    bad = runner.invoke(main, ["attack", cnn_path, str(inputs), "-o", str(tmp_path / "bad.h5"),
                              "--memory-format", "sideways"])
    assert bad.exit_code == 2 and "sideways" in bad.output
    out = tmp_path / "run.h5"
    done = runner.invoke(main, ["attack", cnn_path, str(inputs), "-o", str(out), "--method", "ml-deepfool",
                               "--memory-format", "channels-last"])
    assert done.exit_code == 0, done.output
    with h5py.File(out, "r") as handle:
        notes = json.loads(handle.attrs["notes"])
    assert any(note.startswith("memory format channels-last") for note in notes)


def test_a_graph_that_cannot_be_copied_stays_contiguous(home) -> None:
    import threading

    from onnxattack.bridge.layout import choose_layout

    class Locked(nn.Module):  # holds a lock: deepcopy refuses it
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.lock = threading.Lock()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).flatten(1)

    graph = Locked()
    choice = choose_layout(graph, torch.rand(2, 2, 5, 5), "auto", "key", 1e-4)
    assert choice.graph is graph and choice.memory_format == "contiguous"
    assert not (home / "layouts").exists()


def test_the_choice_is_measured_once_and_a_broken_lock_does_not_stop_a_load(cnn_path, home, monkeypatch) -> None:
    import onnxattack.bridge.layout as layout

    measured = []
    original = layout._measure
    monkeypatch.setattr(layout, "_measure", lambda *args: measured.append(1) or original(*args))
    (home / "layouts" / ".lock").mkdir(parents=True)  # a lock that cannot be opened: no lock, same results
    for _ in range(3):
        load(cnn_path, device="cpu", trace=False)
    assert len(measured) == 1
    assert len(list((home / "layouts").glob("*.json"))) == 1
    assert not list((home / "layouts").glob("*.tmp"))


def test_a_resume_continues_in_the_layout_its_rows_were_computed_in(cnn_path, home, tmp_path) -> None:
    """The stored choice changed between the interruption and --resume (a cleared cache, another machine):
    the resumed rows are still those of an uninterrupted run in the file's recorded layout."""
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.random.default_rng(0).uniform(0, 1, size=(4, 1, 16, 16)).astype(np.float32))
    runner = CliRunner()
    common = ["--method", "ml-cw", "--max-iter", "60", "--batch-size", "2", "--quiet"]

    def attack(out, *extra: str) -> None:
        done = runner.invoke(main, ["attack", cnn_path, str(inputs), "-o", str(out), *common, *extra])
        assert done.exit_code == 0, done.output

    model = load(cnn_path, device="cpu")
    key = layout_key(model.info.sha256, model.score_output.name, model.input.name, model.device)
    stored = layouts_dir() / f"{key}.json"

    def plant(memory_format: str) -> None:
        stored.write_text(json.dumps({"memory_format": memory_format, "why": f"{memory_format}: planted"}))

    plant("channels-last")
    whole = tmp_path / "whole.h5"
    attack(whole)
    attack(tmp_path / "contiguous.h5", "--memory-format", "contiguous")
    with h5py.File(whole, "r") as a, h5py.File(tmp_path / "contiguous.h5", "r") as b:
        assert a.attrs["memory_format"] == "channels-last" and b.attrs["memory_format"] == "contiguous"
        assert not np.array_equal(a["x_adv"][:], b["x_adv"][:])  # the layouts do round differently
    cut = tmp_path / "cut.h5"
    cut.write_bytes(whole.read_bytes())
    with h5py.File(cut, "r+") as handle:
        handle.attrs["rows_written"], handle.attrs["complete"] = 2, False
    plant("contiguous")  # this machine's choice is now the other one
    attack(cut, "--resume")
    with h5py.File(whole, "r") as a, h5py.File(cut, "r") as b:
        assert b.attrs["memory_format"] == "channels-last"
        np.testing.assert_array_equal(b["x_adv"][:], a["x_adv"][:])


def test_a_stored_contiguous_choice_costs_no_copy_of_the_graph(cnn_path, home, monkeypatch) -> None:
    import onnxattack.bridge.layout as layout

    model = load(cnn_path, device="cpu", trace=False)
    key = layout_key(model.info.sha256, model.score_output.name, model.input.name, model.device)
    planted = {"memory_format": "contiguous", "why": "contiguous: planted"}
    (layouts_dir() / f"{key}.json").write_text(json.dumps(planted))
    copies = []
    original = layout.channels_last
    monkeypatch.setattr(layout, "channels_last", lambda graph: copies.append(1) or original(graph))
    later = load(cnn_path, device="cpu", trace=False)
    assert copies == [] and later.memory_format == "contiguous"
    load(cnn_path, device="cpu", trace=False, memory_format="channels-last")
    assert copies == [1]  # the counter sees the copies that are made


def test_a_device_or_a_huge_file_in_place_of_the_stored_choice_is_never_read_whole(cnn_path, home) -> None:
    import os

    model = load(cnn_path, device="cpu", trace=False)
    key = layout_key(model.info.sha256, model.score_output.name, model.input.name, model.device)
    path = layouts_dir() / f"{key}.json"
    for hostile in ("/dev/zero", "fifo", "huge"):
        path.unlink(missing_ok=True)
        if hostile == "fifo":
            os.mkfifo(path)  # opening it for reading would block forever
        elif hostile == "huge":
            path.write_text('{"memory_format": "contiguous", "why": "' + "x" * 100_000 + '"}')
        else:
            path.symlink_to(hostile)  # reading it whole would never end
        again = load(cnn_path, device="cpu", trace=False)
        assert not any("x" * 100 in note for note in again.notes)
        assert path.is_file() and not path.is_symlink()  # measured again and replaced by a plain file
        assert json.loads(path.read_text())["memory_format"] in ("channels-last", "contiguous")
