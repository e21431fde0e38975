"""`onnxattack serve`: commands handed to a warm server by the console script, in real processes and sockets.

Each test runs the installed console script against a server started from it, and checks that what the
caller sees (exit code, streams, files) is what a run in its own process gives, and that the server's log
shows the command ran there (or, where it must not, that it did not)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

SCRIPT = str(Path(sys.executable).parent / "onnxattack")
ATTACK_OPTIONS = ("--max-iter", "20", "--binary-steps", "2")


# Every process of a test starts from one environment: libraries imported by the test process meanwhile
# (scikit-learn sets KMP_* variables) would otherwise make the callers' import-time settings differ.
BASE_ENVIRONMENT = dict(os.environ)


def _environment(socket_path: Path | str, **extra: str) -> dict[str, str]:
    return {**BASE_ENVIRONMENT, "ONNXATTACK_SERVER": str(socket_path), **extra}


class Server:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "run" / "server.sock"
        self.log = folder / "server.log"
        self.process = subprocess.Popen([SCRIPT, "serve", "--socket", str(self.socket), "--idle-timeout", "600"],
                                        stderr=self.log.open("w"), stdout=subprocess.DEVNULL,
                                        env=_environment("off"))
        deadline = time.monotonic() + 120
        while "serving on" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {self.log.read_text()}")
            time.sleep(0.1)

    def ran(self, words: str) -> list[str]:
        """The server's log lines for commands containing `words`, with their exit lines."""
        lines = [line.split(": ", 1)[-1] for line in self.log.read_text().splitlines()]  # "pid N: ..."
        pids = {line.split(":")[0] for line in lines if words in line and line.startswith("pid ")}
        return [line for line in lines if line.split(":")[0] in pids]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("serve"))
    yield running
    running.stop()
    assert not running.socket.exists()  # the server removes its socket when it stops


def _run(args: list[str], cwd: Path, environment: dict[str, str], umask: int = -1) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=600,
                          umask=umask)


def _wait_for_exit_line(server: Server, words: str) -> list[str]:
    deadline = time.monotonic() + 10
    while not any(": exit " in line for line in server.ran(words)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return server.ran(words)


def test_an_attack_handed_to_the_server_gives_what_its_own_process_gives(server, tmp_path, zoo_model, zoo_inputs):
    model = zoo_model("digits-mosaic")
    np.save(tmp_path / "x.npy", zoo_inputs("digits-mosaic", 4))
    args = ["attack", str(model), "x.npy", *ATTACK_OPTIONS]  # relative names: the caller's folder
    warm = _run([*args, "-o", "warm.h5"], tmp_path, _environment(server.socket), umask=0o027)
    cold = _run([*args, "-o", "cold.h5"], tmp_path, _environment("off"), umask=0o027)
    assert warm.returncode == cold.returncode == 0, warm.stderr + cold.stderr

    log = _wait_for_exit_line(server, "warm.h5")
    assert any("attack" in line for line in log) and any(": exit 0" in line for line in log), server.log.read_text()
    assert not server.ran("cold.h5")
    without_time = [[line for line in run.stdout.splitlines() if not line.startswith("time ")] for run in (warm, cold)]
    assert without_time[0] == without_time[1] and "success rate" in warm.stdout
    assert (tmp_path / "warm.h5").stat().st_mode & 0o777 == (tmp_path / "cold.h5").stat().st_mode & 0o777 == 0o640
    with h5py.File(tmp_path / "warm.h5") as a, h5py.File(tmp_path / "cold.h5") as b:
        assert a.attrs["complete"] and b.attrs["complete"]
        assert np.array_equal(a["x_adv"][()], b["x_adv"][()])
        assert np.array_equal(a["success"][()], b["success"][()])


def test_a_refused_command_keeps_its_exit_code_and_one_line_error(server, tmp_path, zoo_model):
    done = _run(["attack", str(zoo_model("digits-mosaic")), "missing.npy", "-o", "r.h5"], tmp_path,
                _environment(server.socket))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["onnxattack: error: inputs not found: missing.npy"]
    assert any(": exit 2" in line for line in _wait_for_exit_line(server, "missing.npy"))
    assert not (tmp_path / "r.h5").exists()


def test_a_caller_with_other_import_time_settings_runs_the_command_itself(server, tmp_path, zoo_model):
    threads = "1" if os.environ.get("OMP_NUM_THREADS") != "1" else "2"
    done = _run(["attack", str(zoo_model("digits-mosaic")), "absent.npy", "-o", "r.h5"], tmp_path,
                _environment(server.socket, OMP_NUM_THREADS=threads))
    assert done.returncode == 2
    assert "not using the server" in done.stderr and "OMP_NUM_THREADS" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "onnxattack: error: inputs not found: absent.npy"
    assert not server.ran("absent.npy")


def test_ctrl_c_on_the_caller_interrupts_the_command_and_leaves_its_file_readable(server, tmp_path, zoo_model,
                                                                                   zoo_inputs):
    np.save(tmp_path / "x.npy", zoo_inputs("digits-mosaic", 32))
    caller = subprocess.Popen([SCRIPT, "attack", str(zoo_model("digits-mosaic")), "x.npy", "-o", "long.h5",
                               "--max-iter", "1000", "--no-early-stop"], cwd=tmp_path, env=_environment(server.socket),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "long.h5").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    caller.send_signal(signal.SIGINT)
    _, stderr = caller.communicate(timeout=120)
    assert caller.returncode == 130, stderr
    assert "interrupted" in stderr.splitlines()[-1], stderr[-1500:]
    assert any(": exit 130" in line for line in _wait_for_exit_line(server, "long.h5"))
    report = _run(["report", "long.h5"], tmp_path, _environment("off"))
    assert report.returncode == 0 and "incomplete" in report.stdout


def test_a_caller_that_dies_interrupts_its_command_which_keeps_its_file_readable(server, tmp_path, zoo_model,
                                                                                  zoo_inputs):
    np.save(tmp_path / "x.npy", zoo_inputs("digits-mosaic", 32))
    errors = tmp_path / "stderr.txt"  # the command writes on the caller's stderr, which outlives the caller
    with errors.open("w") as stderr:
        caller = subprocess.Popen([SCRIPT, "attack", str(zoo_model("digits-mosaic")), "x.npy", "-o", "orphan.h5",
                                   "--max-iter", "1000", "--no-early-stop"], cwd=tmp_path,
                                  env=_environment(server.socket), stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    while not (tmp_path / "orphan.h5").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    caller.kill()  # SIGKILL: nothing is relayed, the connection just closes
    caller.wait(timeout=30)
    deadline = time.monotonic() + 60
    while not any(": exit " in line for line in server.ran("orphan.h5")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(": exit 130" in line for line in server.ran("orphan.h5")), server.log.read_text() + errors.read_text()
    report = _run(["report", "orphan.h5"], tmp_path, _environment("off"))
    assert report.returncode == 0 and "incomplete" in report.stdout


GONE_CALLER = """
import signal, socket, sys, threading, time
from onnxattack.cli.serve import relay_signals
from onnxattack.cli.warm import LineReader

signal.signal(signal.SIGINT, signal.default_int_handler)
ours, callers = socket.socketpair()
taken = threading.Event()
threading.Thread(target=relay_signals, args=(LineReader(ours), taken), daemon=True).start()
callers.close()  # the caller is gone
lost = False
deadline = time.monotonic() + 20
try:
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except KeyboardInterrupt:
            if lost:
                raise
            lost = True  # the first one is swallowed, as by a library that catches everything
except KeyboardInterrupt:
    taken.set()
    later = []
    signal.signal(signal.SIGINT, lambda number, frame: later.append(number))
    time.sleep(2.5)
    print(f"interrupted again; {len(later)} more")
    sys.exit(130)
print("ran on")
"""


def test_a_gone_callers_ctrl_c_is_raised_again_until_the_command_takes_it():
    """A real socket pair and real signals: the first KeyboardInterrupt is lost, the relay raises another
    (without the repetition the loop runs on to its deadline), and stops once the command has taken one."""
    done = subprocess.run([sys.executable, "-c", GONE_CALLER], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stdout + done.stderr
    assert done.stdout.strip() in ("interrupted again; 0 more", "interrupted again; 1 more"), done.stdout


def test_the_fingerprints_name_what_differs():
    from onnxattack.cli.warm import difference, fingerprint

    own = fingerprint()
    assert difference(own, dict(own)) is None
    assert "older or newer" in difference(own, {**own, "code": "0" * 64})
    assert "another Python" in difference(own, {**own, "python": "/usr/bin/python9"})
    other = difference(own, {**own, "settings": {**own["settings"], "CUDA_VISIBLE_DEVICES": "7"}})
    assert other == "it was started with other CUDA_VISIBLE_DEVICES"


@pytest.mark.parametrize(("value", "expected"), [("off", None), ("OFF", None), ("0", None), ("", None),
                                                 ("/tmp/x/s.sock", Path("/tmp/x/s.sock"))])
def test_onnxattack_server_names_a_socket_or_switches_handing_over_off(monkeypatch, value, expected):
    from onnxattack.cli.warm import chosen_socket, default_socket

    monkeypatch.setenv("ONNXATTACK_SERVER", value)
    assert chosen_socket() == expected
    monkeypatch.delenv("ONNXATTACK_SERVER")
    assert chosen_socket() == default_socket()


def test_no_command_is_handed_to_a_path_that_is_not_a_private_socket(tmp_path, zoo_model):
    planted = tmp_path / "server.sock"
    planted.write_text("a user's file")
    done = _run(["attack", str(zoo_model("digits-mosaic")), "gone.npy", "-o", "r.h5"], tmp_path,
                _environment(planted))
    assert done.returncode == 2 and "inputs not found" in done.stderr  # ran in its own process
    refused = _run(["serve", "--socket", str(planted)], tmp_path, _environment("off"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"onnxattack: error: {planted} exists and is not a socket of yours; choose another --socket"]
    assert planted.read_text() == "a user's file"


def test_a_second_server_on_the_same_socket_is_refused(server, tmp_path):
    done = _run(["serve", "--socket", str(server.socket)], tmp_path, _environment("off"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"onnxattack: error: a server already listens on {server.socket}"]
    assert server.process.poll() is None and server.socket.exists()


def test_a_folder_others_can_write_to_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    done = _run(["serve", "--socket", str(shared / "s.sock")], tmp_path, _environment("off"))
    assert done.returncode == 2 and "not a private folder" in done.stderr
    assert not (shared / "s.sock").exists()


def test_the_console_script_decides_without_importing_torch(tmp_path):
    probe = ("import sys; from onnxattack.cli import launch, warm; warm.fingerprint(); "
             "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'h5py', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
