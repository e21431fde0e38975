"""Speed benchmarks, measured side by side in one run (ratios, not lone times).

    python -m bench.run [--repeats 7] [--device auto]

1. Jacobian of all labels: L backward passes vs one vectorised backward (batched grads) vs one
   backward through a replicated batch (the fallback), on the zoo image classifier.
2. onnxruntime thread spinning: a torch forward+backward right after an onnxruntime call,
   with spinning on (onnxruntime's default) vs off (the engine's session factory).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import click
import onnxruntime as ort
import torch

from model_zoo.build import build
from model_zoo.sample_inputs import test_inputs
from onnxattack.attacks import Victim
from onnxattack.attacks._jacobian import scores_and_jacobian
from onnxattack.loader import load
from onnxattack.runtime import session_options


def _interleaved(cases: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median seconds per case, cases alternating inside each repeat so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in cases.items():
            sync()
            started = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _report(title: str, medians: dict[str, float], baseline: str) -> None:
    click.echo(f"\n{title}")
    for name, seconds in medians.items():
        click.echo(f"  {name:<34} {seconds * 1e3:9.2f} ms   {medians[baseline] / seconds:5.2f}x vs {baseline}")


@click.command()
@click.option("--repeats", type=int, default=7, show_default=True)
@click.option("--batch", type=int, default=32, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def main(repeats: int, batch: int, device: str) -> None:
    model = load(build("digits-mosaic").path, device=device)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    x = model.as_tensor(test_inputs("digits-mosaic", batch))
    victim = Victim(model.attack_logits, model.reader, (0.0, 1.0))
    click.echo(f"device {model.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
               f"batch {batch}, labels {model.num_labels}")
    medians = _interleaved({
        "L backward passes (naive)": lambda: scores_and_jacobian(victim.attack_space, x, "loop"),
        "one batched backward (vmap)": lambda: scores_and_jacobian(victim.attack_space, x, "batched-grads"),
        "one backward, replicated batch": lambda: scores_and_jacobian(victim.attack_space, x, "replicated"),
    }, repeats, sync)
    _report("Jacobian of all labels (ML-DeepFool's cost per iteration)", medians, "L backward passes (naive)")

    session_bytes = model.info.path.read_bytes()
    CPU = ["CPUExecutionProvider"]  # noqa: N806
    spinning = ort.SessionOptions()
    spinning.log_severity_level = 3
    sessions = {
        "spinning on (onnxruntime default)": ort.InferenceSession(session_bytes, spinning, providers=CPU),
        "spinning off (onnxattack)": ort.InferenceSession(session_bytes, session_options(), providers=CPU),
    }
    x_np = x.detach().cpu().numpy()

    def ort_then_torch(session: ort.InferenceSession) -> Callable[[], None]:
        def step() -> None:
            session.run(None, {model.input.name: x_np})
            x_grad = x.detach().requires_grad_(True)
            model.attack_logits(x_grad).sum().backward()

        return step

    medians = _interleaved({name: ort_then_torch(s) for name, s in sessions.items()}, repeats, sync)
    _report("onnxruntime call then torch forward+backward", medians, "spinning on (onnxruntime default)")


if __name__ == "__main__":
    main()
