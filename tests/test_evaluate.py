"""Evaluation metrics: the property checkers (validated on ground-truth synthetic motions and on exact
constructed motions), recall@k against a brute-force reference, and an end-to-end smoke run of the
evaluation functions on a tiny random model and a tiny random-init CLIP tower."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from export.captions import DIRECTIONS, FAMILIES, FAMILY_LABELS
from export.data import synthesize
from export.evaluate import (
    PIXELS,
    PROPERTY_SPECS,
    Evaluator,
    check,
    heldout_items,
    label_embeddings,
    net_direction_ok,
    path_length,
    phrase_breakdown,
    property_checks,
    recall_at,
    retrieval_and_errors,
    reversals,
    rotation_angle,
    spread,
    zero_shot,
)

# The checkers grade the model; on ground truth they must agree with the spec almost always. Measured
# 100% for every kind except stillness (99.75%: tracking-like noise drift) over 400 samples per kind.
GT_PASS_MIN = 0.95


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def seed(torch_seed):
    return torch_seed


@pytest.mark.parametrize("kind", list(PROPERTY_SPECS))
def test_checkers_pass_ground_truth(seed, kind):
    """Ground-truth motions for the held-out property specs pass their own check (point counts as in
    the evaluation), so a failing generation is the model's fault, not the checker's."""
    rng = np.random.default_rng(seed)
    make = PROPERTY_SPECS[kind]
    ok = []
    for i in range(160):
        spec = make(rng, i)
        ok.append(check(kind, spec, synthesize(spec, 30, int(rng.choice([9, 16, 36, 64])), rng)))
    rate = float(np.mean(ok))
    print(f"ground-truth pass rate, {kind}: {rate:.3f} of {len(ok)}")
    assert rate >= GT_PASS_MIN


def test_checkers_reject_wrong_ground_truth(seed):
    """The other way round: ground truth of the opposite meaning fails the check."""
    rng = np.random.default_rng(seed)
    opposite = {"right": "left", "left": "right", "up": "down", "down": "up"}
    opposite |= {
        f"{v}_{h}": f"{opposite[v]}_{opposite[h]}" for v in ("up", "down") for h in ("left", "right")
    }
    fails = []
    for i in range(80):
        d = list(DIRECTIONS)[i % 8]
        traj = synthesize({"family": "translate", "dir": opposite[d]}, 30, 16, rng)
        fails.append(not check("direction", {"family": "translate", "dir": d}, traj))
        sense = ("cw", "ccw")[i % 2]
        traj = synthesize({"family": "rotate", "sense": sense}, 30, 16, rng)
        fails.append(not check("rotation", {"family": "rotate", "sense": ("ccw", "cw")[i % 2]}, traj))
        fam = ("grow", "shrink")[i % 2]
        traj = synthesize({"family": fam}, 30, 16, rng)
        fails.append(not check("scale", {"family": ("shrink", "grow")[i % 2]}, traj))
        traj = synthesize({"family": "translate", "dir": d}, 30, 16, rng)
        fails.append(not check("stillness", {"family": "still"}, traj))
        fails.append(not check("oscillation", {"family": "swing"}, traj))
    assert np.mean(fails) >= GT_PASS_MIN, np.mean(fails)


def test_speed_ordering_on_ground_truth(seed):
    rng = np.random.default_rng(seed)
    wins = []
    for i in range(100):
        d = list(DIRECTIONS)[i % 8]
        slow = synthesize({"family": "translate", "dir": d, "speed": "slow"}, 30, 16, rng)
        fast = synthesize({"family": "translate", "dir": d, "speed": "fast"}, 30, 16, rng)
        wins.append(path_length(fast) > path_length(slow))
    print(f"ground-truth pass rate, speed_ordering: {np.mean(wins):.3f}")
    assert np.mean(wins) >= GT_PASS_MIN


def _rigid(c: np.ndarray, rel: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Centroid path (T, 2), offsets (N, 2), angles (T,) -> (T, N, 2) with x' = R(theta) x, y down."""
    cs, sn = np.cos(theta), np.sin(theta)
    R = np.stack([np.stack([cs, -sn], -1), np.stack([sn, cs], -1)], -2)
    return c[:, None] + np.einsum("tij,nj->tni", R, rel)


def test_rotation_angle_on_exact_rotations(seed):
    rng = np.random.default_rng(seed)
    rel = rng.normal(0, 0.2, (12, 2))
    rel -= rel.mean(0)
    c = np.cumsum(rng.normal(0, 0.01, (40, 2)), 0)  # translation must not change the angle
    total = rng.uniform(-3 * math.pi, 3 * math.pi)
    ang = rotation_angle(_rigid(c, rel, np.linspace(0, total, 40)))
    # float64, steps of < 0.25 rad: only rounding separates it from the exact total
    assert abs(ang - total) < 1e-9, (ang, total)
    # the screen convention: a point at 3 o'clock moving to 6 o'clock (y down) turns clockwise (> 0)
    quarter = np.array(
        [[[1.0, 0.0], [-1.0, 0.0]], [[0.7071, 0.7071], [-0.7071, -0.7071]], [[0, 1.0], [0, -1.0]]]
    )
    assert rotation_angle(quarter) == pytest.approx(math.pi / 2, abs=1e-4)
    assert rotation_angle(np.zeros((10, 1, 2))) == 0.0  # a single point has no rotation


def test_direction_spread_path_and_reversals(seed):
    rng = np.random.default_rng(seed)
    rel = rng.normal(0, 0.1, (9, 2))
    T = 31
    for name, v in DIRECTIONS.items():
        c = np.outer(np.linspace(0, 0.6, T), v)
        traj = _rigid(c, rel, np.zeros(T))
        assert net_direction_ok(traj, name)
        assert not net_direction_ok(traj, {"left": "right"}.get(name, "left" if "right" in name else "right"))
        assert path_length(traj) == pytest.approx(0.6, rel=1e-3)  # DIRECTIONS are unit to 4 digits
    assert not net_direction_ok(_rigid(np.zeros((T, 2)) + 0.05, rel, np.zeros(T)), "up")  # too short
    s = np.exp(np.linspace(0, math.log(2.0), T))
    traj = s[:, None, None] * rel[None]
    assert spread(traj)[-1] / spread(traj)[0] == pytest.approx(2.0, rel=1e-9)
    for k in (1, 3, 6):  # a sine with k half-periods reverses direction k - 1 times
        x = 0.2 * np.sin(np.linspace(0, k * math.pi, 121) + 0.5 * math.pi)
        traj = _rigid(np.stack([x, 0.1 * x], -1), rel, np.zeros(121))
        assert reversals(traj) == k - 1


def test_stillness_and_unknown_kind():
    one = np.zeros((30, 1, 2)) + 0.3
    assert check("stillness", {"family": "still"}, one)  # a single point: no spread, still still
    assert not check("stillness", {"family": "still"}, one + np.linspace(0, 0.2, 30)[:, None, None])
    with pytest.raises(ValueError):
        check("loudness", {"family": "still"}, one)


def _recall_reference(sim: np.ndarray, k: int) -> float:
    """Brute force: the true match counts as found when fewer than k others score strictly higher."""
    hits = 0
    for i in range(sim.shape[0]):
        better = sum(1 for j in range(sim.shape[1]) if j != i and sim[i, j] > sim[i, i])
        hits += better < k
    return hits / sim.shape[0]


def test_recall_at_matches_reference(seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        q = int(rng.integers(5, 60))
        sim = rng.normal(size=(q, q)) + np.eye(q) * rng.uniform(0, 3)
        got = recall_at(sim)
        for k in (1, 5, 10):
            assert got[f"R@{k}"] == pytest.approx(_recall_reference(sim, k), abs=1e-12)
    assert recall_at(np.eye(7))["R@1"] == 1.0
    assert recall_at(-np.eye(7))["R@5"] == 0.0  # every other item scores higher (0 > -1)


@pytest.fixture(scope="module")
def tiny_evaluator(tmp_path_factory):
    from export.model import L2M, ModelConfig
    from export.text_towers import TextEncoder, save_tiny_clip_config

    name = save_tiny_clip_config(tmp_path_factory.mktemp("clip"), name="l2m-eval-tiny-clip")
    enc = TextEncoder(f"clip:{name}")
    cfg = ModelConfig(dim=enc.dim, width=32, enc_layers=1, dec_layers=1, heads=2, ff=64, point_hidden=16)
    return Evaluator(L2M(cfg), enc)


def test_evaluation_runs_and_states_its_sizes(seed, tiny_evaluator):
    rng = np.random.default_rng(seed)
    specs, caps = heldout_items(30, rng)
    assert len({str(sorted(s.items())) for s in specs}) == 30  # distinct meanings
    res = retrieval_and_errors(tiny_evaluator, rng, gallery=24, T=16, N=9)
    assert res["gallery"] == 24 and res["frames"] == 16 and res["points"] == 9
    for direction in ("text_to_motion", "motion_to_text"):
        r = res[direction]
        assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1.0
    assert res["ADE_px"] == pytest.approx(res["ADE"] * PIXELS / 2)
    assert res["FDE_px"] == pytest.approx(res["FDE"] * PIXELS / 2)
    assert res["ADE"] > 0 and np.isfinite(res["autoencoder_ADE"])
    zs = zero_shot(tiny_evaluator, rng, 20, T=16)
    assert zs["samples"] == 20 and zs["classes"] == 17 and 0.0 <= zs["accuracy"] <= 1.0
    with torch.inference_mode():
        gen = tiny_evaluator.generate(caps[:3], np.zeros((3, 5, 2), np.float32), 12)
    assert gen.shape == (3, 12, 5, 2) and np.array_equal(gen[:, 0], np.zeros((3, 5, 2), np.float32))


class _CaptionSeededMotion:
    """Stands in for a model: each caption gets its own random drift, spin and size change (seeded by
    the caption's text), so checks pass for some captions and fail for others."""

    def generate(self, texts, init, T):
        out = []
        for text, p in zip(texts, init):
            r = np.random.default_rng(zlib.crc32(text.encode()))
            t = np.linspace(0, 1, T)[:, None]
            c, (x, y) = p.mean(0), (p - p.mean(0)).T
            a = r.normal(0, 1.0) * t
            rot = np.stack([np.cos(a) * x - np.sin(a) * y, np.sin(a) * x + np.cos(a) * y], -1)
            scale = np.exp(r.normal(0, 0.3) * t)[..., None]
            out.append(c + rot * scale + (r.normal(0, 0.3, 2) * t * r.integers(2))[:, None])
        return np.stack(out).astype(np.float32)


def test_phrase_breakdown_regroups_the_property_checks(seed):
    """`export.evaluate --by-phrase`: its first draw is the property checks' draw from the same seed,
    regrouped (per-kind pass rates equal theirs, every caption in exactly one group), and groups are
    named by the held-out forms the captions contain."""
    from export.evaluate import _held_out_phrase_regex

    ev = _CaptionSeededMotion()
    res = phrase_breakdown(ev, np.random.default_rng(seed), per_kind=40, draws=1, T=16)
    want = property_checks(ev, 40, np.random.default_rng(seed), T=16)["pass_rate"]
    assert 0 < np.mean([want[k] for k in PROPERTY_SPECS]) < 1  # the stand-in passes some, not all
    for kind in PROPERTY_SPECS:
        rows = [r for r in res["rows"] if r["kind"] == kind]
        assert sum(r["count"] for r in rows) == 40
        assert sum(r["count"] * r["pass_rate"] for r in rows) / 40 == pytest.approx(want[kind], abs=1e-12)
    assert {r["family"] for r in res["rows"] if r["kind"] == "rotation"} == {"rotate"}
    assert any(r["phrases"] != "(training words)" for r in res["rows"])
    two = phrase_breakdown(ev, np.random.default_rng(seed), per_kind=40, draws=2, T=16)
    assert sum(r["count"] for r in two["rows"]) == 2 * 40 * len(PROPERTY_SPECS)
    held = _held_out_phrase_regex()
    assert sorted(held.findall("a dial pivots counterclockwise around its center")) == [
        "counterclockwise around its center",
        "pivots",
    ]
    assert not held.findall("a block spins clockwise then sits still")


def test_bundle_evaluator_measures_what_the_torch_one_does(seed, tiny_minilm):
    """`export.evaluate --bundle`: the SDK-side evaluator gives the torch evaluator's embeddings,
    generations and decodes for the same weights (ONNX vs torch: 1e-4), so its figures are comparable."""
    from export.evaluate import SdkEvaluator

    rng = np.random.default_rng(seed)
    ev_t = Evaluator(tiny_minilm.model, tiny_minilm.text)
    ev_s = SdkEvaluator(tiny_minilm.bundle)
    _, caps = heldout_items(5, rng)
    traj = np.stack([synthesize({"family": "rotate", "sense": "cw"}, 16, 7, rng) for _ in caps])
    np.testing.assert_allclose(ev_s.text(caps).numpy(), ev_t.text(caps).numpy(), atol=1e-4)
    z = ev_t.motion(traj).numpy()
    np.testing.assert_allclose(ev_s.motion(traj).numpy(), z, atol=1e-4)
    np.testing.assert_allclose(ev_s.decode(z, traj[:, 0], 16), ev_t.decode(z, traj[:, 0], 16), atol=1e-4)
    np.testing.assert_allclose(
        ev_s.generate(caps, traj[:, 0], 16), ev_t.generate(caps, traj[:, 0], 16), atol=1e-4
    )
    res = retrieval_and_errors(ev_s, rng, gallery=12, T=16, N=9)
    assert res["gallery"] == 12 and 0.0 <= res["text_to_motion"]["R@1"] <= 1.0
    # the zero-shot label ensembles are what l2m_sdk's classify computes from the same label dict
    labels = {f: FAMILY_LABELS[f] for f in FAMILIES}
    ens = label_embeddings(ev_t, labels)
    names, p = ev_s.m.classify(traj, labels)
    logits = 100.0 * z @ ens.T
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p, want / want.sum(1, keepdims=True), atol=5e-3)
    assert names == [list(labels)[k] for k in p.argmax(1)]


def test_layer_probe_reads_held_out_phrasings_best_mid_tower(seed):
    """The layer probe covers the embeddings and each of MiniLM's 6 layers, and measures the real tower:
    held-out captions are labelled better from a middle layer (3 or 4) than from the last, whose
    mean-pooled states the tower's sentence embedding is (what text_depth rests on), and "dwindles"
    is read at no layer."""
    from export.evaluate import layer_probe
    from export.text_towers import TextEncoder

    res = layer_probe(TextEncoder("minilm"), np.random.default_rng(seed), n_train=3000, n_test=600)
    acc = [r["accuracy"] for r in res["rows"]]
    print("layer probe accuracy by depth:", [round(a, 3) for a in acc])
    assert [r["depth"] for r in res["rows"]] == list(range(7))
    assert "still" in res["labels"] and "rotate_cw" in res["labels"]
    assert max(acc[3], acc[4]) >= acc[6] + 0.05
    dwindles = [r["by_phrase"]["dwindles"] for r in res["rows"]]
    assert all(d is not None and d < 0.5 for d in dwindles), dwindles


def test_word_probe_reads_the_frozen_tower(seed, tiny_minilm):
    """The held-out word probe covers every verb of the probed families, leaves the verb's own captions
    out of the gallery, and measures the real MiniLM tower: a plain stillness phrase lands among still
    captions, "dwindles" (held out) does not (it lands among waves and bounces)."""
    from export.captions import _FIXED, _VERBS
    from export.evaluate import PROBE_FAMILIES, word_probe

    ev = Evaluator(tiny_minilm.model, tiny_minilm.text)
    # pool_size 3000: the stillness share below is a sample of one caption pool. Over 109 pool seeds at
    # 1500 it was 0.79 +- 0.10 (min 0.52, and one CI-like run fell under 0.5); over 37 at 3000,
    # 0.89 +- 0.05 (min 0.74). "dwindles" stayed at or under 0.09 at both sizes.
    res = word_probe(ev, np.random.default_rng(seed), pool_size=3000, k=10, repeats=1)
    want = {(f, v[1]) for f in PROBE_FAMILIES for v in (_VERBS.get(f) or _FIXED[f])}
    assert {(r["family"], r["verb"]) for r in res["rows"]} == want
    assert all(0.0 <= r["tower_agreement"] <= 1.0 and 0.0 <= r["pass_rate"] <= 1.0 for r in res["rows"])
    by_verb = {r["verb"]: r for r in res["rows"]}
    assert by_verb["remains motionless"]["tower_agreement"] >= 0.5
    assert by_verb["dwindles"]["tower_agreement"] < 0.3 and by_verb["dwindles"]["held_out"]
    assert sum(v["verbs"] for v in res["summary"].values()) == len(res["rows"])
