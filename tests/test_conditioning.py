"""The shipped default model is really conditioned on the text: on held-out phrasings (objects and word
forms never seen in training, from export.captions' held-out vocabulary), opposite directions,
rotation senses and grow/shrink give opposite motion. Run through the SDK (ONNX Runtime), as users
call it, on fresh captions and fresh initial layouts each run.

For each pair, a signed measure m of each motion: the centroid's net displacement along the named axis
(left/right on x, up/down on y, y down), the total signed rotation about the centroid (clockwise on
screen > 0), the log change of spread (grow > 0 > shrink). A pair is *opposite as captioned* when
m_a > 0 > m_b (both motions go the way their captions say), and *ordered* when m_a > m_b (the two
motions differ the way the captions do). A text-blind model gives m_a == m_b: neither, ever. No
magnitude threshold: that is the property check's job (export.evaluate, MODEL_CARD.md).

Asserted per kind, on PAIRS fresh pairs:
  - training vocabulary (unseen captions and layouts, known words): opposite as captioned >= 0.85
    (grow/shrink >= 0.8);
  - held-out vocabulary: directions and rotation senses opposite as captioned >= 0.85; every kind
    ordered >= 0.6.
For grow/shrink the held-out "opposite as captioned" rate is printed, not asserted: on unseen shrink
verbs ("dwindles", "pulls together") the shipped model often still expands, less than for the grow
caption, so that rate is 0.55 (one run of 256 pairs on the shipped default-hour-l4 bundle; 0.56-0.59 on
default-hour-cur, the previous default; MODEL_CARD.md, "Against the targets"). Rotation sense 1.00 and
directions 0.97-1.00 in that run.

A direction word must also hold wherever the object starts: test_direction_holds_anywhere_in_frame
(the model before stage 4 moved "right" to the left from the right half of the frame).
"""

from __future__ import annotations

import numpy as np
import pytest

import l2m_sdk

pytest.importorskip("torch")  # export.captions / export.evaluate live on the training side
from export.captions import write_caption  # noqa: E402
from export.evaluate import _centroid, rotation_angle, spread  # noqa: E402

PAIRS = 256  # per kind
# Measured on the shipped model (default-hour-l4, one run of 256 pairs per kind): opposite as captioned
# with training words 1.00 for every kind; ordered with held-out words 1.00 for directions and rotation,
# 0.70 for grow/shrink (default-hour-cur: 0.74-0.75 in two runs; stage 14: 0.97-1.00 of all held-out
# pairs ordered).
# Bars a fresh draw of 256 misses by chance in well under 0.1% of runs (>= 3.5 standard deviations).
MIN_OPPOSITE_TRAIN = {"grow/shrink": 0.8}
MIN_OPPOSITE_TRAIN_DEFAULT = 0.85
MIN_OPPOSITE_HELD_OUT = {"left/right": 0.85, "down/up": 0.85, "cw/ccw": 0.85}  # grow/shrink: ordered only
MIN_ORDERED_HELD_OUT = 0.6


def _captions(spec_a: dict, spec_b: dict, rng: np.random.Generator, held_out: bool) -> tuple[str, str]:
    seed = int(rng.integers(1 << 31))
    a = write_caption(spec_a, np.random.default_rng(seed), held_out=held_out)
    b = write_caption(spec_b, np.random.default_rng(seed), held_out=held_out)  # same draws, other meaning
    return a, b


def _layout(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(4, 65))
    centre = rng.uniform(-0.3, 0.3, 2)
    return (centre + rng.uniform(-0.25, 0.25, (n, 2))).astype(np.float32)


def _net(traj: np.ndarray) -> np.ndarray:
    c = _centroid(traj)
    return c[-1] - c[0]


KINDS = {
    # kind: (spec a, spec b, signed measure that must be > 0 for a and < 0 for b)
    "left/right": ({"family": "translate", "dir": "right"}, {"family": "translate", "dir": "left"},
                   lambda t: _net(t)[0]),
    "down/up": ({"family": "translate", "dir": "down"}, {"family": "translate", "dir": "up"},
                lambda t: _net(t)[1]),
    "cw/ccw": ({"family": "rotate", "sense": "cw"}, {"family": "rotate", "sense": "ccw"}, rotation_angle),
    "grow/shrink": ({"family": "grow"}, {"family": "shrink"},
                    lambda t: np.log(spread(t)[-1] / max(spread(t)[0], 1e-6))),
}  # fmt: skip


@pytest.fixture(scope="module")
def model():
    with l2m_sdk.load("default", backend="ort", device="cpu") as m:
        yield m


@pytest.mark.parametrize("vocabulary", ["train", "held_out"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_opposite_words_give_opposite_motion(model, kind, vocabulary, capsys):
    spec_a, spec_b, measure = KINDS[kind]
    seed = int(np.random.SeedSequence().entropy % (1 << 63))
    rng = np.random.default_rng(seed)
    opposite = ordered = 0
    failures = []
    for _ in range(PAIRS):
        a, b = _captions(spec_a, spec_b, rng, vocabulary == "held_out")
        pts = _layout(rng)
        ta, tb = model.generate([a, b], initial_points=pts)
        ma, mb = float(measure(ta)), float(measure(tb))
        opposite += ma > 0 > mb
        ordered += ma > mb
        if not ma > 0 > mb:
            failures.append(f"{a!r}: {ma:+.3f} / {b!r}: {mb:+.3f}")
    with capsys.disabled():
        print(
            f"\n{kind}, {vocabulary} vocabulary: {opposite}/{PAIRS} pairs opposite as captioned, "
            f"{ordered}/{PAIRS} ordered (seed {seed})"
        )
        for f in failures[:8]:
            print("   not opposite:", f)
    if vocabulary == "train":
        bar = MIN_OPPOSITE_TRAIN.get(kind, MIN_OPPOSITE_TRAIN_DEFAULT)
        assert opposite / PAIRS >= bar, f"{kind}: {opposite}/{PAIRS} opposite; {failures}"
    else:
        if kind in MIN_OPPOSITE_HELD_OUT:
            bar = MIN_OPPOSITE_HELD_OUT[kind]
            assert opposite / PAIRS >= bar, f"{kind}: {opposite}/{PAIRS} opposite; {failures}"
        assert ordered / PAIRS >= MIN_ORDERED_HELD_OUT, f"{kind}: {ordered}/{PAIRS} ordered; {failures}"


DIRECTION_SPECS = {"right": (0, 1.0), "left": (0, -1.0), "down": (1, 1.0), "up": (1, -1.0)}
MIN_ANYWHERE = 0.9  # measured 63/64 in fresh draws (the stage-3 model: 34/40 on a grid of starts)


def test_direction_holds_anywhere_in_frame(model):
    """Training-vocabulary direction captions from layouts centred anywhere in [-0.6, 0.6]^2 (edges
    included): the centroid moves the named way (> 0.1 along the axis) in >= 90% of 64 fresh cases."""
    seed = int(np.random.SeedSequence().entropy % (1 << 63))
    rng = np.random.default_rng(seed)
    good, bad = 0, []
    for i in range(64):
        d = list(DIRECTION_SPECS)[i % 4]
        axis, sign = DIRECTION_SPECS[d]
        cap = write_caption({"family": "translate", "dir": d}, rng)
        pts = (rng.uniform(-0.6, 0.6, 2) + rng.uniform(-0.15, 0.15, (int(rng.integers(4, 40)), 2))).astype(
            np.float32
        )
        m = float(_net(model.generate(cap, initial_points=pts))[axis]) * sign
        good += m > 0.1
        if not m > 0.1:
            bad.append(f"{cap!r} from {pts.mean(0).round(2)}: {m:+.2f}")
    print(f"\ndirection anywhere in frame: {good}/64 (seed {seed})", *bad[:8], sep="\n   ")
    assert good / 64 >= MIN_ANYWHERE, bad
