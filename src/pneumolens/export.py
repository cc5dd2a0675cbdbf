"""Export a model file to ONNX, and run it with ONNX Runtime."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch

from pneumolens.checkpoint import LoadedModel, atomic_write


def export_onnx(loaded: LoadedModel, out: str | os.PathLike[str], opset: int = 17) -> Path:
    """Write ``out`` (input ``image`` (B, C, S, S) in [0, 1], output ``logit`` (B,)); the model file's
    metadata (preprocessing, threshold, name) travels in the ONNX metadata as JSON."""
    import onnx

    model = copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format).eval()
    pre = loaded.preprocess
    dummy = torch.rand(2, pre.channels, pre.image_size, pre.image_size)
    out = Path(out)

    def write(tmp: str) -> None:
        torch.onnx.export(
            model,
            (dummy,),
            tmp,
            input_names=["image"],
            output_names=["logit"],
            dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = (
            "pneumolens",
            json.dumps(
                {
                    k: loaded.meta[k]
                    for k in ("name", "preprocessing", "threshold", "class_names", "versions")
                    if k in loaded.meta
                }
            ),
        )
        onnx.save(proto, tmp)

    atomic_write(out, write)
    return out


# ONNX Runtime's threads spin after each run, waiting for the next; in pneumolens the next work is the
# lung segmentation of the next film, in torch, whose threads then share the cores with the spinning
# ones. On 2 cores that made a film's end-to-end time with the ONNX backend 21-33 ms at the median
# and 66-78 ms at the 99th percentile, against 14-20 and 19-25 ms without spinning (the model's own
# call 1.1 against 1.4 ms; batch-64 throughput the same; README, Performance).
NO_SPINNING = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


class OnnxModel:
    """An ONNX Runtime session that maps (B, C, S, S) inputs to logits, like the torch model."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        for key in NO_SPINNING:
            options.add_session_config_entry(key, "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logit"], {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]
