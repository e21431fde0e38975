"""`python -m bench.bare_reference SPEC.json`: the published ML-CW procedure (bench/reference.py) on a native torch
module, in a process as bare as the reference code's: torch and numpy, no onnxattack, no onnx, no onnxruntime.

SPEC names the pickled module (`torch.save` of an nn.Module built from torch's own layers), the inputs and targets
(.npy), the box, the threshold on the module's logits, the search's sizes and where to write x_adv and the calls
(.npz). The process records which of the engine's packages it imported, so the comparison can show it ran bare.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from .reference import reference_ml_cw

_ENGINE_PACKAGES = ("onnxattack", "onnx", "onnxruntime", "onnx2torch", "h5py")


def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    device = torch.device(spec.get("device", "cpu"))
    module = torch.load(spec["module"], weights_only=False).eval().to(device)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    x = torch.from_numpy(np.load(spec["x"])).to(device)
    target = torch.from_numpy(np.load(spec["target"])).bool().to(device)
    result = reference_ml_cw(module, x, target, tuple(spec["box"]), spec["theta"], max_iter=spec["max_iter"],
                             binary_steps=spec["binary_steps"], abort_early=spec.get("abort_early", True))
    imported = [name for name in _ENGINE_PACKAGES if name in sys.modules]
    np.savez(spec["out"], x_adv=result.x_adv.detach().cpu().numpy(), model_calls=result.model_calls.cpu().numpy(),
             imported=np.array(json.dumps(imported)))


if __name__ == "__main__":
    main(sys.argv[1])
