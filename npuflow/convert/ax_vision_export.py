"""The vision encoder of `npuflow convert --layout ax`, with the signature of the vendor's encoders.

The encoder graph is the CPU package's (npuflow.convert.vision_graph.build_vision_graph: float32
pixel_values [N, 3, S, S] rescaled and normalized -> image_embeds [N, T, H]) behind an input that
takes what the vendor's axmodels take, batch 1 (one tile per run, as the vendor runtimes call it):
- "NHWC" (default; the ax-llm C++ runtime's encoders, mean/std compiled in by pulsar2):
  image uint8 [1, S, S, 3], the resized RGB bytes. The graph rescales and normalizes them as
  Hugging Face's image processors do (the byte times the rescale factor in float64, cast to
  float32, then (x - mean) / std in float32), so it computes what the CPU package's encoder
  computes from npuflow.vision.preprocess's pixels of the same image.
- "NCHW" (the vendor's Python demos): image float32 [1, 3, S, S], already normalized.
Output "output" float32 [1, T, H]. As for the layer graphs (ax_export.py), the batch stays
symbolic in the ONNX graph and the concrete shapes go into its metadata (SHAPE_GROUPS_KEY, one
group), which is what the onnxruntime mirror of pyaxengine declares and checks: with the same
symbolic batch as the CPU package's encoder, onnxruntime fuses the tower's ops as it does there,
so both compute the same floats. The file is vision_model.onnx (+ vision_model.onnx.data)
where the board has the vision axmodel; config.json names it (filename_image_encoder_axmodel)
and holds the package's vision section with the input's layout, dtype and normalization.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..engine.ax_ort import SHAPE_GROUPS_KEY
from .spec import ConvertError, ModelSpec

VISION_FILE = "vision_model.onnx"
VISION_DATA = "vision_model.onnx.data"
LAYOUTS = ("NHWC", "NCHW")


def wrap_input(model: onnx.ModelProto, layout: str, mean, std, scale: float) -> onnx.ModelProto:
    """model (input pixel_values float32 [N,3,S,S], output [N,T,H]) with the vendor's input
    "image" of the given layout, batch 1, and output "output"."""
    if layout not in LAYOUTS:
        raise ConvertError(f"vision encoder input layout '{layout}' (one of {', '.join(LAYOUTS)})")
    g = model.graph
    old_in, old_out = g.input[0], g.output[0]
    S = old_in.type.tensor_type.shape.dim[2].dim_value
    T, H = (d.dim_value for d in old_out.type.tensor_type.shape.dim[1:])
    pix = old_in.name
    nodes, inits = [], []
    if layout == "NHWC":
        vals = {"ax_in.scale": np.array(scale, np.float64),
                "ax_in.mean": np.asarray(mean, np.float32).reshape(1, 3, 1, 1),
                "ax_in.std": np.asarray(std, np.float32).reshape(1, 3, 1, 1)}
        inits = [numpy_helper.from_array(v, k) for k, v in vals.items()]
        nodes = [helper.make_node("Transpose", ["image"], ["ax_in.nchw"], perm=[0, 3, 1, 2]),
                 helper.make_node("Cast", ["ax_in.nchw"], ["ax_in.f64"], to=TensorProto.DOUBLE),
                 helper.make_node("Mul", ["ax_in.f64", "ax_in.scale"], ["ax_in.scaled"]),
                 helper.make_node("Cast", ["ax_in.scaled"], ["ax_in.f32"], to=TensorProto.FLOAT),
                 helper.make_node("Sub", ["ax_in.f32", "ax_in.mean"], ["ax_in.centred"]),
                 helper.make_node("Div", ["ax_in.centred", "ax_in.std"], [pix])]
        shape = [1, S, S, 3]
        new_in = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", S, S, 3])
    else:
        nodes = [helper.make_node("Identity", ["image"], [pix])]
        shape = [1, 3, S, S]
        new_in = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, S, S])
    out_node = helper.make_node("Identity", [old_out.name], ["output"])
    graph = helper.make_graph([*nodes, *g.node, out_node], g.name or "vision", [new_in],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", T, H])],
                              [*inits, *g.initializer], value_info=list(g.value_info))
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="npuflow.convert.ax")
    out.ir_version = model.ir_version
    entry = out.metadata_props.add()
    entry.key, entry.value = SHAPE_GROUPS_KEY, json.dumps({"inputs": [[{"name": "image", "shape": shape}]],
                                                           "outputs": [[{"name": "output", "shape": [1, T, H]}]]})
    return out


def write_ax_vision(spec: ModelSpec, root: pathlib.Path, progress: Callable[[str, int], None],
                    layout: str = "NHWC") -> dict[str, Any] | None:
    """Write the vision encoder of a VLM spec into root; returns the config.json entries
    (filename_image_encoder_axmodel and the vision section), None for a text model."""
    v = spec.extra.get("vision")
    if not v:
        return None
    from .vision_graph import build_vision_graph

    section = dict(v["section"])
    proc = section.get("processor") or {}
    mean, std = proc.get("image_mean", [0.0] * 3), proc.get("image_std", [1.0] * 3)
    scale = float(proc.get("rescale_factor", 1 / 255)) if proc.get("do_rescale", True) else 1.0
    if not proc.get("do_normalize", True):
        mean, std = [0.0] * 3, [1.0] * 3
    model = wrap_input(build_vision_graph(v["family"], v["config"], v["get"], progress), layout, mean, std, scale)
    progress("writing vision graph", 100)
    onnx.save(model, str(root / VISION_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
              location=VISION_DATA, size_threshold=1024)
    if not (root / VISION_DATA).exists():
        (root / VISION_DATA).write_bytes(b"")
    inp = {"name": "image", "layout": layout, "dtype": "uint8" if layout == "NHWC" else "float32"}
    if layout == "NHWC":
        inp.update(mean=[float(x) for x in mean], std=[float(x) for x in std], rescale_factor=scale)
    section.update(input=inp, output="output",
                   tokens_per_tile=model.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    return {"filename_image_encoder_axmodel": VISION_FILE, "vision": section}
