"""int8 text tower for ONNX Runtime CPU, derived at load time from the bundle's fp32 weights.

A bundle may carry `int8` in its manifest: a second text graph (`text.int8.onnx`) in which each
matrix product of the text tower is `com.microsoft.DynamicQuantizeMatMul` (activations quantized to
8 bits per call, weights int8 per output column), behind one per-channel division by the smoothing
vector s of its input (SmoothQuant; export/quantize.py measured s on calibration prompts). The int8
weights are not stored: they are computed here from the same fp32 weights the fp32 graph uses (for
the default bundle, the all-MiniLM-L6-v2 package's file, hash-checked), so the bundle stays small:

    W' = W^T * s[:, None]                  (K, N): the product x @ W^T == (x / s) @ W'
    scale_n = max_k |W'_kn| / qmax          per output column n
    q = round(W' / scale_n)  in [-qmax, qmax], int8

qmax is 63 (7-bit weights). onnxruntime's u8 x s8 kernel on AVX2 (no VNNI) sums pairs of 8-bit
products in 16 bits with saturation; with |q| <= 63 a pair stays below 2 * 255 * 63 = 32130 < 32767,
so nothing saturates. Full 8-bit weights (|q| <= 127) lost 0.05 in held-out property pass rate and
0.12 in R@1 on the default model through that saturation (measured; benchmarks/results/latency.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def quantize_columns(wt: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """wt (K, N) float32 -> (q (K, N) int8, scale (N,) float32), symmetric per column:
    wt ~= q * scale, |q| <= qmax. A column of zeros gets scale 1 (q = 0)."""
    if wt.ndim != 2:
        raise ValueError(f"expected a (K, N) weight, got shape {wt.shape}")
    if not 1 <= qmax <= 127:
        raise ValueError(f"qmax must lie in 1..127, got {qmax}")
    amax = np.abs(wt).max(axis=0)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.rint(wt / scale).clip(-qmax, qmax).astype(np.int8)
    return q, scale


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A small float32 safetensors file (the smoothing vectors) as {name: array}."""
    from l2m_sdk.bundle import safetensors_header

    base, header = safetensors_header(path)
    raw = path.read_bytes()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") != "F32":
            raise ValueError(f"{path}: tensor {name!r} is {info.get('dtype')}, expected F32")
        a, b = info["data_offsets"]
        flat = np.frombuffer(raw, dtype="<f4", count=(b - a) // 4, offset=base + a)
        out[name] = flat.reshape(info["shape"])
    return out


def int8_initializers(spec: dict, fp32: dict[str, np.ndarray], bundle_dir: Path) -> dict[str, np.ndarray]:
    """The int8 text graph's external initializers: the fp32 graph's (embeddings, biases, norms) minus
    the quantized weights, plus for each quantized weight its int8 matrix, column scales and zero
    points, and the smoothing vectors. spec is the manifest's `int8` section; fp32 the fp32 text
    graph's external arrays (name -> (N, K) Linear weight for the quantized ones)."""
    smooth = read_safetensors(bundle_dir / spec["smoothing"])
    qmax = int(spec["qmax"])
    out = {k: v for k, v in fp32.items() if k not in spec["weights"]}
    for name, w in spec["weights"].items():
        if name not in fp32 or w["smooth"] not in smooth:
            raise ValueError(f"int8 section names {name!r} / {w['smooth']!r}, which the bundle lacks")
        s = smooth[w["smooth"]]
        W = fp32[name]  # (N, K): out x in, as torch's Linear stores it
        if W.ndim != 2 or W.shape[1] != s.shape[0]:
            raise ValueError(f"{name}: weight {W.shape} does not match smoothing vector {s.shape}")
        q, scale = quantize_columns(np.ascontiguousarray(W.T) * s[:, None], qmax)
        out[w["int8"]] = q
        out[w["scale"]] = scale
        out[w["zero"]] = np.zeros(q.shape[1], np.int8)
    out.update({k: np.ascontiguousarray(v) for k, v in smooth.items()})
    return out
