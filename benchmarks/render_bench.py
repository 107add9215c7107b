"""Rasterizer speed: CPU build vs numpy reference vs a research-code matplotlib renderer (same run).

    python benchmarks/render_bench.py [--frames 30 --points 64 --size 224 --out benchmarks/results]

Workload: one 8x8 grid of points swirling and bouncing for T frames (N = 64, T = 30 by default), drawn at
224x224 with trails. Results are checked before anything is timed (CPU build == numpy reference, and
the GPU kernel when a GPU is present); times are the minimum over repeats, per image. The matplotlib
renderer is the public code's style: a new figure per image, one plot call per point, a PNG round
trip. Writes render.md and render.json to --out; with --docs DIR also the README's example.png and
example.gif of the same motion.
"""

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import l2m_sdk.render as R  # noqa: E402 - after the path tweak so the checkout's package is used

TARGET_SPEEDUP = 100.0


def sample_motion(frames: int = 30, side: int = 8) -> np.ndarray:
    """(T, side*side, 2) float32: a grid turning a quarter, shrinking, drifting right, hopping (y down)."""
    g = np.linspace(-0.3, 0.3, side, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=-1)
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32)[:, None]
    angle = 0.5 * np.pi * t
    scale = 1.0 - 0.35 * t
    rot_x = grid[None, :, 0] * np.cos(angle) - grid[None, :, 1] * np.sin(angle)
    rot_y = grid[None, :, 0] * np.sin(angle) + grid[None, :, 1] * np.cos(angle)
    drift_x = -0.45 + 0.9 * t
    hop_y = 0.3 - 0.55 * np.abs(np.sin(2.0 * np.pi * t))  # negative y is up: two hops
    traj = np.stack([rot_x * scale + drift_x, rot_y * scale + hop_y], axis=-1)
    return traj.astype(np.float32)


def matplotlib_render(traj: np.ndarray, size: int = 224) -> np.ndarray:
    """Research-code style: figure per image, a plot per point, PNG round trip -> (size, size, 3) uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    T, N, _ = traj.shape
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(-1, 1)
    ax.set_ylim(1, -1)
    ax.axis("off")
    fig.patch.set_facecolor("black")
    cmap = plt.get_cmap("hsv")
    for n in range(N):
        ax.plot(traj[:, n, 0], traj[:, n, 1], color=cmap(n / N), linewidth=1.2)
        ax.scatter(traj[-1:, n, 0], traj[-1:, n, 1], color=cmap(n / N), s=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="black")
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def best_of(fn, repeats: int, progress=None) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if progress is not None:
            progress.update(1)
    return min(times)


def _gpu_name() -> str | None:
    try:
        from cuda.bindings import driver

        (err,) = driver.cuInit(0)
        if int(err) != 0:
            return None
        err, dev = driver.cuDeviceGet(0)
        err, name = driver.cuDeviceGetName(64, dev)
        return name.split(b"\0")[0].decode() if int(err) == 0 else None
    except Exception:  # no cuda-python or no driver
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--points-side", type=int, default=8, help="grid side; N = side^2 (8 -> 64)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64, help="batch for the per-image batched numbers")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--docs", type=Path, default=None, help="also write example.png / example.gif here")
    args = ap.parse_args(argv)

    traj = sample_motion(args.frames, args.points_side)
    T, N, _ = traj.shape
    S = args.size
    lib = R._load_cpu_library()
    if lib is None:
        print(
            "CPU rasterizer library missing: run `python setup.py build_ext --inplace` first", file=sys.stderr
        )
        return 1

    # Check before timing.
    ref = R.render_reference(traj, S, dtype=np.float32)
    got = R.render(traj, S, dtype=np.float32)
    max_diff = float(np.abs(got - ref).max())
    if max_diff > 2e-6:
        print(f"CPU build disagrees with the numpy reference: max |diff| {max_diff}", file=sys.stderr)
        return 1
    mpl_img = matplotlib_render(traj, S)
    assert mpl_img.shape == (S, S, 3), mpl_img.shape
    gpu = _gpu_name()
    batch = np.ascontiguousarray(np.broadcast_to(traj, (args.batch, T, N, 2)))
    if gpu:
        gpu_diff = float(np.abs(R.render(traj, S, dtype=np.float32, device="cuda") - ref).max())
        if gpu_diff > 2e-6:
            print(f"CUDA kernel disagrees with the numpy reference: max |diff| {gpu_diff}", file=sys.stderr)
            return 1

    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    plan = {"cpu": 50, "cpu_batch": 5, "numpy": 3, "matplotlib": 8, "cuda_batch": 20 if gpu else 0}
    bar = tqdm(total=sum(plan.values()), desc="render bench") if tqdm else None
    t = {
        "cpu_build": best_of(lambda: R.render(traj, S), plan["cpu"], bar),
        "cpu_build_batched": best_of(lambda: R.render(batch, S), plan["cpu_batch"], bar) / args.batch,
        "numpy_reference": best_of(lambda: R.render_reference(traj, S), plan["numpy"], bar),
        "matplotlib": best_of(lambda: matplotlib_render(traj, S), plan["matplotlib"], bar),
    }
    if gpu:
        R.render(batch, S, device="cuda")  # compile + warm up
        t["cuda_batched_incl_copies"] = best_of(
            lambda: R.render(batch, S, device="cuda"), plan["cuda_batch"], bar
        )
        t["cuda_batched_incl_copies"] /= args.batch
    if bar:
        bar.close()

    prims = (T - 1) * N + N
    out_bytes = S * S * 3
    speedup = t["matplotlib"] / t["cpu_build"]
    import matplotlib

    env = {
        "machine": platform.machine(),
        "cpu": platform.processor() or platform.uname().machine,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "gpu": gpu,
    }
    result = {
        "workload": {"frames": T, "points": N, "size": S, "primitives_per_image": prims, "batch": args.batch},
        "checked": {"cpu_vs_numpy_max_abs_diff": max_diff},
        "seconds_per_image": t,
        "speedup_cpu_vs_matplotlib": speedup,
        "speedup_cpu_vs_numpy": t["numpy_reference"] / t["cpu_build"],
        "target_speedup": TARGET_SPEEDUP,
        "meets_target": speedup >= TARGET_SPEEDUP,
        "output_MB_per_s_cpu": out_bytes / t["cpu_build"] / 1e6,
        "env": env,
    }
    lines = [
        "# Rasterizer benchmark",
        "",
        f"Workload: N = {N} points, T = {T} frames, {S}x{S}, trails + dots ({prims} primitives per image); "
        f"CPU build checked against the numpy reference first (max |diff| {max_diff:.1e}).",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores (1-min load {env['load_avg_1m']}), "
        f"Python {env['python']}, numpy {env['numpy']}, matplotlib {env['matplotlib']}, "
        f"GPU: {gpu or 'none'}.",
        "Times: minimum over repeats, per image.",
        "",
        "| renderer | ms / image | vs CPU build |",
        "| --- | ---: | ---: |",
    ]
    for name, sec in t.items():
        lines.append(f"| {name} | {sec * 1e3:.3f} | {sec / t['cpu_build']:.1f}x |")
    lines += [
        "",
        f"CPU build is **{speedup:.0f}x** faster than matplotlib (target >= {TARGET_SPEEDUP:.0f}x: "
        f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}); "
        f"{result['speedup_cpu_vs_numpy']:.0f}x faster than the numpy reference. "
        f"Output written: {out_bytes / 1e3:.0f} kB per image, {result['output_MB_per_s_cpu']:.0f} MB/s.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "render.md").write_text(report)
    (args.out / "render.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        R.save_png(args.docs / "example.png", traj, size=256)
        R.save_gif(args.docs / "example.gif", traj, fps=12, size=192)
        print(f"wrote {args.docs / 'example.png'} and {args.docs / 'example.gif'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
