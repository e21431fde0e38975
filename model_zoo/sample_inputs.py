"""Test inputs of a zoo model: `onnxattack zoo inputs NAME -o X.npy` (this module's `main` is the same
command for older scripts)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from onnxattack.errors import BadInputError
from onnxattack.safety import atomic_write, check_plain_output

from . import data, text


def test_inputs(name: str, count: int) -> np.ndarray | dict[str, np.ndarray]:
    """The first `count` held-out test inputs of zoo model `name` (never seen in training); a model with
    several inputs gets one array per input name."""
    if name == "topics-text":
        split = text.topic_sentences()
        return {"input_ids": split.ids_test[:count], "attention_mask": split.mask_test[:count]}
    if name == "digits-mosaic":
        return data.digit_mosaics().x_test[:count]
    if name == "digits-ranker":
        return data.digit_mosaics(digits_per_mosaic=(3, 3), seed=1).x_test[:count]
    if name in ("yeast-mlp", "yeast-mlp-int8", "yeast-forest"):
        return data.yeast().x_test[:count]
    raise BadInputError(f"unknown zoo model {name!r} (known: digits-mosaic, digits-ranker, yeast-mlp, yeast-forest, "
                        f"topics-text)")


def write_inputs(name: str, count: int, out: Path, overwrite: bool = False) -> tuple[Path, int]:
    """Write test inputs of `name` to the .npy `out` (a .npz keyed by input name for a model with several
    inputs); returns the path and the row count."""
    if count < 1:
        raise BadInputError(f"--count must be at least 1, got {count}")
    suffix = ".npz" if name == "topics-text" else ".npy"  # the text model's inputs are input_ids + attention_mask
    out = check_plain_output(out, (suffix,), overwrite=overwrite, what=f"inputs file of {name}", create_folder=True)
    x = test_inputs(name, count)
    with atomic_write(out) as temp, open(temp, "wb") as stream:
        if isinstance(x, dict):
            np.savez(stream, **x)
            return out, len(next(iter(x.values())))
        np.save(stream, x)
    return out, len(x)


@click.command()
@click.argument("name")
@click.option("--count", type=int, default=32, show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False))
def main(name: str, count: int, out: str) -> None:
    path, rows = write_inputs(name, count, Path(out), overwrite=True)
    click.echo(f"{rows} test inputs of {name} -> {path}")


if __name__ == "__main__":
    main()
