"""The zoo's models by name: what `onnxattack zoo list` shows and `zoo build` builds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_VARIABLE = "ONNXATTACK_HOME"  # overrides the user cache folder (models go to $ONNXATTACK_HOME/zoo)


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    task: str  # "classifier" or "ranker"
    input_range: tuple[float, float]
    top_k: int | None = None


MODELS: dict[str, ZooModel] = {
    model.name: model
    for model in (
        ZooModel("digits-mosaic", "CNN multi-label classifier on 2x2 mosaics of scikit-learn's digits "
                 "(1x16x16 in [0,1], 10 labels, sigmoid probabilities; dynamo exporter, opset 18)",
                 "classifier", (0.0, 1.0)),
        ZooModel("digits-ranker", "CNN label ranker on mosaics of 3 distinct digits, trained with a "
                 "pairwise ranking loss (raw scores, top-3; legacy exporter, opset 13)",
                 "ranker", (0.0, 1.0), top_k=3),
        ZooModel("yeast-mlp", "MLP on the Yeast benchmark from river (103 raw features, 14 labels, "
                 "logits; standardisation inside the graph; legacy exporter, opset 17)",
                 "classifier", (-1.0, 1.0)),
        ZooModel("yeast-mlp-int8", "yeast-mlp shrunk by onnxruntime's quantize_dynamic (int8 weights; "
                 "activations quantised per call: DynamicQuantizeLinear + MatMulInteger)",
                 "classifier", (-1.0, 1.0)),
        ZooModel("yeast-forest", "Random forests on Yeast, one per label (scikit-learn OneVsRest, 14 labels, "
                 "probabilities; skl2onnx, ai.onnx.ml TreeEnsembleClassifier): no torch graph, so attacks use "
                 "gradients estimated from onnxruntime queries", "classifier", (-1.0, 1.0)),
        ZooModel("topics-text", "Topic tagger on sentences made from shipped word lists (tzdata's city names by "
                 "region, Pillow's colour names, scikit-learn's stop words): input_ids + attention_mask int64 "
                 "[N, 20], an embedding first, 6 labels, sigmoid probabilities; legacy exporter, opset 17; "
                 "attack it with --method ml-hotflip --attack-input input_ids", "classifier", (0.0, 1.0)),
    )
}


def home() -> Path:
    """onnxattack's folder for what it builds: $ONNXATTACK_HOME, else the user cache folder (never the
    package's own folder, which a non-editable install places in site-packages)."""
    if os.environ.get(HOME_VARIABLE):
        return Path(os.environ[HOME_VARIABLE]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("onnxattack", appauthor=False))


def zoo_dir() -> Path:
    """Where zoo models are built ($ONNXATTACK_ZOO_DIR, kept for older scripts, else home()/zoo)."""
    return Path(os.environ.get("ONNXATTACK_ZOO_DIR") or home() / "zoo")


def model_path(name: str, directory: Path | None = None) -> Path:
    return (directory or zoo_dir()) / f"{name}.onnx"
