"""The shipped default model is really conditioned on the text: on held-out phrasings (objects and word
forms never seen in training, from export.captions' held-out vocabulary), opposite directions,
rotation senses and grow/shrink give opposite motion. Run through the SDK (ONNX Runtime), as users
call it, on fresh captions and fresh initial layouts each run.

A pair passes when both motions go the way their captions say, with opposite signs: the centroid's
net displacement along the named axis (left/right on x, up/down on y, y down), the total signed
rotation about the centroid (clockwise on screen > 0), the change of spread (grow > 1 > shrink).
No magnitude threshold: that is the property check's job (export.evaluate, MODEL_CARD.md).

Asserted, per kind, on PAIRS fresh pairs: with training vocabulary (unseen captions and layouts, known
words) at least MIN_RATE["train"] pass; with held-out vocabulary at least MIN_RATE["held_out"]. A model
that ignored the text would pass no pair (both captions would give the same motion); one that read
only the noun would also pass none. The held-out bar is far below
the 0.9 the model is meant to reach: the shipped model does not reach it on unseen verbs (e.g.
"balloons", "pulls together"; MODEL_CARD.md), and this test guards the conditioning, not that target.
The rates are printed.
"""

from __future__ import annotations

import numpy as np
import pytest

import l2m_sdk

pytest.importorskip("torch")  # export.captions / export.evaluate live on the training side
from export.captions import write_caption  # noqa: E402
from export.evaluate import _centroid, rotation_angle, spread  # noqa: E402

PAIRS = 48  # per kind
# Measured on the shipped model, 32 fresh pairs a kind: train 0.94-1.0; held out: left/right 0.94,
# down/up 0.84, cw/ccw 0.56-0.81, grow/shrink 0.56-0.63. Bars set so that a fresh draw fails by
# chance well under 1% of runs.
MIN_RATE = {"train": 0.85, "held_out": 0.4}


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
    ok, failures = 0, []
    for _ in range(PAIRS):
        a, b = _captions(spec_a, spec_b, rng, vocabulary == "held_out")
        pts = _layout(rng)
        ta, tb = model.generate([a, b], initial_points=pts)
        ma, mb = float(measure(ta)), float(measure(tb))
        if ma > 0 > mb:
            ok += 1
        else:
            failures.append(f"{a!r}: {ma:+.3f} / {b!r}: {mb:+.3f}")
    rate = ok / PAIRS
    with capsys.disabled():
        print(f"\n{kind}, {vocabulary} vocabulary: {ok}/{PAIRS} pairs opposite as captioned (seed {seed})")
        for f in failures:
            print("   fails:", f)
    assert rate >= MIN_RATE[vocabulary], f"{kind}: only {ok}/{PAIRS} pairs opposite; failures: {failures}"
