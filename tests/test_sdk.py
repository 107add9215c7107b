"""l2m_sdk's public behaviour on the packaged default bundle: import cost and torch-freedom, shapes and
dtypes, the frame-0 contract, seeds and temperature, search / classify / editing, the text cache,
close(), bad input (each with its own clear error) and the `l2m` command line.

Nothing here depends on what the default bundle learned (it is replaced when training finishes): every
check is a contract that holds for any weights. Numerical parity with PyTorch is test_onnx_parity.py.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import l2m_sdk
from l2m_sdk.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
# Text batches are padded to their longest prompt, which changes the matmul shapes ONNX Runtime blocks
# over; the same prompt embedded alone or in a batch agrees to float32 rounding, not bit for bit.
BATCH_ATOL = 1e-6
PROMPTS = ["a ball bouncing to the right", "a car driving left", "a crowd spreading apart slowly"]


def run_py(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )


# -------------------------------------------------------------------------------- import and torch
def test_generate_never_imports_torch():
    """The acceptance command of issue 3, verbatim, plus the rest of the training side."""
    code = (
        "import sys, l2m_sdk; l2m_sdk.generate('a car driving left'); assert 'torch' not in sys.modules; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'export', "
        "'torchvision', 'transformers', 'safetensors')]; assert not bad, bad"
    )
    r = run_py(code)
    assert r.returncode == 0, r.stderr


def test_import_is_cheap_and_loads_nothing_native():
    """`import l2m_sdk` loads no numpy, onnxruntime, tokenizers, pillow or native library; -X importtime
    shows its cumulative cost (the limit is 0.5 s; it measures a few ms here)."""
    code = r"""
import json, sys
def libs():
    try:
        with open('/proc/self/maps') as f:
            return {l.split()[-1] for l in f if '.so' in l}
    except OSError:
        return set()
before_mods, before_libs = set(sys.modules), libs()
import l2m_sdk
print(json.dumps({'mods': sorted(set(sys.modules) - before_mods), 'libs': sorted(libs() - before_libs)}))
"""
    r = run_py(code, "-X", "importtime")
    assert r.returncode == 0, r.stderr
    new = json.loads(r.stdout.strip().splitlines()[-1])
    heavy = ("numpy", "onnxruntime", "tokenizers", "PIL", "torch", "cv2", "tensorrt", "cuda", "ctypes")
    loaded = [m for m in new["mods"] if m.split(".")[0] in heavy or m.startswith("l2m_sdk.")]
    assert not loaded, f"import l2m_sdk loaded {loaded}"
    assert not new["libs"], f"import l2m_sdk mapped shared libraries {new['libs']}"
    rows = [ln.split("|") for ln in r.stderr.splitlines() if ln.startswith("import time:")]
    cum_us = {p[2].rstrip(): int(p[1]) for p in rows if len(p) == 3 and p[1].strip().isdigit()}
    total = cum_us.get(" l2m_sdk")
    assert total is not None, f"l2m_sdk missing from -X importtime output:\n{r.stderr[-2000:]}"
    print(f"import l2m_sdk: {total / 1e3:.1f} ms cumulative")
    assert total < 500_000, f"import l2m_sdk took {total / 1e3:.0f} ms (limit 500 ms)"


def test_every_public_name_imports():
    for name in l2m_sdk.__all__:
        assert getattr(l2m_sdk, name) is not None, name
    ns: dict = {}
    exec("from l2m_sdk import *", ns)
    assert set(l2m_sdk.__all__) <= set(ns)
    assert "default" in l2m_sdk.list_bundles()
    assert issubclass(l2m_sdk.BundleError, ValueError)


# ----------------------------------------------------------------------------------- API behaviour
def test_shapes_and_dtypes(default_model, random_trajectories, rng):
    m = default_model
    T, N, D = m.num_frames, m.num_points, m.dim
    one = m.generate(PROMPTS[0])
    many = m.generate(PROMPTS)
    assert one.shape == (T, N, 2) and one.dtype == np.float32
    assert many.shape == (len(PROMPTS), T, N, 2) and many.dtype == np.float32
    # a list of one is a batch of one, not a single
    assert m.generate([PROMPTS[0]]).shape == (1, T, N, 2)
    np.testing.assert_allclose(many[0], one, atol=1e-5)  # same prompt alone or in a batch

    e1, eb = m.encode_text(PROMPTS[1]), m.encode_text(PROMPTS)
    assert e1.shape == (D,) and eb.shape == (len(PROMPTS), D) and eb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(eb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(eb[1], e1, atol=BATCH_ATOL)
    dup = m.encode_text([PROMPTS[2], PROMPTS[0], PROMPTS[2]])  # repeats are embedded once, returned twice
    assert np.array_equal(dup[0], dup[2])

    traj = random_trajectories(rng, 4, 24, 10)
    z1, zb = m.encode_motion(traj[0]), m.encode_motion(traj)
    assert z1.shape == (D,) and zb.shape == (4, D) and zb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(zb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(zb[0], z1, atol=1e-5)
    # float64 and nested lists are accepted and converted
    np.testing.assert_allclose(m.encode_motion(traj[0].astype(np.float64).tolist()), z1, atol=1e-6)

    d1, db = m.decode(z1), m.decode(zb, num_frames=7)
    assert d1.shape == (T, N, 2) and db.shape == (4, 7, N, 2) and db.dtype == np.float32


def test_module_functions_use_one_default_model():
    assert l2m_sdk.default_model() is l2m_sdk.default_model()
    m = l2m_sdk.default_model()
    t = l2m_sdk.generate(PROMPTS[0], num_frames=12)
    assert t.shape == (12, m.num_points, 2)
    assert l2m_sdk.encode_text(PROMPTS).shape == (3, m.dim)
    assert l2m_sdk.encode_motion(t).shape == (m.dim,)
    idx, sc = l2m_sdk.search(PROMPTS[0], t[None], k=1)
    assert idx.shape == (1,) and sc.shape == (1,)


def test_frame0_is_exactly_the_initial_points(default_model, rng, random_unit):
    m = default_model
    B, N, T = 3, int(rng.integers(1, 300)), int(rng.integers(2, 90))
    shared = rng.uniform(-1, 1, (N, 2))  # float64 in: compared after the float32 cast
    per = rng.uniform(-1, 1, (B, N, 2)).astype(np.float32)
    out = m.generate(PROMPTS, initial_points=shared, num_frames=T)
    assert out.shape == (B, T, N, 2)
    assert np.array_equal(out[:, 0], np.broadcast_to(shared.astype(np.float32), (B, N, 2)))
    out = m.generate(PROMPTS, initial_points=per, num_frames=T)
    assert np.array_equal(out[:, 0], per)
    z = random_unit(rng, B, m.dim)
    assert np.array_equal(m.decode(z, per, T)[:, 0], per)
    # the default layout is a centred grid of the bundle's default N
    d = m.generate(PROMPTS[0])
    assert np.allclose(d[0].mean(0), 0.0, atol=1e-6) and len(np.unique(d[0], axis=0)) == m.num_points


def test_any_n_and_t_from_generate_is_accepted_by_encode_motion(default_model, rng):
    m = default_model
    cases = [(1, 2), (2, 3), (256, 30), (300, 2), (1, 200)]
    cases += [(int(rng.integers(1, 257)), int(rng.integers(2, 121))) for _ in range(4)]
    for N, T in cases:
        pts = rng.uniform(-0.9, 0.9, (N, 2))
        traj = m.generate(PROMPTS[2], initial_points=pts, num_frames=T)
        assert traj.shape == (T, N, 2), (N, T)
        assert np.isfinite(traj).all(), (N, T)
        z = m.encode_motion(traj)
        assert z.shape == (m.dim,) and np.isfinite(z).all(), (N, T)
        assert abs(np.linalg.norm(z) - 1) < 1e-5, (N, T)


def test_seed_and_temperature(default_model, rng):
    m = default_model
    seed = int(rng.integers(0, 2**31))
    a = m.generate(PROMPTS[0], temperature=0.0)
    assert np.array_equal(a, m.generate(PROMPTS[0], temperature=0.0, seed=seed))  # seed unused at 0
    s1 = m.generate(PROMPTS[0], temperature=0.7, seed=seed)
    assert np.array_equal(s1, m.generate(PROMPTS[0], temperature=0.7, seed=seed))
    assert not np.array_equal(s1, m.generate(PROMPTS[0], temperature=0.7, seed=seed + 1))
    assert not np.array_equal(s1, a)
    assert np.array_equal(s1[0], a[0])  # sampling never moves the initial points
    batch = m.generate(PROMPTS, temperature=0.7, seed=seed)
    assert np.array_equal(batch, m.generate(PROMPTS, temperature=0.7, seed=seed))


def test_search_finds_the_planted_answer(default_model, rng, random_unit):
    m = default_model
    M, D, k = 64, m.dim, 5
    gallery = random_unit(rng, M, D)
    j = int(rng.integers(0, M))
    gallery[j] = m.encode_text(PROMPTS[0])
    idx, scores = m.search(PROMPTS[0], gallery, k=k)
    assert idx.shape == (k,) and scores.shape == (k,)
    assert idx[0] == j and abs(scores[0] - 1.0) < 1e-5
    assert np.all(np.diff(scores) <= 0), scores
    full = gallery @ m.encode_text(PROMPTS[0])
    np.testing.assert_allclose(scores, full[idx], atol=1e-6)
    assert set(idx.tolist()) == set(np.argsort(-full)[:k].tolist())
    # several queries at once; each with its own planted row
    gallery[(j + 1) % M] = m.encode_text(PROMPTS[1])
    idx2, sc2 = m.search(PROMPTS[:2], gallery, k=3)
    assert idx2.shape == (2, 3) and sc2.shape == (2, 3)
    assert idx2[0, 0] == j and idx2[1, 0] == (j + 1) % M
    # k larger than the gallery is capped; an embedding query works like text
    idx3, _ = m.search(gallery[j], gallery[:7], k=50)
    assert idx3.shape == (7,)


def test_index_searches_like_the_raw_gallery(default_model, rng, random_unit):
    m = default_model
    raw = random_unit(rng, 300, m.dim) * rng.uniform(0.5, 3.0, (300, 1)).astype(np.float32)  # not unit
    ix = m.index(raw)
    assert len(ix) == 300 and ix.dim == m.dim and not ix.embeddings.flags.writeable
    np.testing.assert_allclose(np.linalg.norm(ix.embeddings, axis=1), 1.0, atol=1e-6)
    for q in (PROMPTS[0], PROMPTS[:3], raw[17]):
        i1, s1 = m.search(q, raw, k=4)
        i2, s2 = m.search(q, ix, k=4)
        assert np.array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, atol=1e-6)
    assert m.search(raw[17], ix, k=1)[0][0] == 17
    with pytest.raises(ValueError, match="dimension"):
        m.search(PROMPTS[0], l2m_sdk.Index(np.ones((3, m.dim + 1), np.float32)), k=1)
    with pytest.raises(ValueError, match="finite"):
        m.index(np.full((3, m.dim), np.nan, np.float32))


def test_search_over_trajectories(default_model, rng, random_trajectories):
    m = default_model
    lib = random_trajectories(rng, 12, 20, 9)
    j = int(rng.integers(0, 12))
    idx, scores = m.search(lib[j], lib, k=3)
    assert idx[0] == j and abs(scores[0] - 1.0) < 1e-5


def test_classify(default_model, rng, random_trajectories):
    m = default_model
    labels = ["moving left", "moving right", "spinning", "zooming in"]
    traj = random_trajectories(rng, 3, 30, 16)
    names, p = m.classify(traj, labels)
    assert len(names) == 3 and p.shape == (3, 4) and set(names) <= set(labels)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    expect = (m.encode_motion(traj) @ m.encode_text(labels).T).argmax(1)
    assert names == [labels[i] for i in expect]
    one, p1 = m.classify(traj[0], labels)
    assert one == names[:1] and p1.shape == (1, 4)


def test_classify_label_ensembles(default_model, rng, random_trajectories):
    """A dict label with several texts is their renormalised mean embedding (prompt ensembling); a dict
    label with one text is that text; names come back as the dict's keys."""
    m = default_model
    moving = [f"an object moving {d}" for d in ("left", "right", "up", "down")]
    labels = {"moving": moving, "spinning": "an object spinning", "still": ["an object staying still"]}
    traj = random_trajectories(rng, 4, 30, 9)
    names, p = m.classify(traj, labels)
    assert p.shape == (4, 3) and set(names) <= set(labels)
    mean = m.encode_text(moving).mean(0)
    e = np.stack(
        [
            mean / np.linalg.norm(mean),
            m.encode_text("an object spinning"),
            m.encode_text("an object staying still"),
        ]
    )
    z = m.encode_motion(traj)
    want = 100.0 * z @ e.T
    want = np.exp(want - want.max(1, keepdims=True))
    np.testing.assert_allclose(p, want / want.sum(1, keepdims=True), atol=1e-4)
    assert names == [list(labels)[i] for i in (z @ e.T).argmax(1)]
    # one text per key: the same as passing the texts as a list
    flat = ["moving left", "spinning"]
    assert m.classify(traj, dict(zip(("a", "b"), flat)))[1].tolist() == m.classify(traj, flat)[1].tolist()
    for bad, err in (
        ({}, ValueError),
        ({"x": []}, ValueError),
        ({"x": 3}, TypeError),
        ({1: "x"}, TypeError),
        ({"x": ["ok", ""]}, ValueError),
        ({"x": ["ok", None]}, TypeError),
    ):
        with pytest.raises(err):
            m.classify(traj, bad)


def test_interpolate_edit_style_transfer(default_model, rng, random_trajectories):
    m = default_model
    ea, eb = m.encode_text(PROMPTS[0]), m.encode_text(PROMPTS[1])
    path = m.interpolate(PROMPTS[0], PROMPTS[1], [0.0, 0.25, 0.5, 1.0])
    assert path.shape == (4, m.dim) and path.dtype == np.float32
    np.testing.assert_allclose(path[0], ea, atol=1e-6)
    np.testing.assert_allclose(path[-1], eb, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-5)
    assert abs(path[2] @ ea - path[2] @ eb) < 1e-5  # the midpoint is equidistant on the sphere
    # opposite endpoints: no unique path (float32 rounding would pick it), so inner alphas raise;
    # the endpoints themselves stay well defined. Near-opposite (cos -1 + 1e-6) counts as opposite.
    far = -ea + rng.normal(size=m.dim).astype(np.float32) * 1e-5
    for other in (-ea, far / np.linalg.norm(far)):
        ends = m.interpolate(ea, other, [0.0, 1.0])
        assert np.isfinite(ends).all()
        np.testing.assert_allclose(ends[0], ea, atol=1e-6)
        np.testing.assert_allclose(ends[1], other / np.linalg.norm(other), atol=1e-6)
        with pytest.raises(ValueError, match="opposite directions.*alphas 0 and 1"):
            m.interpolate(ea, other, [0.0, 0.5])
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        m.interpolate(np.stack([ea, ea]), np.stack([eb, -ea]), 0.3)
    nearby = -ea + rng.normal(size=m.dim).astype(np.float32) * 0.002  # cos about -0.9992: a real path
    nb = nearby / np.linalg.norm(nearby)
    assert -0.9999 < nb @ ea < -0.99
    mid = m.interpolate(ea, nearby, 0.5)[0]
    assert abs(np.linalg.norm(mid) - 1) < 1e-5 and abs(mid @ ea - mid @ nb) < 1e-4
    basis = np.linalg.qr(np.stack([ea, nb], 1).astype(np.float64))[0]  # on the great circle of ea, nb
    assert np.linalg.norm(mid - basis @ (basis.T @ mid)) < 1e-3

    e = m.edit(PROMPTS[0], PROMPTS[1], PROMPTS[2])
    want = ea - eb + m.encode_text(PROMPTS[2])
    np.testing.assert_allclose(e, want / np.linalg.norm(want), atol=1e-6)
    assert e.shape == (m.dim,)
    # b = a + c exactly (a, c at 120 degrees, so a + c is a unit vector): a - b + c is zero up to the
    # inputs' float32 rounding, which must raise rather than return a direction made of rounding
    u = rng.standard_normal((2, m.dim))
    u[1] -= u[1] @ u[0] / (u[0] @ u[0]) * u[0]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    a_, c_ = u[0], -0.5 * u[0] + np.sqrt(0.75) * u[1]
    with pytest.raises(ValueError, match="zero vector"):
        m.edit(a_.astype(np.float32), (a_ + c_).astype(np.float32), c_.astype(np.float32))
    tilted = m.edit(a_.astype(np.float32), u[1].astype(np.float32), c_.astype(np.float32))
    assert np.isfinite(tilted).all() and abs(np.linalg.norm(tilted) - 1) < 1e-5

    motion = random_trajectories(rng, 2, 25, 11)
    out = m.style_transfer(motion[0], "zigzag", strength=0.5)
    assert out.shape == motion[0].shape and out.dtype == np.float32
    assert np.array_equal(out[0], motion[0, 0])
    outb = m.style_transfer(motion, "zigzag", strength=0.3)
    assert outb.shape == motion.shape and np.array_equal(outb[:, 0], motion[:, 0])
    per = m.style_transfer(motion, ["zigzag", "spiral"], strength=0.3)  # one style per motion
    np.testing.assert_allclose(per[0], outb[0], atol=1e-5)
    assert per.shape == motion.shape and np.array_equal(per[:, 0], motion[:, 0])
    with pytest.raises(ValueError, match="3 styles for 2 motions"):
        m.style_transfer(motion, ["zigzag", "spiral", "wave"])
    # strength 0 keeps the motion's own latent: a plain re-decode of it
    np.testing.assert_allclose(
        m.style_transfer(motion[0], "zigzag", 0.0),
        m.decode(m.encode_motion(motion[0]), motion[0, 0], 25),
        atol=1e-5,
    )


def test_text_cache_is_bounded_and_exact(rng):
    m = l2m_sdk.load("default", backend="ort", device="cpu", cache_size=3)
    fresh = l2m_sdk.load("default", backend="ort", device="cpu", cache_size=0)
    try:
        texts = [f"{p} number {int(x)}" for p, x in zip(PROMPTS * 3, rng.integers(0, 10**6, 9))]
        for t in texts:
            m.encode_text(t)
            assert m._cache_rows <= 3 and len(m._cache) <= 3
        assert list(m._cache) == [(t,) for t in texts[-3:]]  # least recently used evicted first
        m.encode_text(texts[-3])  # a hit moves it to the back
        m.encode_text(texts[0])
        assert list(m._cache) == [(texts[-1],), (texts[-3],), (texts[0],)]
        for t in texts[-3:]:
            hit = m.encode_text(t)  # from the cache: bit-identical to a fresh call
            np.testing.assert_array_equal(hit, fresh.encode_text(t))
        pair = texts[3:5]
        first = m.encode_text(pair)  # a batch is one entry of two prompts; it evicts two singles
        assert m._cache_rows <= 3 and list(m._cache)[-1] == tuple(pair)
        np.testing.assert_array_equal(first, fresh.encode_text(pair))
        np.testing.assert_array_equal(m.encode_text(pair), first)  # hit
        # a prompt first seen in a batch, asked alone: computed alone, as without a cache (bitwise)
        np.testing.assert_array_equal(m.encode_text(texts[4]), fresh.encode_text(texts[4]))
        assert m.encode_text(texts[:5]).shape == (5, m.dim) and m._cache_rows <= 3  # too big to cache
        assert len(fresh._cache) == 0
        out = m.encode_text(texts[4])
        out[:] = 0  # callers own what they get back: the cached copy is untouched
        assert np.linalg.norm(m.encode_text(texts[4])) > 0.99
    finally:
        m.close()
        fresh.close()


def test_close_then_call_raises():
    m = l2m_sdk.load("default", backend="ort", device="cpu")
    z = m.encode_text(PROMPTS[0])
    m.close()
    for call in (
        lambda: m.generate(PROMPTS[1]),
        lambda: m.encode_text(PROMPTS[0]),  # was cached: close() drops the cache too
        lambda: m.decode(z),
        lambda: m.encode_motion(np.zeros((5, 3, 2), np.float32)),
    ):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    m.close()  # idempotent
    with l2m_sdk.load("default", backend="ort", device="cpu") as m2:
        m2.encode_text(PROMPTS[0])
    with pytest.raises(RuntimeError, match="closed"):
        m2.generate(PROMPTS[0])


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "text, err, match",
    [
        ("", ValueError, "non-empty"),
        ("   \n\t", ValueError, "non-empty"),
        (None, TypeError, "str"),
        ([], ValueError, "empty"),
        (["ok", 3], TypeError, r"text\[1\]"),
        (["ok", None], TypeError, r"text\[1\]"),
        (["ok", ""], ValueError, r"text\[1\]"),
        (b"bytes", TypeError, "str"),
        (42, TypeError, "str"),
    ],
)
def test_bad_text(default_model, text, err, match):
    for fn in (default_model.encode_text, default_model.generate):
        with pytest.raises(err, match=match):
            fn(text)


def test_overlong_text_is_truncated_with_a_warning(default_model, caplog):
    m = default_model
    words = ("a red ball bounces to the right and then rolls slowly down the hill " * 40).split()
    long = " ".join(words)  # ~560 words: over MiniLM's 256-token window
    with caplog.at_level(logging.WARNING, logger="l2m_sdk"):
        e = m.encode_text(long)
    assert any("truncated" in r.getMessage() for r in caplog.records), caplog.text
    assert e.shape == (m.dim,) and abs(np.linalg.norm(e) - 1) < 1e-5
    # what lies past the window does not matter
    np.testing.assert_allclose(m.encode_text(long + " and then it flies away upward"), e, atol=BATCH_ATOL)
    assert m.generate(long).shape == (m.num_frames, m.num_points, 2)


@pytest.mark.parametrize(
    "make, err, match",
    [
        (lambda t: np.where(np.arange(t.size).reshape(t.shape) == 7, np.nan, t), ValueError, "NaN"),
        (lambda t: np.where(np.arange(t.size).reshape(t.shape) == 3, np.inf, t), ValueError, "NaN or inf"),
        (lambda t: t[..., :1], ValueError, r"last axis must be 2"),
        (lambda t: np.concatenate([t, t[..., :1]], -1), ValueError, r"last axis must be 2"),
        (lambda t: t[0], ValueError, r"\(T, N, 2\)"),  # (N, 2): one frame
        (lambda t: t[None, None], ValueError, r"\(T, N, 2\)"),
        (lambda t: t[:, :0], ValueError, "N = 0"),
        (lambda t: t[:1], ValueError, "T = 1"),
        (lambda t: t[:0], ValueError, "T = 0"),
        (lambda t: t[None][:0], ValueError, "empty batch"),
        (lambda t: t * 1e4, ValueError, "normalised"),  # pixels, not normalised coordinates
        # integer pixels at the type's minimum: abs() wraps around in int8/int16, max/min do not
        (lambda t: np.full(t.shape, -128, np.int8), ValueError, "normalised"),
        (lambda t: np.full(t.shape, np.iinfo(np.int16).min, np.int16), ValueError, "normalised"),
        (lambda t: "not an array", TypeError, "array"),
        (lambda t: None, TypeError, "None"),
        (lambda t: t.astype(object), TypeError, "numbers"),
        (lambda t: [[[0.0, 0.0]], [[0.0]]], ValueError, "."),  # ragged
    ],
)
def test_bad_trajectories(default_model, rng, random_trajectories, make, err, match):
    bad = make(random_trajectories(rng, 1, 10, 5)[0])
    with pytest.raises(err, match=match):
        default_model.encode_motion(bad)
    with pytest.raises(err, match=match):
        default_model.style_transfer(bad, "zigzag")


def test_bad_generate_arguments(default_model, rng):
    m, p = default_model, PROMPTS[0]
    with pytest.raises(ValueError, match="num_frames"):
        m.generate(p, num_frames=1)
    with pytest.raises(ValueError, match="num_frames"):
        m.generate(p, num_frames=0)
    with pytest.raises(TypeError, match="num_frames"):
        m.generate(p, num_frames=2.5)
    with pytest.raises(ValueError, match="N = 0"):
        m.generate(p, initial_points=np.zeros((0, 2)))
    with pytest.raises(ValueError, match="NaN"):
        m.generate(p, initial_points=np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        m.generate(p, initial_points=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="batch"):
        m.generate(PROMPTS, initial_points=rng.uniform(-1, 1, (2, 5, 2)))
    with pytest.raises(ValueError, match="temperature"):
        m.generate(p, temperature=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        m.generate(p, temperature=float("nan"))
    with pytest.raises(ValueError, match="seed"):
        m.generate(p, temperature=0.5, seed=-1)
    with pytest.raises(ValueError, match="embedding"):
        m.decode(np.zeros(m.dim))
    with pytest.raises(ValueError, match=str(m.dim)):
        m.decode(np.ones(m.dim + 1))
    with pytest.raises(ValueError, match="k must be"):
        m.search(p, np.eye(3, m.dim), k=0)
    with pytest.raises(ValueError, match="strength"):
        m.style_transfer(np.zeros((4, 2, 2)), "zigzag", strength=1.5)


def test_unknown_bundle_backend_device_list_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown bundle 'no-such-bundle'.*'default'"):
        l2m_sdk.load("no-such-bundle")
    with pytest.raises(ValueError, match=r"unknown backend 'tensorflow'.*'ort'.*'trt'"):
        l2m_sdk.load("default", backend="tensorflow")
    with pytest.raises(ValueError, match=r"unknown device 'tpu'.*'cpu'.*'cuda'"):
        l2m_sdk.load("default", device="tpu")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        l2m_sdk.load(tmp_path)  # a directory that is not a bundle
    with pytest.raises(TypeError, match="bundle"):
        l2m_sdk.load(3)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_generate_all_output_kinds(tmp_path, capsys):
    from PIL import Image

    outs = [tmp_path / f"ball.{ext}" for ext in ("npy", "json", "png", "gif")]
    args = ["generate", "a ball bouncing to the right", "--frames", "20", "--size", "96", "--seed", "3"]
    assert cli_main(args + [a for o in outs for a in ("-o", str(o))] + ["--device", "cpu"]) == 0
    traj = np.load(outs[0])
    assert traj.shape == (20, 64, 2) and traj.dtype == np.float32
    doc = json.loads(outs[1].read_text())
    assert doc["shape"] == [20, 64, 2] and "y down" in doc["convention"]
    np.testing.assert_allclose(np.array(doc["trajectories"]), traj, atol=1e-6)
    with Image.open(outs[2]) as im:
        assert im.size == (96, 96)
    with Image.open(outs[3]) as im:
        assert im.size == (96, 96) and im.n_frames > 1
    assert "wrote" in capsys.readouterr().out


def test_cli_search_encode_info(tmp_path, capsys, rng, random_trajectories):
    lib = tmp_path / "lib"
    lib.mkdir()
    trajs = random_trajectories(rng, 5, 30, 16)
    for i, t in enumerate(trajs):
        np.save(lib / f"m{i}.npy", t)
    np.savez(tmp_path / "lib.npz", **{f"m{i}": t for i, t in enumerate(trajs)})
    capsys.readouterr()  # drop the rng fixture's seed line

    assert cli_main(["search", "a car driving left", "--library", str(lib), "-k", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))
    assert {r["name"] for r in rows} <= {f"m{i}" for i in range(5)}

    assert cli_main(["encode", str(tmp_path / "lib.npz"), "-o", str(tmp_path / "z.npy")]) == 0
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (5, l2m_sdk.default_model().dim)
    assert cli_main(["encode", "--text", "up", "down", "-o", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (2, z.shape[1])
    # search over saved embeddings gives the same ranking as over the trajectories
    capsys.readouterr()
    assert (
        cli_main(["search", "a car driving left", "--library", str(tmp_path / "z.npy"), "-k", "3", "--json"])
        == 0
    )
    rows_z = json.loads(capsys.readouterr().out)
    assert [int(r["name"]) for r in rows_z] == [r["index"] for r in rows]

    assert cli_main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] in ("ort", "trt") and info["l2m_version"] == l2m_sdk.__version__
    assert {"text.onnx", "motion_encoder.onnx", "motion_decoder.onnx"} <= set(info["files"])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["generate", "", "-o", "{tmp}/x.npy"], "non-empty"),
        (["generate", "a ball", "-o", "{tmp}/x.txt"], "unknown output type"),
        (["generate", "a ball", "-o", "{tmp}/x.npy", "-o", "{tmp}/x.txt"], "unknown output type"),
        (["generate", "a ball", "-o", "{tmp}/x.npy", "--frames", "1"], "num_frames"),
        (["generate", "a ball", "-o", "{tmp}/x.npy", "--bundle", "nope"], "unknown bundle"),
        (["generate", "a ball", "-o", "{tmp}/x.npy", "--backend", "bogus"], "unknown backend"),
        (["search", "a ball", "--library", "{tmp}/missing"], "not found"),
        (["encode", "{tmp}/a.npz", "{tmp}/b.npz", "-o", "{tmp}/z.npy"], "one motion library"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, match):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and match in err[0], err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "x.txt").exists()


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, "U3"])
def test_cli_library_of_non_real_values_is_rejected(tmp_path, capsys, dtype):
    lib = tmp_path / "lib"
    lib.mkdir()
    np.save(lib / "a.npy", np.zeros((5, 3, 2), dtype))
    assert cli_main(["search", "a ball", "--library", str(lib)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "real numbers" in err[0], err


@pytest.mark.parametrize("kind", ["folder", "npz"])
def test_cli_library_beyond_float32_is_reported_as_too_large(tmp_path, capsys, rng, kind):
    """A float64 library coordinate past float32's range is named as the units mistake it is, not
    turned into inf (and a RuntimeWarning) by a float32 cast before the SDK's own check."""
    a = rng.uniform(-0.5, 0.5, (2, 16, 4, 2))
    a[1, 3, 2, 0] = rng.uniform(1e39, 1e300)
    if kind == "folder":
        lib = tmp_path / "lib"
        lib.mkdir()
        for i in range(2):
            np.save(lib / f"m{i}.npy", a[i])
    else:
        lib = tmp_path / "lib.npz"
        np.savez(lib, m0=a[0], m1=a[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert cli_main(["search", "a ball", "--library", str(lib)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "coordinates up to" in err[0], err


def test_cli_embedding_library_is_read_as_the_api_reads_it(tmp_path, capsys, rng, default_model):
    """An (M, D) float64 embedding library goes to search() as it is, like an array passed to the API:
    a row with a component past float32's range is still a direction (the API scales before it
    normalises), so the CLI ranks it exactly as model.search does, without a cast to inf."""
    e = rng.standard_normal((6, default_model.dim))
    e[2, 5] = rng.uniform(1e39, 1e300)
    np.save(tmp_path / "emb.npy", e)
    capsys.readouterr()  # drop the rng fixture's seed line
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert (
            cli_main(["search", "a ball", "--library", str(tmp_path / "emb.npy"), "--json", "-k", "6"]) == 0
        )
    rows = json.loads(capsys.readouterr().out)
    idx, scores = default_model.search("a ball", e, k=6)
    assert [r["index"] for r in rows] == idx.tolist()
    np.testing.assert_allclose([r["score"] for r in rows], scores, atol=1e-4)


def test_cli_export_runs_the_export_side_as_its_own_program(tmp_path, capsys):
    assert cli_main(["export", "--engines"]) == 2
    assert "--bundle-dir" in capsys.readouterr().err
    # export.bundle runs in a child process (l2m_sdk never imports torch): its own error and exit status
    imported_before = "export.bundle" in sys.modules
    bad = ["export", "--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "b")]
    assert cli_main(bad) != 0
    assert not (tmp_path / "b").exists()
    assert ("export.bundle" in sys.modules) == imported_before  # not imported in this process


def test_cli_passes_options_through_to_bench_and_export(capsys):
    # `l2m bench --quick` must reach the benchmark's own parser, not stop at l2m's
    with pytest.raises(SystemExit) as ex:
        cli_main(["bench", "--help"])
    assert ex.value.code == 0
    assert "--quick" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ex:
        cli_main(["export", "--help"])
    assert ex.value.code == 0
    with pytest.raises(SystemExit) as ex:  # other commands still reject unknown options
        cli_main(["info", "--no-such-option"])
    assert ex.value.code == 2


def test_cli_as_a_program(tmp_path):
    """The real entry point in a fresh process: success prints, bad input exits 2 with one line."""
    r = subprocess.run(
        [sys.executable, "-m", "l2m_sdk.cli", "info"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and "backend" in r.stdout, r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "l2m_sdk.cli",
            "generate",
            "a ball",
            "-o",
            str(tmp_path / "x.npy"),
            "--frames",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "num_frames" in r.stderr, r.stderr
