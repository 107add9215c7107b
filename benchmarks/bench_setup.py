"""Artifacts the latency benchmark needs besides the default bundle, built once into a cache directory.

- A CLIP ViT-B-32 bundle: the default bundle's model configuration with D = 512 and the open_clip
  ViT-B-32 text tower, **random init** (pretrained CLIP weights cannot be fetched here). Timing does not
  depend on the weight values; the graph, shapes and sizes are those of the paper's configuration.
- Quantized copies of a bundle: the same bundle with text.onnx replaced by an int8 graph, kept only if
  it passes an accuracy gate on real weights (MiniLM's): cosine to the fp32 embedding over 50+
  prompts. The CLIP tower's random weights say little about quantization error (PITFALLS.md), so its
  int8 copy reuses the recipe that passed (or failed) on MiniLM.

The cache lives outside git: $L2M_BENCH_CACHE, else ~/.cache/l2m/bench. Entries are keyed by the
hash of what they derive from, so a new default bundle or config rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("l2m.bench")

CLIP_ARCH = "ViT-B-32"
CLIP_SEED = 0
# Typical prompts: 8-20 tokens each with either tokenizer (checked by the harness).
PROMPTS = [
    "a red ball bouncing to the right across the floor",
    "a small bird flapping its wings and flying up and to the left",
    "the car turns left slowly and then stops at the corner",
    "a person walking forward with a slight bob at every step",
    "a leaf falling under gravity and swaying from side to side",
    "the wheel spins clockwise faster and faster",
    "a dog jumps over a log in a high arc and lands",
    "the crowd spreads apart slowly as if zooming in on them",
    "a pendulum swinging left and right with decreasing amplitude",
    "the boat drifts downward while rocking gently on the waves",
    "a fish swims in a zig-zag toward the top of the screen",
    "two hands shake quickly then stay still for a moment",
]


def cache_dir(path: str | Path | None = None) -> Path:
    p = Path(path or os.environ.get("L2M_BENCH_CACHE") or Path.home() / ".cache" / "l2m" / "bench")
    p.mkdir(parents=True, exist_ok=True)
    return p


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prompts(n: int = 64) -> list[str]:
    """n distinct prompts (accuracy gates, batches): the typical prompts, then generated variations."""
    subjects = ["a ball", "the cat", "a small drone", "three leaves", "the red car", "a dancer", "the flag"]
    verbs = ["moves", "rolls", "spins", "drifts", "bounces", "shakes", "glides", "falls", "zooms"]
    ways = ["to the left", "upward quickly", "in a circle", "slowly to the right", "toward the camera"]
    rng = np.random.default_rng(0)
    out = list(PROMPTS)
    while len(out) < n:
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(ways)}"
        if s not in out:
            out.append(s)
    return out[:n]


# ------------------------------------------------------------------------------------- CLIP bundle
def clip_bundle(default_bundle: Path, cache: Path, progress=None) -> Path:
    """Build (once) a ViT-B-32 bundle with random weights, sized like the default model; returns its dir."""
    base_cfg = json.loads((default_bundle / "manifest.json").read_text())["model"]
    cfg = {**base_cfg, "dim": 512, "text_tower": f"clip:{CLIP_ARCH}", "decoder": "nar"}
    # the bundle layout ('ort_graphs': bump when export.bundle writes different files) and the fusion
    # pass's source (a changed fusion rebuilds the fused graphs)
    fusion = hashlib.sha256((Path(__file__).parents[1] / "export" / "ort_fuse.py").read_bytes()).hexdigest()
    out = cache / f"clip-{CLIP_ARCH}-{_digest(cfg, CLIP_SEED, 'ort_graphs', fusion)}"
    if (out / "manifest.json").exists():
        return out
    import torch

    from export.bundle import write_bundle
    from export.model import L2M, ModelConfig
    from export.text_towers import TextEncoder
    from export.train import save_weights

    if progress:
        progress.set_postfix_str("exporting the CLIP ViT-B-32 bundle (once)")
    log.info("building the random-init CLIP %s bundle in %s (once; ~1 GB of ONNX)", CLIP_ARCH, out)
    # Seeded like benchmarks.reference, so the reference's tower has the very weights in text.onnx
    # and the two can be compared number for number before they are timed.
    torch.manual_seed(CLIP_SEED)
    enc = TextEncoder(f"clip:{CLIP_ARCH}")
    torch.manual_seed(CLIP_SEED + 1)
    model = L2M(ModelConfig.from_dict(cfg)).eval()
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        weights = save_weights(model, Path(tmp))
        write_bundle(
            weights,
            out,
            name=f"clip-{CLIP_ARCH}-random",
            training={"note": f"random init (torch.manual_seed({CLIP_SEED})), for timing only"},
            text_encoder=enc,
        )
    return out


# ------------------------------------------------------------------------------------ quantization
def _inline_text_graph(bundle_dir: Path, dst: Path) -> Path:
    """text.onnx with every initializer inlined (the bundle's external links resolved), so the
    quantizer sees plain weights. Large graphs are saved with external data next to dst."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    from l2m_sdk.bundle import load_bundle

    b = load_bundle(bundle_dir, verify=False)
    text = b.ort_file("text")
    m = onnx.load(str(text), load_external_data=False)
    ext = b.external.get(text.name, {})
    st_raw = None
    for i, t in enumerate(m.graph.initializer):
        if not uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        if t.name in ext:
            arr = np.asarray(ext[t.name])
        else:
            if st_raw is None or st_raw[0] != info["location"]:
                st_raw = (
                    info["location"],
                    np.memmap(bundle_dir / info["location"], dtype=np.uint8, mode="r"),
                )
            off, n = int(info.get("offset", 0)), int(info["length"])
            arr = np.frombuffer(st_raw[1], dtype="<f4", count=n // 4, offset=off).reshape(list(t.dims))
        m.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(arr, np.float32), t.name))
    _fold_weight_transposes(m)
    big = sum(np.prod(t.dims) for t in m.graph.initializer) * 4 > 1.5e9
    onnx.save(m, str(dst), save_as_external_data=big, location=dst.name + ".data" if big else None)
    return dst


def _fold_weight_transposes(m) -> None:
    """Replace Transpose(initializer) by the transposed initializer. The bundle writer links Linear
    weights to their safetensors copy through a Transpose; the quantizer only quantizes MatMuls whose
    weight is an initializer, so without this it would skip nearly all of them."""
    from onnx import numpy_helper

    inits = {t.name: t for t in m.graph.initializer}
    keep, new = [], {}
    for n in m.graph.node:
        if n.op_type == "Transpose" and n.input[0] in inits:
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            arr = numpy_helper.to_array(inits[n.input[0]])
            new[n.output[0]] = numpy_helper.from_array(np.ascontiguousarray(arr.transpose(perm)), n.output[0])
        else:
            keep.append(n)
    if not new:
        return
    used = {x for n in keep for x in n.input} | {o.name for o in m.graph.output}
    del m.graph.node[:]
    m.graph.node.extend(keep)
    old = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(old + list(new.values()))


RECIPES = {
    # name: (human description, quantize_dynamic keyword arguments)
    "int8-per-channel": ("dynamic int8, per-channel weights, all MatMuls", {"per_channel": True}),
    "int8-per-channel-ffn-fp32": (
        "dynamic int8, per-channel weights; the FFN down-projections (post-GELU outliers) kept fp32",
        {"per_channel": True, "_exclude_ffn_out": True},
    ),
    "int8-weights-b32": (
        "MatMulNBits: 8-bit weights in blocks of 32 along K, int8 compute (accuracy_level 4)",
        {"_nbits": {"bits": 8, "block_size": 32, "accuracy_level": 4}},
    ),
    "int4-weights-b32": (
        "MatMulNBits: 4-bit weights in blocks of 32 along K, int8 compute (accuracy_level 4)",
        {"_nbits": {"bits": 4, "block_size": 32, "accuracy_level": 4}},
    ),
}


def _ffn_out_matmuls(model_path: Path) -> list[str]:
    """MatMul nodes whose constant weight (K, N) has K >= 2N: the feed-forward down-projections, whose
    post-GELU inputs carry the outliers that per-tensor activation scales handle worst."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    dims = {t.name: list(t.dims) for t in m.graph.initializer}
    out = []
    for n in m.graph.node:
        w = dims.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) > 1 else None
        if w is not None and len(w) == 2 and w[0] >= 2 * w[1]:
            out.append(n.name)
    return out


def _quantize_nbits(src: Path, dst: Path, opts: dict) -> None:
    """Weight-only blockwise quantization (com.microsoft.MatMulNBits) of every MatMul with a constant
    weight; activations stay fp32 in the graph (accuracy_level 4 lets the kernel quantize them to int8
    per block on the fly)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    cfg = DefaultWeightOnlyQuantConfig(
        block_size=opts["block_size"],
        is_symmetric=True,
        accuracy_level=opts["accuracy_level"],
        bits=opts["bits"],
    )
    q = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=cfg)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def quantized_bundle(bundle_dir: Path, cache: Path, recipe: str) -> Path:
    """A copy of the bundle whose text graph (the one ONNX Runtime runs: text.ort.onnx when the bundle has
    fused graphs) is quantized with `recipe` (see RECIPES); cached."""
    from onnxruntime.quantization import quantize_dynamic

    from l2m_sdk.bundle import load_bundle, sha256_file

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    out = cache / f"{bundle_dir.name}-{recipe}-{_digest(manifest['files'], recipe)}"
    if (out / "manifest.json").exists():
        return out
    kw = dict(RECIPES[recipe][1])
    tmp = Path(tempfile.mkdtemp(prefix=".q-", dir=cache))  # quantizer temp files land here (PITFALLS)
    try:
        src = _inline_text_graph(bundle_dir, tmp / "text_fp32.onnx")
        text_name = load_bundle(bundle_dir, verify=False).ort_file("text").name  # the graph ORT runs
        stage = tmp / "bundle"
        shutil.copytree(bundle_dir, stage, ignore=shutil.ignore_patterns("engines", "image_tower.onnx*"))
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            nbits = kw.pop("_nbits", None)
            if nbits is not None:
                _quantize_nbits(src, stage / text_name, nbits)
            else:
                exclude = _ffn_out_matmuls(src) if kw.pop("_exclude_ffn_out", False) else []
                quantize_dynamic(src, stage / text_name, nodes_to_exclude=exclude, **kw)
        finally:
            os.chdir(cwd)
        manifest = json.loads((stage / "manifest.json").read_text())
        manifest["name"] = f"{manifest.get('name', bundle_dir.name)}-{recipe}"
        manifest["external_initializers"].pop(text_name, None)
        manifest["graphs"].pop("image", None)
        manifest["files"].pop("image_tower.onnx", None)
        manifest["quantization"] = {text_name: RECIPES[recipe][0]}
        for rel in list(manifest["files"]):
            p = stage / rel
            manifest["files"][rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1))
        stage.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def accuracy_gate(fp32_model, q_model, prompts: list[str]) -> dict:
    """Cosine between quantized and fp32 text embeddings over the prompts (one call each, B = 1)."""
    cos = []
    for p in prompts:
        a = fp32_model.encode_text(p)
        b = q_model.encode_text(p)
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    c = np.array(cos)
    return {"prompts": len(prompts), "mean_cosine": float(c.mean()), "min_cosine": float(c.min())}
