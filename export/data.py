"""Procedural motion corpus: structured specs -> trajectories (T, N, 2) and captions.

Coordinates are normalised image coordinates, x right, **y down**, in [-1, 1]. Motions are defined in
continuous time u in [0, 1], so any frame count T can be sampled from the same spec. Frame 0 of
every trajectory is the initial layout. Deterministic by seed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from export.captions import (
    _OBJECTS,
    DIRECTIONS,
    HORIZONTAL,
    _pick,
    filler_nouns,
    filler_phrase,
    spec_key,
    write_caption,
)
from export.captions import wide_nouns as vocabulary_nouns

SPEED_FACTOR = {"slow": 0.5, "normal": 1.0, "fast": 1.8}
_DIR_NAMES = tuple(DIRECTIONS)
_FAMILY_WEIGHTS = {
    "translate": 3.0,
    "rotate": 1.2,
    "grow": 0.8,
    "shrink": 0.8,
    "bounce": 1.0,
    "fall": 0.8,
    "jump": 0.8,
    "orbit": 1.0,
    "spiral": 0.8,
    "zigzag": 1.0,
    "swing": 1.0,
    "shake": 0.8,
    "wave": 0.8,
    "flap": 0.7,
    "walk": 0.9,
    "stop_and_go": 0.9,
    "still": 0.7,
}
_THEN_FAMILIES = ("translate", "fall", "rotate", "grow", "shrink", "still", "bounce", "swing", "shake")
_WHILE_FAMILIES = ("swing", "rotate", "shake")


def sample_spec(rng: np.random.Generator, compose: bool = True) -> dict:
    """A random structured motion description (see captions.write_caption)."""
    fams = list(_FAMILY_WEIGHTS)
    w = np.array([_FAMILY_WEIGHTS[f] for f in fams])
    fam = fams[int(rng.choice(len(fams), p=w / w.sum()))]
    spec: dict = {"family": fam}
    if fam in ("translate", "zigzag", "stop_and_go"):
        spec["dir"] = _DIR_NAMES[int(rng.integers(8))]
    elif fam in ("bounce", "jump", "walk"):
        choices = (*HORIZONTAL, None) if fam != "walk" else HORIZONTAL
        spec["dir"] = choices[int(rng.integers(len(choices)))]
    if fam in ("rotate", "orbit"):
        spec["sense"] = "cw" if rng.random() < 0.5 else "ccw"
    if fam == "spiral":
        spec["sense"] = "in" if rng.random() < 0.5 else "out"
    if fam != "still":
        r = rng.random()
        spec["speed"] = "slow" if r < 0.22 else ("fast" if r > 0.78 else "normal")
    if compose and fam != "still":
        r = rng.random()
        if r < 0.12:
            sub = sample_spec(rng, compose=False)
            while sub["family"] not in _THEN_FAMILIES or sub["family"] == fam:
                sub = sample_spec(rng, compose=False)
            sub["speed"] = "normal"
            spec["then"] = sub
        elif r < 0.20 and fam in ("translate", "fall", "walk"):
            fam2 = _WHILE_FAMILIES[int(rng.integers(len(_WHILE_FAMILIES)))]
            sub = {"family": fam2, "speed": "normal"}
            if fam2 == "rotate":
                sub["sense"] = "cw" if rng.random() < 0.5 else "ccw"
            spec["while"] = sub
    return spec


def make_layout(rng: np.random.Generator, n: int) -> np.ndarray:
    """Point offsets from the object's centroid, (N, 2): grids, blobs, rings, of varied size/aspect."""
    if n < 1:
        raise ValueError(f"need at least one point, got N={n}")
    if n == 1:
        return np.zeros((1, 2), np.float64)
    half = rng.uniform(0.05, 0.28)
    aspect = math.exp(rng.uniform(-0.6, 0.6))
    kind = rng.random()
    g = int(round(math.sqrt(n)))
    if kind < 0.5 and g * g == n:
        a = np.linspace(-1, 1, g)
        xy = np.stack(np.meshgrid(a, a), -1).reshape(-1, 2)
        xy += rng.normal(0, 0.05, xy.shape)
    elif kind < 0.8:
        r = np.sqrt(rng.uniform(0, 1, n))
        t = rng.uniform(0, 2 * math.pi, n)
        xy = np.stack([r * np.cos(t), r * np.sin(t)], -1)
    else:
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        xy = np.stack([np.cos(t), np.sin(t)], -1) * rng.uniform(0.7, 1.0, (n, 1))
    xy *= half * np.array([aspect, 1 / aspect]) ** 0.5
    ang = rng.uniform(-0.5, 0.5)
    c, s = math.cos(ang), math.sin(ang)
    xy = xy @ np.array([[c, s], [-s, c]])
    return xy - xy.mean(0)


def _ease(rng: np.random.Generator, u: np.ndarray) -> np.ndarray:
    k = int(rng.integers(4))
    if k == 0:
        return u
    if k == 1:
        return u * u * (3 - 2 * u)
    if k == 2:
        return u * u
    return 1 - (1 - u) ** 2


def _rot(theta: np.ndarray) -> np.ndarray:
    """(T,) angles -> (T, 2, 2). Positive angles turn clockwise on screen because y points down."""
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _rigid(c: np.ndarray, rel: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
    """Centroid path (T, 2) + offsets (N, 2), optionally rotated by theta (T,) -> (T, N, 2)."""
    if theta is None:
        return c[:, None, :] + rel[None]
    return c[:, None, :] + np.einsum("tij,nj->tni", _rot(theta), rel)


def _jitter_dir(rng: np.random.Generator, name: str, deg: float = 10.0) -> np.ndarray:
    v = np.array(DIRECTIONS[name])
    a = math.radians(rng.uniform(-deg, deg))
    return _rot(np.array([a]))[0] @ v


def _motion(
    spec: dict, u: np.ndarray, rel: np.ndarray, rng: np.random.Generator, c0: np.ndarray | None
) -> np.ndarray:
    fam = spec["family"]
    sf = SPEED_FACTOR[spec.get("speed", "normal")] * rng.uniform(0.85, 1.15)
    T = len(u)

    def start(default_span: float = 0.5) -> np.ndarray:
        return c0 if c0 is not None else rng.uniform(-default_span, default_span, 2)

    if fam in ("translate", "stop_and_go", "zigzag"):
        v = _jitter_dir(rng, spec["dir"])
        d = rng.uniform(0.55, 0.85) * sf
        if c0 is None:
            # anywhere in the frame, not only where the path stays centred: a caption's direction must
            # not be guessable from where the object starts (it was, and "right" near the right edge
            # moved left)
            c0 = -v * d / 2 + rng.uniform(-0.45, 0.45, 2)
        if fam == "translate":
            e = _ease(rng, u)
        elif fam == "stop_and_go":
            k = int(rng.integers(2, 4))
            q = np.clip(u * k, 0, k - 1e-9)
            f = np.clip((q % 1) * 1.6, 0, 1)  # move during 60% of each part, pause for the rest
            e = (np.floor(q) + f * f * (3 - 2 * f)) / k
            e[u >= 1] = 1
        else:
            e = u
        c = c0 + np.outer(e, v) * d
        if fam == "zigzag":
            k = int(rng.integers(3, 6))
            tri = 2 * np.abs((u * k) % 1 - 0.5) - 1  # triangle wave in [-1, 1], -1 at u=0
            perp = np.array([-v[1], v[0]])
            c = c + np.outer(tri + 1, perp) * rng.uniform(0.06, 0.14)
        return _rigid(c, rel)
    if fam == "rotate":
        sense = 1.0 if spec["sense"] == "cw" else -1.0
        total = rng.uniform(0.7, 1.3) * math.pi * sf
        return _rigid(np.repeat(start()[None], T, 0), rel, sense * total * _ease(rng, u))
    if fam in ("grow", "shrink"):
        k = rng.uniform(1.6, 2.6) ** sf
        k = k if fam == "grow" else 1 / k
        s = np.exp(math.log(k) * _ease(rng, u))
        return start(0.3)[None, None] + s[:, None, None] * rel[None]
    if fam == "bounce":
        vx = DIRECTIONS[spec["dir"]][0] * rng.uniform(0.5, 0.8) * sf if spec.get("dir") else 0.0
        c0 = c0 if c0 is not None else np.array([-vx / 2 + rng.uniform(-0.4, 0.4), rng.uniform(0.2, 0.5)])
        nb = rng.uniform(2, 4) * (0.7 + 0.3 * sf)
        h = rng.uniform(0.3, 0.6) * np.exp(-u * rng.uniform(0, 1.2))
        y = -h * np.abs(np.sin(math.pi * nb * u))
        return _rigid(c0 + np.stack([vx * u, y], -1), rel)
    if fam == "fall":
        c0 = c0 if c0 is not None else np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.7, -0.3)])
        g = rng.uniform(0.8, 1.3) * sf
        c = c0 + np.stack([u * rng.uniform(-0.05, 0.05), g * u * u], -1)
        return _rigid(c, rel, u * u * rng.uniform(-0.3, 0.3))
    if fam == "jump":
        vx = DIRECTIONS[spec["dir"]][0] * rng.uniform(0.5, 0.8) * sf if spec.get("dir") else 0.0
        c0 = c0 if c0 is not None else np.array([-vx / 2 + rng.uniform(-0.4, 0.4), rng.uniform(0.1, 0.4)])
        h = rng.uniform(0.35, 0.6)
        y = -4 * h * u * (1 - u)
        return _rigid(c0 + np.stack([vx * u, y], -1), rel)
    if fam in ("orbit", "spiral"):
        c0 = start(0.3)
        phi0 = rng.uniform(0, 2 * math.pi)
        r0 = rng.uniform(0.2, 0.38)
        if fam == "orbit":
            sense = 1.0 if spec["sense"] == "cw" else -1.0
            r = np.full_like(u, r0)
            w = 2 * math.pi * rng.uniform(0.6, 1.1) * sf
        else:
            sense = 1.0 if rng.random() < 0.5 else -1.0
            r = r0 * (1 - 0.85 * u) if spec["sense"] == "in" else r0 * (0.15 + 0.85 * u)
            w = 2 * math.pi * rng.uniform(1.2, 2.0) * sf
        center = c0 - r[0] * np.array([math.cos(phi0), math.sin(phi0)])
        ang = phi0 + sense * w * u
        c = center + r[:, None] * np.stack([np.cos(ang), np.sin(ang)], -1)
        return _rigid(c, rel)
    if fam == "swing":
        c0 = start(0.35)
        L = rng.uniform(0.3, 0.8)
        pivot = c0 + np.array([0.0, -L])
        alpha = rng.uniform(0.2, 0.5) * np.sin(2 * math.pi * rng.uniform(1.0, 2.2) * sf * u)
        arm = (c0 - pivot)[None] + rel
        return pivot[None, None] + np.einsum("tij,nj->tni", _rot(alpha), arm)
    if fam == "shake":
        c0 = start()
        f = rng.uniform(6, 11) * sf
        amp = rng.uniform(0.012, 0.03)
        ph = rng.uniform(0, 2 * math.pi, 2)
        off = amp * np.stack(
            [
                np.sin(2 * math.pi * f * u + ph[0]) - math.sin(ph[0]),
                np.sin(2 * math.pi * f * 1.3 * u + ph[1]) - math.sin(ph[1]),
            ],
            -1,
        )
        return _rigid(c0 + off, rel, 0.05 * np.sin(2 * math.pi * f * u))
    if fam == "wave":
        c0 = start()
        width = max(np.ptp(rel[:, 0]), 0.05)
        phase = 2 * math.pi * rng.uniform(0.5, 1.5) * rel[:, 0] / width
        f = rng.uniform(1.5, 3.0) * sf
        amp = rng.uniform(0.03, 0.07)
        dy = amp * (np.sin(2 * math.pi * f * u[:, None] - phase[None]) - np.sin(-phase)[None])
        out = np.broadcast_to(c0 + rel, (len(u), *rel.shape)).copy()
        out[..., 1] += dy
        return out
    if fam == "flap":
        c0 = start()
        half = max(np.abs(rel[:, 0]).max(), 0.05)
        f = rng.uniform(2.0, 4.0) * sf
        amp = rng.uniform(0.08, 0.18)
        lift = np.abs(rel[:, 0]) / half  # wing tips move most, the body least
        dy = -amp * np.sin(2 * math.pi * f * u)[:, None] * lift[None]
        out = np.broadcast_to(c0 + rel, (len(u), *rel.shape)).copy()
        out[..., 1] += dy + 0.02 * np.sin(2 * math.pi * f * u)[:, None]
        return out
    if fam == "walk":
        vx = DIRECTIONS[spec["dir"]][0] * rng.uniform(0.5, 0.8) * sf if spec.get("dir") else 0.0
        c0 = c0 if c0 is not None else np.array([-vx / 2 + rng.uniform(-0.4, 0.4), rng.uniform(-0.2, 0.3)])
        steps = rng.uniform(3, 6) * (0.7 + 0.3 * sf)
        bob = -rng.uniform(0.02, 0.05) * np.abs(np.sin(math.pi * steps * u))
        return _rigid(c0 + np.stack([vx * u, bob], -1), rel)
    if fam == "still":
        c0 = start(0.5)
        return _rigid(np.repeat(c0[None], T, 0), rel)
    raise ValueError(f"unknown motion family {fam!r}")


def synthesize(
    spec: dict, num_frames: int, num_points: int, rng: np.random.Generator, noise: bool = True
) -> np.ndarray:
    """Trajectory for a spec: float32 (T, N, 2), y down, frame 0 = initial layout."""
    u = np.linspace(0.0, 1.0, num_frames)
    rel = make_layout(rng, num_points)
    base = {k: v for k, v in spec.items() if k not in ("then", "while")}
    if "then" in spec:
        tau = rng.uniform(0.35, 0.65)
        a = _motion(base, np.clip(u / tau, 0, 1), rel, rng, None)
        end = a[-1]
        c_end = end.mean(0)
        b = _motion(spec["then"], np.clip((u - tau) / (1 - tau), 0, 1), end - c_end, rng, c_end)
        traj = np.where((u < tau)[:, None, None], a, b)
    else:
        traj = _motion(base, u, rel, rng, None)
        if "while" in spec:
            c0 = traj[0].mean(0)
            extra = _motion(spec["while"], u, traj[0] - c0, rng, c0)
            traj = traj + (extra - extra[:1])
    if noise:
        sigma = rng.uniform(0.0, 0.004)
        traj = traj + rng.normal(0, sigma, traj.shape)
        drift = np.cumsum(rng.normal(0, sigma * 0.3, traj.shape), axis=0)
        traj = traj + drift - drift[:1]
    return traj.astype(np.float32)


@dataclass
class CaptionPool:
    """Captions with their specs. The frozen text tower embeds each caption once (see train.py)."""

    specs: list
    captions: list
    keys: list
    held_out: bool
    twins: list | None = None  # with build(twin_noun=w): each caption with its object replaced by w
    fillers: list | None = None  # with build(filler=True): each caption with a "where" phrase appended

    @classmethod
    def build(
        cls,
        size: int,
        seed: int,
        held_out: bool = False,
        wide_nouns: float = 0.0,
        twin_noun: str | None = None,
        vocab: int = 1,
        filler: bool = False,
    ) -> CaptionPool:
        """`wide_nouns`: the fraction of captions whose object is a word of captions.wide_nouns() (the
        text tower's whole vocabulary, filtered) instead of the object list; 0 keeps the draws of
        earlier pools bit for bit. `twin_noun`: also write every caption again, word for word, with this
        object instead (`twins`); the captions themselves do not change. `vocab`: the caption vocabulary
        (captions.CAPTION_VOCABS; 1 keeps earlier pools bit for bit). `filler`: also write every caption
        with a trailing phrase that says where, not how ("... near the school", captions.filler_phrase;
        `fillers`), drawn from a generator of its own so the captions and twins do not change."""
        if wide_nouns and held_out:
            raise ValueError("wide_nouns is for training pools; held-out captions use the held-out objects")
        if filler and held_out:
            raise ValueError("filler is for training pools (an invariance to learn), not held-out ones")
        words = vocabulary_nouns(vocab=vocab) if wide_nouns else None
        rng = np.random.default_rng(seed)
        specs, caps, keys, twins, seen = [], [], [], [], set()
        tries = 0
        while len(caps) < size and tries < size * 20:
            tries += 1
            spec = sample_spec(rng)
            noun = words[int(rng.integers(len(words)))] if words and rng.random() < wide_nouns else None
            twin_rng = None
            if twin_noun is not None:
                if noun is None:  # the draw write_caption makes first, made here: the stream is unchanged
                    noun = _pick(rng, _OBJECTS, held_out)[0]
                twin_rng = copy.deepcopy(rng)  # the same draws for the twin's other words
            cap = write_caption(spec, rng, held_out=held_out, noun=noun, vocab=vocab)
            if cap in seen:
                continue
            seen.add(cap)
            specs.append(spec)
            caps.append(cap)
            keys.append(spec_key(spec))
            if twin_rng is not None:
                twins.append(write_caption(spec, twin_rng, held_out=held_out, noun=twin_noun, vocab=vocab))
        fillers = None
        if filler:
            frng = np.random.default_rng([seed, 1])
            nouns = filler_nouns(vocab=vocab)
            fillers = [f"{c} {filler_phrase(frng, nouns)}" for c in caps]
        return cls(specs, caps, keys, held_out, twins if twin_noun is not None else None, fillers)


def make_batch(
    pool: CaptionPool, idx: np.ndarray, num_frames: int, num_points: int, rng: np.random.Generator
) -> np.ndarray:
    """Trajectories for pool entries `idx`: float32 (B, T, N, 2)."""
    return np.stack([synthesize(pool.specs[i], num_frames, num_points, rng) for i in idx])
