"""The demo figure drawn from a result file alone: per example images (or features) and label-score bars."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import main
from onnxattack.report import write_figure


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _attack(model, inputs, tmp_path, *options: str):
    x = tmp_path / "x.npy"
    np.save(x, inputs)
    out = tmp_path / "r.h5"
    result = invoke("attack", model, x, "-o", out, "--method", "ml-deepfool", "--max-iter", "20", "--quiet",
                    *options)
    assert result.exit_code == 0, result.output
    return out


def _drawn_rows(pixels: np.ndarray) -> int:
    """Rows of the image that are not plain white: a figure with more panels has more of them."""
    return int((pixels.min(axis=(1, 2)) < 250).sum())


@pytest.mark.parametrize("name,options", [("digits-mosaic", ["--target", "hide-single"]),
                                          ("yeast-mlp", ["--target", "random", "--range", "-1", "1"])])
def test_figure_shows_a_row_per_example_and_the_histogram(zoo_model, zoo_inputs, tmp_path, name, options):
    results = _attack(zoo_model(name), zoo_inputs(name, 3), tmp_path, *options)
    sizes = {}
    for examples in (1, 3):
        png = write_figure(results, tmp_path / f"figure{examples}.png", examples=examples)
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"))
        height, width = pixels.shape[:2]
        assert width >= 1200 and height >= 100 * (examples + 1)
        assert _drawn_rows(pixels) > height // 2
        # Both bar colours (clean and adversarial scores) are drawn.
        for colour in ((0x8F, 0xA8, 0xC8), (0xD9, 0x62, 0x2B)):
            assert (np.abs(pixels.astype(int) - colour).sum(axis=2) < 12).sum() > 50
        # Image panels: the mosaics' empty background is black; a tabular figure has only black text and lines.
        black = int((pixels.max(axis=2) < 8).sum())
        assert black > 30_000 * examples if name == "digits-mosaic" else black < 10_000 * (examples + 1)
        sizes[examples] = height
    assert sizes[3] > sizes[1] + 400  # one more panel row per example
