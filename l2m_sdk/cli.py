"""`l2m` command line: generate, search, encode, info, export, bench.

l2m generate "a ball bouncing to the right" -o ball.gif
l2m search "a car turning left" --library motions/ -k 5
l2m encode motions.npz -o embeddings.npy
l2m info
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

OUT_KINDS = (".npy", ".json", ".png", ".gif")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _model(args):
    import l2m_sdk

    return l2m_sdk.load(
        args.bundle, backend=args.backend, device=args.device, threads=args.threads, precision=args.precision
    )


def _write_traj(path: Path, traj: np.ndarray, texts: list[str], size: int, fps: float) -> None:
    ext = path.suffix.lower()
    if ext not in OUT_KINDS:
        raise CliError(f"unknown output type {ext or '(none)'} for {path}; use one of {', '.join(OUT_KINDS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".npy":
        np.save(path, traj)
    elif ext == ".json":
        path.write_text(
            json.dumps(
                {
                    "convention": "normalised image coordinates, x right, y down, [-1, 1]",
                    "shape": list(traj.shape),
                    "texts": texts,
                    "trajectories": np.round(traj, 6).tolist(),
                }
            )
        )
    else:
        from l2m_sdk import render as R

        one = traj if traj.ndim == 3 else traj[0]
        if traj.ndim == 4 and traj.shape[0] > 1:
            logging.getLogger("l2m_sdk").warning("%s: drawing the first of %d prompts", path, traj.shape[0])
        if ext == ".png":
            R.save_png(path, one, size=size)
        else:
            R.save_gif(path, one, fps=fps, size=size)


def _load_library(path: Path) -> tuple[np.ndarray, list[str]]:
    """A folder of .npy trajectories or one .npz -> (M, T, N, 2) stacked (same T and N) and names."""
    if not path.exists():
        raise FileNotFoundError(f"motion library {path} not found (a folder of .npy files or one .npz)")
    items: list[tuple[str, np.ndarray]] = []
    if path.is_dir():
        for f in sorted(path.glob("*.npy")):
            items.append((f.stem, np.load(f, allow_pickle=False)))
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            items = [(k, z[k]) for k in z.files]
    elif path.suffix == ".npy":
        a = np.load(path, allow_pickle=False)
        items = [(f"{path.stem}[{i}]", x) for i, x in enumerate(a)] if a.ndim == 4 else [(path.stem, a)]
    else:
        raise CliError(f"{path}: a motion library is a folder of .npy files, a .npz or a (M, T, N, 2) .npy")
    if not items:
        raise CliError(f"{path} holds no .npy trajectories")
    for name, a in items:
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise CliError(f"{path}: {name} holds {a.dtype} values; trajectories are real numbers (float32)")
    shapes = {a.shape for _, a in items}
    if len(shapes) > 1:
        raise CliError(
            f"{path}: trajectories differ in shape {sorted(shapes)[:4]}; resample them to one T, N"
        )
    # Stacked in the files' own dtype: the SDK checks the values before it makes them float32, so a
    # coordinate too large for float32 is reported as too large, not as the inf a cast here would make.
    return np.stack([a for _, a in items]), [n for n, _ in items]


def cmd_generate(args) -> int:
    # Check every output type before any work, so a typo in the last -o leaves no partial set of files.
    for out in args.output:
        ext = Path(out).suffix
        if ext.lower() not in OUT_KINDS:
            raise CliError(
                f"unknown output type {ext or '(none)'} for {out}; use one of {', '.join(OUT_KINDS)}"
            )
    model = _model(args)
    texts = args.text
    init = np.load(args.initial_points) if args.initial_points else None
    traj = model.generate(
        texts if len(texts) > 1 else texts[0],
        initial_points=init,
        num_frames=args.frames,
        seed=args.seed,
        temperature=args.temperature,
    )
    for out in args.output:
        _write_traj(Path(out), traj, texts, args.size, args.fps)
        print(f"wrote {out}  shape {tuple(traj.shape)}")
    return 0


def cmd_search(args) -> int:
    model = _model(args)
    lib = Path(args.library)
    if lib.suffix == ".npy" and np.load(lib, mmap_mode="r").ndim == 2:
        gallery = np.load(lib, allow_pickle=False)  # validated (and made float32) by search
        names = [str(i) for i in range(len(gallery))]
    else:
        gallery, names = _load_library(lib)
    idx, scores = model.search(args.query, gallery, k=args.k)
    rows = [
        {"rank": r + 1, "name": names[i], "index": int(i), "score": round(float(s), 4)}
        for r, (i, s) in enumerate(zip(idx, scores))
    ]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['rank']:>3}  {r['score']:.4f}  {r['name']}")
    return 0


def cmd_encode(args) -> int:
    model = _model(args)
    if args.text:
        emb = np.atleast_2d(model.encode_text(args.inputs))
    else:
        if len(args.inputs) != 1:
            raise CliError("encode takes one motion library (folder, .npz or .npy); use --text for prompts")
        gallery, _ = _load_library(Path(args.inputs[0]))
        emb = model.encode_motion(gallery)
    np.save(args.output, emb)
    print(f"wrote {args.output}  shape {emb.shape}")
    return 0


def cmd_info(args) -> int:
    import onnxruntime

    import l2m_sdk
    from l2m_sdk.bundle import list_bundles

    model = _model(args)
    info = model.info()
    man = model.bundle.manifest
    from l2m_sdk.backends import describe

    info.update(
        selected=describe(model.choice),
        l2m_version=l2m_sdk.__version__,
        onnxruntime=onnxruntime.__version__,
        builtin_bundles=list_bundles(),
        files={k: v["sha256"][:16] for k, v in man["files"].items()},
        external={
            k: {"package": v["package"], "sha256": v["sha256"][:16]}
            for k, v in man.get("external_initializers", {}).items()
        },
        metrics=man.get("metrics", {}).get("summary", {}),
    )
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        info["tensorrt"] = None
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            print(f"{k:>16}: {v}")
    return 0


def cmd_export(args) -> int:
    # The export side (torch) runs as its own program: l2m_sdk never imports it (ARCHITECTURE.md).
    import importlib.util
    import subprocess

    missing = [m for m in ("export", "torch", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(
            f"export needs the training side ({', '.join(missing)} missing): pip install 'l2m[export]'"
        )
    if args.engines:
        if not args.bundle_dir:
            raise CliError("--engines needs --bundle-dir DIR (the bundle whose graphs to build engines from)")
        argv = ["-m", "export.trt_build", "--bundle", args.bundle_dir, *args.rest]
    else:
        argv = ["-m", "export.bundle", *args.rest]
    return subprocess.call([sys.executable, *argv])


def cmd_bench(args) -> int:
    try:
        from benchmarks.latency import main as bench_main
    except ImportError as e:
        raise CliError(f"the benchmark harness is not installed with this package ({e})") from e
    return bench_main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="l2m", description="Lang2Motion: text -> 2D point trajectories")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--bundle", default="default", help="built-in bundle name or bundle directory")
        p.add_argument("--backend", default="auto", help="auto | ort | trt")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")
        p.add_argument("--threads", type=int, default=None)
        p.add_argument(
            "--precision", default="fp32", choices=["fp32", "int8"], help="int8: ONNX Runtime CPU text tower"
        )

    g = sub.add_parser("generate", help="text -> trajectory (.npy .json .png .gif)")
    g.add_argument("text", nargs="+", help="one or more prompts")
    g.add_argument("-o", "--output", action="append", required=True, help="output file; repeat for several")
    g.add_argument("--frames", type=int, default=None)
    g.add_argument("--initial-points", default=None, help=".npy of shape (N, 2)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--size", type=int, default=256, help="image size for .png/.gif")
    g.add_argument("--fps", type=float, default=15.0)
    common(g)
    g.set_defaults(fn=cmd_generate)

    s = sub.add_parser("search", help="rank a motion library by a text query")
    s.add_argument("query")
    s.add_argument("--library", required=True, help="folder of .npy, one .npz, or (M, D) embeddings .npy")
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--json", action="store_true")
    common(s)
    s.set_defaults(fn=cmd_search)

    e = sub.add_parser("encode", help="embed prompts (--text) or a motion library")
    e.add_argument("inputs", nargs="+")
    e.add_argument("--text", action="store_true", help="inputs are prompts")
    e.add_argument("-o", "--output", required=True, help=".npy for the (B, D) embeddings")
    common(e)
    e.set_defaults(fn=cmd_encode)

    i = sub.add_parser("info", help="bundle, backend (and why), versions, hashes")
    i.add_argument("--json", action="store_true")
    common(i)
    i.set_defaults(fn=cmd_info)

    x = sub.add_parser("export", help="export a bundle (python -m export.bundle) or TensorRT engines")
    x.add_argument("--engines", action="store_true", help="build TensorRT engines for --bundle-dir")
    x.add_argument("--bundle-dir", default=None)
    x.add_argument("rest", nargs=argparse.REMAINDER)
    x.set_defaults(fn=cmd_export)

    b = sub.add_parser("bench", help="latency benchmarks (python -m benchmarks.latency)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    # `bench` and `export` pass their options through to the wrapped module (argparse's REMAINDER alone
    # does not take options that come first, as in `l2m bench --quick`).
    args, extra = ap.parse_known_args(argv)
    if extra:
        if args.cmd not in ("bench", "export"):
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
        args.rest = [*extra, *args.rest]
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.fn(args)
    except (CliError, ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"l2m {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
