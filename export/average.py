"""Weight averaging ("model soup", Wortsman et al. 2022, arXiv 2203.05482) of training runs.

    python -m export.average --weights runs/a/model.safetensors runs/b/model.safetensors --out runs/soup

Runs fine-tuned one from another along one line of stages sit in one basin of the loss; their mean is
a model of its own that often generalises better than either. Every input must have the same model
configuration and the same tensors; the output is written like a training run's (model.safetensors
with its config, model_config.json), so export.evaluate and export.bundle take it as they are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def average(paths: list[str | Path]):
    """The element-wise mean (float64 accumulation) of the weights in `paths` as an L2M in eval mode.
    Raises ValueError when fewer than two files are given or their configurations or tensors differ."""
    from export.train import load_weights

    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two weight files, got {len(paths)}")
    models = [load_weights(p) for p in paths]
    cfg = models[0].cfg.to_dict()
    for p, m in zip(paths[1:], models[1:]):
        if m.cfg.to_dict() != cfg:
            diff = {k: (cfg.get(k), v) for k, v in m.cfg.to_dict().items() if cfg.get(k) != v}
            raise ValueError(f"{p}: model configuration differs from {paths[0]}: {diff}")
    states = [m.state_dict() for m in models]
    keys = list(states[0])
    for p, s in zip(paths[1:], states[1:]):
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"{p}: tensors differ in names or shapes from {paths[0]}")
    mean = {k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype) for k in keys}
    out = models[0]
    out.load_state_dict(mean)
    return out.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", required=True, help="model.safetensors files of the runs")
    ap.add_argument("--out", required=True, help="directory for the averaged model.safetensors")
    args = ap.parse_args(argv)
    from export.train import save_weights

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = save_weights(average(args.weights), out)
    (out / "averaged_from.json").write_text(json.dumps({"weights": args.weights}, indent=2))
    print(f"weights: {path} (mean of {len(args.weights)} runs)")


if __name__ == "__main__":
    main()
