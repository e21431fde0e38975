"""Output paths that would destroy something are refused; writes replace a file only when complete.

Real files, symlinks, hard links, a FIFO, a socket and /dev/null: nothing is simulated."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from onnxattack.errors import BadInputError
from onnxattack.safety import atomic_write, check_image_output, check_output, check_plain_output, resolve


def refused(match: str, out, **kwargs) -> None:
    with pytest.raises(BadInputError, match=match) as caught:
        check_output(out, **kwargs)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.fixture
def inputs(tmp_path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 3), dtype=np.float32))
    return path


def test_a_new_file_in_a_writable_folder_passes(tmp_path, inputs):
    assert check_output(tmp_path / "out.h5", inputs=[inputs]) == tmp_path / "out.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]  # the writability probe is gone


def test_resolve_follows_links_and_makes_paths_absolute(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert resolve("link/a.h5") == (tmp_path / "real" / "a.h5").resolve()


def test_the_output_cannot_be_an_input(tmp_path, inputs, monkeypatch):
    refused("also an input of this command", inputs, inputs=[inputs], overwrite=True)
    monkeypatch.chdir(tmp_path)
    refused("also an input", "x.npy", inputs=[inputs], overwrite=True)
    refused("also an input", "./sub/../x.npy", inputs=["x.npy"], overwrite=True)
    refused("also an input", "x.npy", inputs=["missing.onnx", "x.npy"], overwrite=True)


def test_a_symlink_or_a_hard_link_to_an_input_is_refused(tmp_path, inputs):
    (tmp_path / "soft.npy").symlink_to(inputs)
    refused("also an input", tmp_path / "soft.npy", inputs=[inputs], overwrite=True, allow_link_replace=True)
    os.link(inputs, tmp_path / "hard.npy")
    refused("also an input", tmp_path / "hard.npy", inputs=[inputs], overwrite=True)


def test_an_output_inside_a_symlinked_folder_that_is_the_input(tmp_path, inputs):
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    refused("also an input", tmp_path / "alias" / "x.npy", inputs=[inputs], overwrite=True)


def test_devices_fifos_sockets_and_folders_are_refused(tmp_path):
    refused("a character device", "/dev/null", overwrite=True)
    os.mkfifo(tmp_path / "pipe")
    refused("a FIFO", tmp_path / "pipe", overwrite=True)  # never opened: that would block
    refused("a folder", tmp_path, overwrite=True)
    short = Path(tempfile.mkdtemp(prefix="sock"))  # a socket path must stay under ~100 bytes
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(short / "s"))
        refused("a socket", short / "s", overwrite=True)
    finally:
        server.close()
        (short / "s").unlink()
        short.rmdir()


def test_a_symlink_is_refused_unless_its_replacement_is_allowed(tmp_path):
    target = tmp_path / "target.h5"
    target.write_bytes(b"keep me")
    (tmp_path / "link.h5").symlink_to(target)
    refused("is a symbolic link \\(to .*target.h5\\)", tmp_path / "link.h5", overwrite=True)
    (tmp_path / "dangling.h5").symlink_to(tmp_path / "nowhere.h5")
    refused("is a symbolic link", tmp_path / "dangling.h5", overwrite=True)
    refused("already exists", tmp_path / "link.h5", allow_link_replace=True)
    out = check_output(tmp_path / "link.h5", overwrite=True, allow_link_replace=True)
    with atomic_write(out) as temp:
        temp.write_bytes(b"new")
    assert not (tmp_path / "link.h5").is_symlink() and (tmp_path / "link.h5").read_bytes() == b"new"
    assert target.read_bytes() == b"keep me"  # the link was replaced, never written through


def test_an_existing_file_needs_overwrite(tmp_path):
    (tmp_path / "out.h5").write_bytes(b"old")
    refused("already exists; pass --overwrite", tmp_path / "out.h5")
    assert check_output(tmp_path / "out.h5", overwrite=True) == tmp_path / "out.h5"


def test_a_missing_unwritable_or_non_folder_parent_is_refused(tmp_path):
    refused("folder .* does not exist", tmp_path / "missing" / "out.h5")
    (tmp_path / "plain").write_bytes(b"")
    refused("cannot write the result file", tmp_path / "plain" / "out.h5")
    refused("not writable", "/proc/out.h5", what="result file")
    refused("not writable", "/sys/out.h5")


def test_the_message_names_what_is_written(tmp_path):
    (tmp_path / "fig.png").write_bytes(b"")
    refused("the figure .*fig.png already exists", tmp_path / "fig.png", what="figure")


def test_plain_outputs_check_their_suffix_first(tmp_path, inputs):
    with pytest.raises(BadInputError, match="must end in .html"):
        check_plain_output(tmp_path / "report.txt", (".html",))
    with pytest.raises(BadInputError, match="must end in .png"):
        check_image_output(tmp_path / "curve.jpg")
    assert check_image_output(tmp_path / "curve.PNG") == tmp_path / "curve.PNG"
    assert check_plain_output(tmp_path / "a.npz", (".npz",), [inputs]) == tmp_path / "a.npz"
    with pytest.raises(BadInputError, match="also an input"):
        check_plain_output(inputs.with_suffix(".npy"), (".npy",), [inputs], overwrite=True)


def test_atomic_write_renames_only_a_finished_file(tmp_path):
    out = tmp_path / "out.h5"
    with atomic_write(out) as temp:
        assert temp.parent == tmp_path and temp != out and not out.exists()
        with h5py.File(temp, "w") as handle:
            handle["x"] = np.arange(4)
    with h5py.File(out, "r") as handle:
        assert list(handle["x"][:]) == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_overwrite_keeps_the_old_file(tmp_path, error):
    out = tmp_path / "out.h5"
    with h5py.File(out, "w") as handle:
        handle["x"] = np.arange(3)
    before = out.read_bytes()
    with pytest.raises(error), atomic_write(out) as temp:
        with h5py.File(temp, "w") as handle:
            handle["x"] = np.zeros(1000)
        raise error("interrupted mid-write")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]  # the partial file is gone


def test_atomic_write_keeps_the_replaced_files_permissions(tmp_path):
    out = tmp_path / "out.npz"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    with atomic_write(out) as temp:
        temp.write_bytes(b"new")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    fresh = tmp_path / "fresh.npz"
    with atomic_write(fresh) as temp:
        temp.write_bytes(b"new")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
