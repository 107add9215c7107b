"""Napkin math: FLOPs per call, counted analytically from the model configurations (matrix products
only), and the machine's own rates (fp32 GEMM, memory copy) measured at the benchmark's thread count.

One multiply-add = 2 FLOPs. Only matrix products are counted (Linear layers, attention scores and
mixing, the point head's per-point MLP): they are over 95% of the arithmetic in these models; layer
norms, softmax, GELU and elementwise adds are left out, so achieved GFLOP/s is a slight underestimate.
Shapes: B prompts, L tokens, T frames, N points; widths from the bundle manifest / tower config.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Tower:
    """A transformer text tower: layers, width, feed-forward width, output dim, weights in bytes (fp32)."""

    layers: int
    width: int
    ff: int
    out_dim: int
    read_at_one_token: bool  # CLIP projects only the EOT token; MiniLM mean-pools then has no projection
    vocab: int

    def weight_bytes(self) -> int:
        """Bytes of the matmul weights streamed per call (the token table is gathered, not streamed)."""
        per_layer = 4 * self.width * self.width + 2 * self.width * self.ff
        proj = self.width * self.out_dim if self.read_at_one_token else 0
        return 4 * (self.layers * per_layer + proj)


MINILM = Tower(layers=6, width=384, ff=1536, out_dim=384, read_at_one_token=False, vocab=30522)
CLIP_B32 = Tower(layers=12, width=512, ff=2048, out_dim=512, read_at_one_token=True, vocab=49408)


def tower_for(kind: str) -> Tower:
    if kind == "minilm":
        return MINILM
    if kind.startswith("clip:ViT-B-32"):
        return CLIP_B32
    raise ValueError(f"no FLOP model for text tower {kind!r}; known: 'minilm', 'clip:ViT-B-32'")


def _block(tokens: int, width: int, ff: int) -> int:
    """One transformer block over `tokens` tokens: QKV + output projection + MLP + attention."""
    return 2 * tokens * (4 * width * width + 2 * width * ff) + 4 * tokens * tokens * width


def text_flops(
    tower: Tower,
    batch: int,
    tokens: int,
    adapter_hidden: int = 0,
    attention_pool: bool = False,
    pool_hidden: int = 0,
    depth: int = 0,
) -> int:
    """Text tower (+ l2m's residual adapter when adapter_hidden > 0, + its attention pooling's token
    scores when attention_pool, + the pool's per-token MLP when pool_hidden > 0) for a (batch, tokens)
    id matrix; with depth > 0 only the tower's first `depth` layers run (the pool reads them)."""
    f = (depth or tower.layers) * _block(tokens, tower.width, tower.ff)
    if attention_pool:
        f += 2 * tokens * tower.width + 2 * 2 * tokens * tower.width * pool_hidden
    if tower.read_at_one_token:
        f += 2 * tower.width * tower.out_dim
    if adapter_hidden:
        f += 2 * 2 * tower.out_dim * adapter_hidden
    return batch * f


def bundle_text_flops(cfg: dict, batch: int, tokens: int) -> int:
    """text_flops for a bundle's model configuration (manifest `model`)."""
    return text_flops(
        tower_for(cfg["text_tower"]),
        batch,
        tokens,
        cfg.get("adapter_hidden", 0),
        cfg.get("text_pool") == "attention",
        cfg.get("pool_hidden", 0),
        cfg.get("text_depth", 0),
    )


def nar_decoder_flops(cfg: dict, batch: int, frames: int, points: int) -> int:
    """export.model.MotionDecoder: K conditioning + T time tokens through the blocks, then the point head
    on every (frame, point) pair."""
    W, P, K, D, F = cfg["width"], cfg["point_hidden"], cfg["cond_tokens"], cfg["dim"], cfg["ff"]
    S = K + frames
    per_item = (
        2 * D * K * W
        + 2 * 4 * W  # layout
        + cfg["dec_layers"] * _block(S, W, F)
        + 2 * frames * W * (6 + P)  # affine + frame_to_point
        + 2 * frames * points * 4  # the per-frame 2x2 map applied to every point
        + 2 * points * 4 * P  # point_in
        + 2 * frames * points * (P * P + 2 * P)  # point_mid + point_out
    )
    shared = 2 * frames * (32 * W + W * W)  # time MLP, computed once per call
    return batch * per_item + shared


def encoder_flops(cfg: dict, batch: int, frames: int, points: int) -> int:
    """export.model.MotionEncoder: shared point MLP on every (frame, point), pooling, temporal blocks."""
    W, P, D, F = cfg["width"], cfg["point_hidden"], cfg["dim"], cfg["ff"]
    per_item = (
        2 * frames * points * (8 * P + P * P)
        + 2 * frames * (2 * P * W + 7 * W)
        + cfg["enc_layers"] * _block(frames + 1, W, F)
        + 2 * W * D
    )
    return batch * per_item + 2 * frames * 32 * W  # the time projection is shared by the batch


def ar_decoder_flops(width: int, dim: int, batch: int, frames: int, points: int) -> int:
    """export.model.ARDecoder: a (W + 36) -> W -> W -> 2 MLP per point at each of the T - 1 steps."""
    step = 2 * ((width + 36) * width + width * width + width * 2)
    return batch * (2 * dim * width + (frames - 1) * points * step)


def search_flops(queries: int, gallery: int, dim: int) -> int:
    return 2 * queries * gallery * dim


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in (platform.processor(), platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " ".join(
                    f for f in line.split() if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
                )
    except OSError:
        pass
    import onnxruntime
    import torch

    return {
        "cpu": cpu,
        "simd": flags,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads,
        "load_avg_1m_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs since boot, from /proc/stat; None where it cannot be read.
    Steal is time a virtual machine's CPUs were ready to run but the host ran something else."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    vals = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return vals[7], sum(vals)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of all CPU time between two cpu_ticks() readings that the host stole (0..1), or None."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def gemm_rates(threads: int, n: int, repeats: int) -> dict:
    """fp32 GEMM GFLOP/s at n^3 on `threads` threads: torch (oneDNN/MKL) and ONNX Runtime's MatMul
    (MLAS, what the l2m graphs run on); plus single-thread numpy copy bandwidth (GB/s, read + write)."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    t_torch = _best(lambda: torch.mm(a, b), repeats)
    w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(w, "w")],
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(), so
    )
    x = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    y = sess.run(None, {"x": x})[0]
    if np.abs(y - x @ w).max() > 1e-3 * n**0.5:
        raise RuntimeError("ONNX Runtime MatMul disagrees with numpy; GEMM rate not trusted")
    t_ort = _best(lambda: sess.run(None, {"x": x}), repeats)
    src = np.ones(1 << 26, np.float32)  # 256 MB: far beyond any cache
    dst = np.empty_like(src)
    t_copy = _best(lambda: np.copyto(dst, src), 5)
    f = 2 * n**3
    return {
        "n": n,
        "torch_gflops": f / t_torch / 1e9,
        "ort_gflops": f / t_ort / 1e9,
        "best_gflops": f / min(t_torch, t_ort) / 1e9,
        "copy_gbps": 2 * src.nbytes / t_copy / 1e9,
    }
