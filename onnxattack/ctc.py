"""A CTC recogniser's strings before and after the attack: greedy decoding of onnxruntime's frame scores.

Greedy CTC decoding takes each frame's most likely symbol, merges repeats and drops the blank. The
blank's index is the user's (`--ctc-blank N`), else the model's metadata (`ctc_blank`, `blank` or
`blank_index`), else 0 (the convention of PyTorch's CTCLoss, PaddleOCR and ddddocr). Symbols are
spelt with the model's label names (metadata `labels` or --labels: the charset): concatenated when
every name is one character, space-separated otherwise; by index when the model has no names.
"""

from __future__ import annotations

import os

import numpy as np

from .config import AttackConfig
from .errors import BadInputError
from .feeds import given_once, parse_set
from .loader import LoadSettings, load
from .model import ModelFile, ModelInfo, open_model, read_labels
from .results import ResultFile, write_decoded

BLANK_METADATA = ("ctc_blank", "blank", "blank_index")
EXAMPLES = 3  # rows shown in the summary


def greedy_decode(frames: np.ndarray, blank: int) -> list[list[int]]:
    """[N, T, L] frame scores -> per row, the symbol indices: argmax per frame, repeats merged, blanks dropped."""
    best = frames.reshape(len(frames), -1, frames.shape[-1]).argmax(axis=-1)
    decoded = []
    for row in best:
        first_of_run = np.concatenate([[True], row[1:] != row[:-1]])
        decoded.append([int(symbol) for symbol in row[first_of_run & (row != blank)]])
    return decoded


def spell(symbols: list[int], names: list[str] | None) -> str:
    if names is None:
        return " ".join(str(symbol) for symbol in symbols)
    chosen = [names[symbol] for symbol in symbols]
    return "".join(chosen) if all(len(name) == 1 for name in names if name) else " ".join(chosen)


def blank_index(info: ModelInfo, requested: int | None, labels: int) -> tuple[int, str]:
    """(the blank's index, where it came from: 'given', 'metadata <key>' or 'default')."""
    if requested is not None:
        chosen, source = requested, "given"
    else:
        key = next((key for key in BLANK_METADATA if key in info.metadata), None)
        if key is None:
            chosen, source = 0, "default"
        else:
            try:
                chosen, source = int(info.metadata[key]), f"metadata {key}"
            except ValueError:
                raise BadInputError(f"the model's metadata {key}={info.metadata[key]!r} is not a symbol index "
                                    f"(give --ctc-blank N)") from None
    if not 0 <= chosen < labels:
        raise BadInputError(f"CTC blank index {chosen} ({source}) is not one of the {labels} symbols")
    return chosen, source


def decode_run(model_path: str | os.PathLike | ModelFile, path: str | os.PathLike, config: AttackConfig,
               batch: int = 64) -> None:
    """Greedy-decode every row of a finished CTC run (x and x_adv, scored again by onnxruntime) and store
    the strings in decoded/x and decoded/x_adv."""
    model_file = model_path if isinstance(model_path, ModelFile) else open_model(model_path)
    with ResultFile.open(path) as results:
        rows = results.rows
        params = results.params
        others = results.passthrough_names()
        probe = results.column("x", 0, min(rows, 4))
        probe_others = {name: results.passthrough(name, 0, min(rows, 4)) for name in others}
        attacked = results.attrs.get("attack_input")
        box = tuple(params.get("box", (0.0, 1.0)))
        settings = LoadSettings.from_config(config, convert=False, box=box, attack_input=attacked,
                                            batch_axes=config.batch_axes())
        constants = given_once(model_file.info, parse_set(config.set_values), {}, attacked)
        model = load(model_file, settings, probe=probe, probe_others=probe_others or None, constants=constants)
        blank, source = blank_index(model_file.info, config.ctc_blank, model.num_labels)
        names = model.labels if read_labels(model_file.info, config.labels_file) is not None else None
        texts: dict[str, list[str]] = {"x": [], "x_adv": []}
        for start in range(0, rows, batch):
            stop = min(rows, start + batch)
            with model.bound({name: results.passthrough(name, start, stop) for name in others}):
                for column, decoded in texts.items():
                    frames = model.scorer.frames(results.column(column, start, stop))
                    decoded.extend(spell(symbols, names) for symbols in greedy_decode(frames, blank))
    write_decoded(path, texts["x"], texts["x_adv"], blank=blank, blank_source=source)


def examples(path: str | os.PathLike, count: int = EXAMPLES) -> dict:
    """A CTC run's decodes for the summary: the blank used, where it came from, and `count` rows (those
    whose string changed first)."""
    with ResultFile.open(path) as results:
        stored = results.decoded()
    if stored is None:
        return {}
    before, after, attrs = stored
    order = sorted(range(len(before)), key=lambda row: before[row] == after[row])
    return {"blank": attrs.get("blank"), "blank_source": attrs.get("blank_source"),
            "examples": [{"row": row, "x": before[row], "x_adv": after[row]} for row in order[:count]]}
