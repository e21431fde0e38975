"""Write test inputs of a zoo model to a file: `python -m model_zoo.sample_inputs NAME -o X.npy`."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from . import data


def test_inputs(name: str, count: int) -> np.ndarray:
    if name == "digits-mosaic":
        return data.digit_mosaics().x_test[:count]
    if name == "digits-ranker":
        return data.digit_mosaics(digits_per_mosaic=(3, 3), seed=1).x_test[:count]
    if name in ("yeast-mlp", "yeast-mlp-int8", "yeast-forest"):
        return data.yeast().x_test[:count]
    raise click.BadParameter(f"unknown zoo model {name!r}")


@click.command()
@click.argument("name")
@click.option("--count", type=int, default=32, show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False))
def main(name: str, count: int, out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, test_inputs(name, count))
    click.echo(f"{count} test inputs of {name} -> {path}")


if __name__ == "__main__":
    main()
