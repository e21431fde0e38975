"""What `pip install .` puts in site-packages, and what the console script imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_distribution_claims_only_the_onnxattack_name(tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--target", str(site), str(ROOT)], check=True, capture_output=True, timeout=300)
    top_level = {path.name for path in site.iterdir() if not path.name.endswith(".dist-info") and path.name != "bin"}
    assert top_level == {"onnxattack"}
    assert (site / "onnxattack" / "cli" / "main.py").is_file()
    assert (site / "onnxattack" / "zoo" / "registry.py").is_file()
    (dist_info,) = site.glob("onnxattack-*.dist-info")
    assert "onnxattack = onnxattack.cli.launch:entry" in (dist_info / "entry_points.txt").read_text()


def test_the_console_script_does_not_import_the_zoo_training_extras():
    code = ("import sys; from click.testing import CliRunner; from onnxattack.cli.main import main; "
            "result = CliRunner().invoke(main, ['zoo', 'list']); assert result.exit_code == 0, result.output; "
            "heavy = [m for m in ('sklearn', 'river') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_the_version_comes_from_the_installed_metadata():
    from importlib.metadata import version

    import onnxattack

    assert onnxattack.__version__ == version("onnxattack")


def test_every_public_name_resolves_on_first_use_in_a_fresh_process():
    code = ("import sys, onnxattack; assert 'torch' not in sys.modules; "
            "assert sorted(onnxattack.__all__) == sorted(onnxattack._HOME); "
            "values = [getattr(onnxattack, name) for name in onnxattack.__all__]; "
            "from onnxattack.attacks import MLDeepFool; assert onnxattack.MLDeepFool is MLDeepFool; "
            "assert onnxattack.bridge.__name__ == 'onnxattack.bridge'; "
            "missing = getattr(onnxattack, 'no_such_name', None); assert missing is None")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

