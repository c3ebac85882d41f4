"""ONNX export (optional extra ``onnx``): the `ActorStep` as ``actor.onnx``.

Inputs ``obs [B, O]`` (camera policies: ``image [B, C, h, w]`` uint8 first), ``state [B, H]``,
``episode_start [B]``; outputs ``action [B, A]``, ``next_state [B, H]``; the batch axis is dynamic.
Run it with onnxruntime::

    session = onnxruntime.InferenceSession("actor.onnx")
    action, state = session.run(None, {"obs": obs, "state": state, "episode_start": starts})
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from policies.export.actor import ActorParts, ActorStep, NormStats, example_inputs
from policies.export.torchscript import describe, input_names

OPSET = 18


def export_onnx(parts: ActorParts, norm: NormStats | None, out_dir: Path) -> list[Path]:
    """Write ``actor.onnx`` (with ``actor.json`` of `describe` in its metadata); returns its path.

    :raises ImportError: the ``onnx`` or ``onnxscript`` package is missing (``pip install 'liquid-drones[onnx]'``)
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter translates through it)
    except ImportError as error:
        raise ImportError("ONNX export needs the onnx and onnxscript packages: pip install 'liquid-drones[onnx]'") from error
    path = out_dir / "actor.onnx"
    names = input_names(parts)
    step = ActorStep(parts, norm).eval()
    batch = torch.export.Dim("batch")
    with torch.no_grad():  # torch.export's graph: it keeps the in-place ops on views of the LTC unfolds
        torch.onnx.export(step, example_inputs(parts, batch=2), str(path), input_names=names,
                          output_names=["action", "next_state"], opset_version=OPSET, dynamo=True,
                          dynamic_shapes=(tuple({0: batch} for _ in names),), verbose=False)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "actor.json", json.dumps(describe(parts))
    onnx.save(model, str(path))
    return [path]
