"""Token-id models: the zoo's topics-text (input_ids + attention_mask, an nn.Embedding first, torch's legacy
exporter) attacked from the command line with ml-hotflip; success recomputed here from onnxruntime fed
the result file alone, changed tokens counted from the file. Models without an embedding lookup are
refused with one line, or searched by onnxruntime queries in the --range given; other methods refuse
token ids naming ml-hotflip."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main
from onnxattack.zoo import text
from onnxattack.zoo.build import build_topics_text
from onnxattack.zoo.registry import MODELS
from torch import nn

import onnxattack as oa
from onnxattack.loader import load
from onnxattack.tokens import TokenVictim, vocabulary_box

warnings.filterwarnings("ignore")
ROWS = 40


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exit_code == 1:
        raise result.exception  # an internal error: show its traceback
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def topics(tmp_path_factory) -> tuple[Path, Path]:
    """The zoo model, built here (a few seconds), and its test inputs written by `zoo inputs`."""
    folder = tmp_path_factory.mktemp("text")
    model = folder / "topics-text.onnx"
    metrics = build_topics_text(MODELS["topics-text"], model)
    assert metrics["exact_match"] >= 0.85
    inputs = folder / "inputs.npz"
    code, output = run("zoo", "inputs", "topics-text", "--count", str(ROWS), "-o", str(inputs))
    assert code == 0, output
    return model, inputs


def hotflip(model: Path, inputs: Path, out: Path, *extra: str) -> dict:
    code, output = run("attack", str(model), str(inputs), "-o", str(out), "--method", "ml-hotflip",
                       "--attack-input", "input_ids", "--quiet", "--json", "--overwrite", *extra)
    assert code == 0, output
    return json.loads(output)


def read(out: Path) -> dict[str, np.ndarray]:
    with h5py.File(out, "r") as handle:
        rows = {name: handle[name][:] for name in ("x", "x_adv", "y_target", "success", "attacked", "l2", "linf")}
        rows["attention_mask"] = handle["inputs/attention_mask"][:]
    return rows


def test_hotflip_hides_a_topic_with_at_most_three_changed_tokens(topics, tmp_path):
    model, inputs = topics
    out = tmp_path / "r.h5"
    summary = hotflip(model, inputs, out)
    rows = read(out)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"input_ids": rows["x_adv"], "attention_mask": rows["attention_mask"]})[0]
    recomputed = ((scores > 0.5) == rows["y_target"].astype(bool)).all(axis=1) & rows["attacked"]
    assert np.array_equal(recomputed, rows["success"])
    assert rows["attacked"].all() and recomputed.mean() >= 0.8, summary
    changed = (rows["x_adv"] != rows["x"]).sum(axis=1)
    assert changed.max() <= 3 and changed[recomputed].min() >= 1
    assert np.array_equal(rows["l2"], changed) and np.array_equal(rows["linf"], changed)  # l2, linf: tokens changed
    assert rows["x_adv"].dtype == np.int64
    special = np.isin(rows["x"], [text.CLS, text.SEP])
    assert np.array_equal(rows["x_adv"][special], rows["x"][special])
    assert not np.isin(rows["x_adv"][~special], [text.CLS, text.SEP]).any()  # never introduced either
    masked = rows["attention_mask"] == 0
    assert masked.any() and np.array_equal(rows["x_adv"][masked], rows["x"][masked])
    code, output = run("validate", str(out), "--model", str(model), "--json")  # the file alone re-scores
    assert code == 0, output
    with h5py.File(out, "r") as handle:
        assert np.array_equal(handle[f"transfer/{model.stem}/success"][:], rows["success"])


def test_the_cut_graph_matches_onnxruntime_and_its_gradient_finite_differences(topics):
    model, inputs = topics
    arrays = np.load(inputs)
    ids, mask = arrays["input_ids"][:4], arrays["attention_mask"][:4]
    box, _ = vocabulary_box(onnx.load(str(model)), "input_ids")
    loaded = load(str(model), attack_input="input_ids", tokens=True, box=box, probe=ids,
                  probe_others={"attention_mask": mask})
    victim = loaded.victim()
    assert isinstance(victim, TokenVictim) and victim.embedding is not None and victim.embedded is not None
    embedded = victim.embedded
    rows = torch.as_tensor(ids)
    with loaded.bound({"attention_mask": mask}):
        vectors = victim.embedding[rows].clone().requires_grad_(True)
        logits = embedded(vectors, rows)
        assert torch.allclose(logits, victim.verdict(rows).float(), atol=1e-4)  # the logits onnxruntime computes
        (gradient,) = torch.autograd.grad(logits[:, 0].sum(), vectors)
        direction = torch.randn_like(vectors, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            step = 1e-3
            difference = (embedded(vectors + step * direction, rows)[:, 0].sum()
                          - embedded(vectors - step * direction, rows)[:, 0].sum()) / (2 * step)
    assert abs(float(difference) - float((gradient * direction).sum())) <= 1e-2 * max(1.0, abs(float(difference)))


def test_the_python_api_attacks_token_ids_as_the_readme_shows(topics):
    model, inputs = topics
    arrays = np.load(inputs)
    ids, mask = arrays["input_ids"][:12], arrays["attention_mask"][:12]
    box, _ = vocabulary_box(onnx.load(str(model)), "input_ids")
    loaded = oa.load(str(model), attack_input="input_ids", tokens=True, box=box, probe=ids[:4],
                     probe_others={"attention_mask": mask[:4]})
    result = oa.attack_arrays(loaded, ids, oa.MLHotFlip(max_changes=3), other_inputs={"attention_mask": mask})
    assert result.x_adv.dtype == np.int64 and result.success_rate >= 0.75
    assert np.array_equal(result.l2, (result.x_adv != ids).sum(axis=1))


def test_vocab_and_keep_ids_are_respected(topics, tmp_path):
    model, inputs = topics
    vocabulary = text.vocabulary()
    allowed = vocabulary.filler[::2]  # half the stop words
    np.save(tmp_path / "vocab.npy", allowed)
    kept = vocabulary.topics[0]  # africa's cities are never changed
    (tmp_path / "keep.txt").write_text(",".join(map(str, kept)))
    out = tmp_path / "r.h5"
    hotflip(model, inputs, out, "--vocab", str(tmp_path / "vocab.npy"), "--keep-ids",
            ",".join(map(str, [text.CLS, text.SEP, *kept])))
    rows = read(out)
    changed = rows["x_adv"] != rows["x"]
    assert changed.any()
    assert np.isin(rows["x_adv"][changed], allowed).all()
    assert not np.isin(rows["x"][changed], kept).any()


def test_bad_vocab_file_is_one_line_exit_2(topics, tmp_path):
    model, inputs = topics
    (tmp_path / "vocab.txt").write_text("3 4 five")
    code, output = run("attack", str(model), str(inputs), "-o", str(tmp_path / "r.h5"), "--method", "ml-hotflip",
                       "--attack-input", "input_ids", "--vocab", str(tmp_path / "vocab.txt"))
    assert code == 2 and "--vocab" in output and len(output.strip().splitlines()) == 1, output


def test_other_methods_refuse_token_ids_naming_ml_hotflip(topics, tmp_path):
    model, inputs = topics
    code, output = run("inspect", str(model), "--json")
    assert code == 0 and json.loads(output[:output.rindex("}") + 1])["attack_route"] == "ml-hotflip", output
    code, output = run("attack", str(model), str(inputs), "-o", str(tmp_path / "r.h5"), "--method", "ml-pgd",
                       "--attack-input", "input_ids")
    assert code == 3 and "ml-hotflip" in output and len(output.strip().splitlines()) == 1, output


class TinyBert(nn.Module):
    """An untrained BERT-shaped tagger as optimum-style exports hold it: word + position + token-type
    embeddings (the position ids come from the ids' Shape), a transformer layer with a padding mask."""

    def __init__(self, vocab: int = 50, dim: int = 16, labels: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.word, self.position, self.kind = nn.Embedding(vocab, dim), nn.Embedding(32, dim), nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim)
        self.layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, labels)

    def forward(self, input_ids, attention_mask, token_type_ids):
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        h = self.norm(self.word(input_ids) + self.position(positions) + self.kind(token_type_ids))
        h = self.layer(h, src_key_padding_mask=attention_mask == 0)
        weights = attention_mask.unsqueeze(-1).float()
        return torch.sigmoid(self.head((h * weights).sum(1) / weights.sum(1)) * 4)


def test_a_bert_shaped_export_is_cut_after_its_word_embedding(tmp_path):
    names = ["input_ids", "attention_mask", "token_type_ids"]
    path = tmp_path / "bert.onnx"
    sample = (torch.randint(3, 50, (2, 12)), torch.ones(2, 12, dtype=torch.long), torch.zeros(2, 12, dtype=torch.long))
    export(TinyBert().eval(), sample, str(path), dynamo=False, opset_version=17, input_names=names,
           output_names=["scores"], dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                                  "scores": {0: "batch"}})
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(3, 50, (16, 12)), np.ones((16, 12), dtype=np.int64)
    ids[:, 0] = 1
    for row, length in enumerate(rng.integers(6, 11, 16)):
        ids[row, length], ids[row, length + 1:], mask[row, length + 1:] = 2, 0, 0
    np.savez(tmp_path / "inputs.npz", input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))
    out = tmp_path / "r.h5"
    summary = hotflip(path, tmp_path / "inputs.npz", out)
    assert summary["torch_agreement"] == 1.0 and summary["success_rate"] > 0, summary
    with h5py.File(out, "r") as handle:
        x, x_adv, success = handle["x"][:], handle["x_adv"][:], handle["success"][:]
        target = handle["y_target"][:].astype(bool)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"input_ids": x_adv, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    assert np.array_equal(((scores > 0.5) == target).all(axis=1), success)
    assert (x_adv != x).sum(axis=1).max() <= 3
    assert np.array_equal(x_adv[mask == 0], x[mask == 0]) and np.array_equal(x_adv[:, 0], x[:, 0])


def export(*args, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(*args, **kwargs)


class CountsTokens(nn.Module):
    """Token ids used as numbers (a Cast, no embedding lookup) -> 3 sigmoid scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(ids.float() / 10))


def test_a_model_without_an_embedding_lookup_is_refused_or_searched_by_queries_in_its_range(tmp_path):
    path = tmp_path / "counts.onnx"
    export(CountsTokens().eval(), (torch.randint(0, 10, (2, 6)),), str(path), dynamo=False,
           opset_version=17, input_names=["ids"], output_names=["scores"],
           dynamic_axes={"ids": {0: "batch"}, "scores": {0: "batch"}})
    ids = np.random.default_rng(0).integers(0, 10, (20, 6))
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "r.h5"
    code, output = run("attack", str(path), str(tmp_path / "ids.npy"), "-o", str(out), "--method", "ml-hotflip")
    assert code == 3 and "embedding lookup" in output and "--range" in output, output
    assert len(output.strip().splitlines()) == 1 and not out.exists()
    code, output = run("attack", str(path), str(tmp_path / "ids.npy"), "-o", str(out), "--method", "ml-hotflip",
                       "--range", "0", "9", "--quiet", "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["gradients"] == "estimated" and "sampled" in summary["notes"][-1], summary
    with h5py.File(out, "r") as handle:
        x_adv, success, attacked = handle["x_adv"][:], handle["success"][:], handle["attacked"][:]
        target = handle["y_target"][:].astype(bool)
    scores = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": x_adv})[0]
    assert np.array_equal(((scores > 0.5) == target).all(axis=1) & attacked, success)
    assert attacked.sum() >= 5 and success[attacked].mean() >= 0.8
    assert (x_adv != ids).sum(axis=1).max() <= 3 and x_adv.min() >= 0 and x_adv.max() <= 9


def test_hotflip_on_a_floating_input_is_exit_2(tmp_path):
    path = tmp_path / "float.onnx"
    export(nn.Linear(6, 3).eval(), (torch.rand(2, 6),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["scores"],
                      dynamic_axes={"x": {0: "batch"}, "scores": {0: "batch"}})
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(0, 1, (4, 6)).astype(np.float32))
    code, output = run("attack", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.h5"),
                       "--method", "ml-hotflip")
    assert code == 2 and "token ids" in output, output


@pytest.mark.skipif(importlib.util.find_spec("tokenizers") is not None, reason="tokenizers is installed")
def test_tokenizer_without_the_package_is_exit_2(topics, tmp_path):
    model, inputs = topics
    (tmp_path / "tokenizer.json").write_text("{}")
    code, output = run("attack", str(model), str(inputs), "-o", str(tmp_path / "r.h5"), "--method", "ml-hotflip",
                       "--attack-input", "input_ids", "--tokenizer", str(tmp_path / "tokenizer.json"))
    assert code == 2 and "tokenizers" in output and not (tmp_path / "r.h5").exists(), output


@pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None, reason="tokenizers is not installed")
def test_tokenizer_stores_and_prints_the_texts(topics, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    words = text.vocabulary().words
    tokenizer = Tokenizer(WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.add_special_tokens(text.SPECIALS)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    model, inputs = topics
    out = tmp_path / "r.h5"
    code, output = run("attack", str(model), str(inputs), "-o", str(out), "--method", "ml-hotflip",
                       "--attack-input", "input_ids", "--quiet", "--tokenizer", str(tmp_path / "tokenizer.json"))
    assert code == 0 and "\n-> " in output, output
    with h5py.File(out, "r") as handle:
        x, x_adv = handle["x"][:], handle["x_adv"][:]
        before = [value.decode() for value in handle["text/x"][:]]
        after = [value.decode() for value in handle["text/x_adv"][:]]
    assert before[0] == " ".join(words[i] for i in x[0] if i > 3)  # special tokens dropped
    assert after[0] == " ".join(words[i] for i in x_adv[0] if i > 3)
