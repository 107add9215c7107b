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
def clip_model_config(default_model: dict) -> dict:
    """The CLIP configuration timed beside the default one: the default model's sizes on CLIP's tower.
    CLIP pools at its end-of-text token, so the default's attention pooling over MiniLM's token states
    (its per-token MLP, the tower depth it reads) has no counterpart there."""
    return {
        **default_model,
        "dim": 512,
        "text_tower": f"clip:{CLIP_ARCH}",
        "decoder": "nar",
        "text_pool": "mean",
        "pool_hidden": 0,
        "text_depth": 0,
    }


def clip_bundle(default_bundle: Path, cache: Path, progress=None) -> Path:
    """Build (once) a ViT-B-32 bundle with random weights, sized like the default model; returns its dir."""
    cfg = clip_model_config(json.loads((default_bundle / "manifest.json").read_text())["model"])
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
RECIPES = {
    # name: (human description, quantize_dynamic keyword arguments)
    "int8-per-channel": ("dynamic int8, per-channel weights, all MatMuls", {"per_channel": True}),
    "int8-smooth": (
        "dynamic int8, per-channel 7-bit weights (reduce_range), all MatMuls, activations smoothed per "
        "channel (SmoothQuant, export/quantize.py)",
        {"per_channel": True, "reduce_range": True, "_smooth": True},
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

    from export.quantize import inline_text_graph
    from l2m_sdk.bundle import load_bundle, sha256_file

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    # keyed by the recipe's settings and the smoothing code too, so changing either rebuilds the copy
    smoothing = hashlib.sha256((Path(__file__).parents[1] / "export" / "quantize.py").read_bytes())
    key = _digest(manifest["files"], recipe, RECIPES[recipe], smoothing.hexdigest())
    out = cache / f"{bundle_dir.name}-{recipe}-{key}"
    if (out / "manifest.json").exists():
        return out
    kw = dict(RECIPES[recipe][1])
    tmp = Path(tempfile.mkdtemp(prefix=".q-", dir=cache))  # quantizer temp files land here (PITFALLS)
    try:
        src = inline_text_graph(bundle_dir, tmp / "text_fp32.onnx")
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
                if kw.pop("_smooth", False):
                    src = _smoothed(bundle_dir, src, tmp / "text_smoothed.onnx")
                quantize_dynamic(src, stage / text_name, **kw)
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


def _smoothed(bundle_dir: Path, src: Path, dst: Path) -> Path:
    """src with its MatMul inputs smoothed (export/quantize.py), calibrated on prompts the accuracy
    gate does not use; the smoothed fp32 graph is checked against src before it is quantized."""
    from export.quantize import calibration_prompts, smooth, tokenized

    calib = calibration_prompts()
    if set(calib) & set(prompts(64)):
        raise RuntimeError("calibration prompts overlap the accuracy gate's prompts")
    feeds = tokenized(bundle_dir, calib)
    diff = smooth(src, dst, feeds)
    if diff > 1e-4:  # relative; fp32 rounding of the rescaled products is ~1e-6
        raise RuntimeError(f"smoothing changed the fp32 text embedding by {diff:.2e} relative (> 1e-4)")
    log.info("smoothed %s: fp32 max |diff| %.2e", src.name, diff)
    return dst


def accuracy_gate(fp32_model, q_model, prompts: list[str]) -> dict:
    """Cosine between quantized and fp32 text embeddings over the prompts (one call each, B = 1)."""
    cos = []
    for p in prompts:
        a = fp32_model.encode_text(p)
        b = q_model.encode_text(p)
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    c = np.array(cos)
    return {"prompts": len(prompts), "mean_cosine": float(c.mean()), "min_cosine": float(c.min())}
