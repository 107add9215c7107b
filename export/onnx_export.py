"""ONNX export of the text tower (+ adapter), the motion encoder and the motion decoder.

All graphs have dynamic batch; the text graph a dynamic token axis (feed only the real length:
CLIP is causal and read at EOT, so cutting after EOT is exact); the motion graphs dynamic frames and
points. Example inputs use batch 2 because a batch-1 example can pin the batch axis (PITFALLS.md).
"""

from __future__ import annotations

import json
import logging
import struct
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.model import L2M, TextAdapter, TextPool

log = logging.getLogger("l2m.export")
OPSET = 18


class TextGraph(nn.Module):
    """Frozen tower followed by the trained adapter: (ids, mask) -> (B, D) unit rows. With `pool` (a
    model whose text_pool is "attention") the tower's token states go through it instead of the tower's
    own mean pooling, taken after the tower's first `depth` layers (0: all; the rest are left out of
    the graph)."""

    def __init__(self, tower: nn.Module, adapter: TextAdapter, pool: TextPool | None = None, depth: int = 0):
        super().__init__()
        if depth and pool is None:
            raise ValueError(f"depth={depth} needs an attention pool (mean pooling reads the last layer)")
        self.tower = tower
        self.adapter = adapter
        self.pool = pool
        self.depth = depth

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pool is None:
            return self.adapter(self.tower(input_ids, attention_mask))
        x = self.tower.token_states(input_ids, attention_mask, self.depth)
        return self.adapter(self.pool(x, attention_mask))


def _export(
    module: nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple,
) -> Path:
    module = module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            verbose=False,
        )
    prog.save(str(path))
    m = onnx.load(str(path), load_external_data=True)
    _dedupe_output_names(m)
    _check_dynamic(m, path)
    onnx.save(m, str(path))
    return path


def _dedupe_output_names(m: onnx.ModelProto) -> None:
    """The exporter can name an internal value like a graph output (an `embedding` Gather inside the
    text tower vs our `embedding` output), which ONNX Runtime rejects; rename the internal one."""
    outs = {o.name for o in m.graph.output}
    last = {}
    for i, n in enumerate(m.graph.node):
        for o in n.output:
            if o in outs:
                last[o] = i
    rename: dict[str, str] = {}
    for i, n in enumerate(m.graph.node):
        for j, x in enumerate(n.input):
            if x in rename:
                n.input[j] = rename[x]
        for j, o in enumerate(n.output):
            if o in outs and last[o] != i:
                rename[o] = n.output[j] = f"{o}__internal{i}"
            elif o in rename:
                del rename[o]


def _check_dynamic(m: onnx.ModelProto, path: Path) -> None:
    """Every input's first axis must be symbolic (the batch); PITFALLS: exporters can pin it."""
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and inp.name != "times" and dims[0].dim_param == "":
            raise RuntimeError(f"{path.name}: input {inp.name} has a fixed batch axis {dims[0].dim_value}")


def export_text(
    tower: nn.Module,
    adapter: TextAdapter,
    path: Path,
    max_tokens: int,
    pool: TextPool | None = None,
    depth: int = 0,
) -> Path:
    Dim = torch.export.Dim
    batch, tokens = Dim("batch", min=1, max=4096), Dim("tokens", min=1, max=max_tokens)
    ids = torch.randint(1, 1000, (2, 7), dtype=torch.long)
    ids[:, -1] = ids.max() + 1  # CLIP reads at the largest id (EOT); harmless for BERT
    mask = torch.ones_like(ids)
    dyn = ({0: batch, 1: tokens}, {0: batch, 1: tokens})
    return _export(
        TextGraph(tower, adapter, pool, depth),
        (ids, mask),
        path,
        ["input_ids", "attention_mask"],
        ["embedding"],
        dyn,
    )


def export_encoder(model: L2M, path: Path) -> Path:
    Dim = torch.export.Dim
    batch, frames, points = (
        Dim("batch", min=1, max=4096),
        Dim("frames", min=2, max=1024),
        Dim("points", min=1, max=4096),
    )
    traj = torch.randn(2, 9, 5, 2) * 0.3
    return _export(
        model.encoder, (traj,), path, ["trajectory"], ["embedding"], ({0: batch, 1: frames, 2: points},)
    )


def export_decoder(model: L2M, path: Path) -> Path:
    if model.cfg.decoder != "nar":
        raise ValueError(
            "only the non-autoregressive decoder is exported; the 'ar' variant is a torch baseline"
        )
    Dim = torch.export.Dim
    batch, frames, points = (
        Dim("batch", min=1, max=4096),
        Dim("frames", min=2, max=1024),
        Dim("points", min=1, max=4096),
    )
    z = torch.nn.functional.normalize(torch.randn(2, model.cfg.dim), dim=-1)
    init = torch.rand(2, 5, 2) * 2 - 1
    times = torch.linspace(0, 1, 9)
    dyn = ({0: batch}, {0: batch, 1: points}, {0: frames})
    return _export(
        model.decoder, (z, init, times), path, ["embedding", "initial_points", "times"], ["trajectory"], dyn
    )


def export_image_tower(image_tower: nn.Module, path: Path) -> Path:
    Dim = torch.export.Dim
    s = image_tower.image_size
    img = torch.rand(2, 3, s, s)
    return _export(image_tower, (img,), path, ["image"], ["embedding"], ({0: Dim("batch", min=1, max=4096)},))


# ------------------------------------------------------------------- initializers stored in safetensors
def safetensors_index(path: Path) -> dict[str, tuple[int, int, str, list[int]]]:
    """{key: (absolute byte offset, length, dtype, shape)} read from a safetensors header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    base = 8 + n
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = (base + a, b - a, v["dtype"], v["shape"])
    return out


def link_initializers(
    onnx_path: Path, st_path: Path, prefix: str = "", strip: str = "", inplace_location: str | None = None
) -> dict[str, str]:
    """Point ONNX initializers at identical tensors in a safetensors file, so weights are stored once.

    An initializer named `n` matches safetensors key `prefix + n.removeprefix(strip)` when the bytes are
    equal. The exporter also folds Linear weights into transposed constants with generated names; a
    2-D initializer equal to the transpose of some tensor is replaced by that tensor plus a Transpose
    node (ONNX Runtime folds it once at session creation). With `inplace_location` (a file name in the
    same directory) matches become ONNX external data at the tensor's offset; with None they are marked
    external to a placeholder and must be supplied at session creation
    (SessionOptions.add_external_initializers), for a file outside the bundle.
    Returns {onnx initializer name: safetensors key} of the linked tensors.
    """
    m = onnx.load(str(onnx_path), load_external_data=False)
    _load_inline_external(m, onnx_path.parent)
    idx = safetensors_index(st_path)
    raw = np.memmap(st_path, dtype=np.uint8, mode="r")

    def tensor(key: str) -> np.ndarray:
        off, length, _, shape = idx[key]
        return np.frombuffer(raw, dtype="<f4", count=length // 4, offset=off).reshape(shape)

    by_shape: dict[tuple, list[str]] = {}
    for k, (_, _, dt, shape) in idx.items():
        if dt == "F32" and len(shape) == 2:
            by_shape.setdefault(tuple(shape), []).append(k)
    loc = inplace_location or f"external:{st_path.name}"
    linked: dict[str, str] = {}
    new_inits, new_nodes, keep = [], [], []

    def external(name: str, key: str) -> onnx.TensorProto:
        off, length, _, shape = idx[key]
        t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=shape)
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", loc), ("offset", str(off)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    existing = {i.name for i in m.graph.initializer}
    for init in m.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or init.data_location == onnx.TensorProto.EXTERNAL:
            keep.append(init)
            continue
        arr = onnx.numpy_helper.to_array(init)
        key = prefix + init.name.removeprefix(strip)
        if (
            key in idx
            and idx[key][2] == "F32"
            and list(arr.shape) == list(idx[key][3])
            and np.array_equal(tensor(key), arr)
        ):
            new_inits.append(external(init.name, key))
            linked[init.name] = key
            continue
        match = None
        if arr.ndim == 2 and arr.size >= 1024:
            for k in by_shape.get((arr.shape[1], arr.shape[0]), []):
                if np.array_equal(tensor(k).T, arr):
                    match = k
                    break
        if match is None:
            keep.append(init)
            continue
        src = "st::" + match
        if src not in existing:
            existing.add(src)
            new_inits.append(external(src, match))
            linked[src] = match
        new_nodes.append(
            onnx.helper.make_node("Transpose", [src], [init.name], perm=[1, 0], name=f"link_T_{init.name}")
        )
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep + new_inits)
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(new_nodes + nodes)
    onnx.save(m, str(onnx_path))
    log.info("%s: %d tensors linked to %s", onnx_path.name, len(linked), st_path.name)
    return linked


def _load_inline_external(m: onnx.ModelProto, base: Path) -> None:
    """Load external data that lives in real files next to the model (not placeholders)."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    for t in m.graph.initializer:
        if uses_external_data(t):
            loc = {e.key: e.value for e in t.external_data}.get("location", "")
            if (
                not loc.startswith("external:")
                and (base / loc).is_file()
                and not loc.endswith(".safetensors")
            ):
                load_external_data_for_tensor(t, str(base))
