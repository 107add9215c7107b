"""Property-based tests (hypothesis): arbitrary input at every public API function and the CLI.

Contract under test (issue 7). Every call either
  - returns a result of the documented shape and dtype holding only finite values, together with the
    function's own invariants (unit embeddings, frame 0 == initial points, top-k sorted, ...), or
  - raises ValueError or TypeError (BundleError is a ValueError) with a non-empty message.
Nothing else: no other exception type, no NaN, no wrong shape, no crash. Where the input is valid by
the documentation (an oracle written here, independent of l2m_sdk/_validate.py), the call must
succeed; where the oracle says invalid, it must raise. The CLI returns 0 or 2 (argparse usage errors
exit 2) and never lets an exception escape.

Inputs: strings of any code point (lone surrogates, control characters, zero-width and combining
marks, 100,000 characters), arrays of every dtype (floats of three widths, ints, bool, complex, object,
str, datetime) in valid and invalid shapes, with NaN, inf, huge and tiny values, empty axes,
non-contiguous, Fortran-ordered, read-only and broadcast views, nested lists; seeds, temperatures,
num_frames, k, alphas and strengths of every type and range. Each call goes at random to the Model or
to the module-level function (the default model is the same loaded Model), so both layers are covered.

In half of the examples every argument is drawn valid (one shared draw decides, `either`), in the other
half anything goes, so both outcomes are common (about half the calls return). About 10,500 cases run
per session (`derandomize=False`: fresh ones every run); the last test prints the count per function.
Arrays stay small (at most a few hundred numbers) and prompts mostly come from a small pool the text
cache holds, so the suite takes about a minute.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import l2m_sdk
from l2m_sdk import _validate as V

D = 384  # the default bundle's embedding size (checked against the model in a fixture)
MAX_ABS = V.MAX_ABS_COORD  # documented: coordinates far beyond [-1, 1] are a units mistake
UNIT_TOL = 1e-4  # |norm - 1| of a float32 unit vector after a few float32 ops: a few ulps of 1
SETTINGS = dict(
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
CASES: Counter = Counter()  # (test, "ok" | "error") -> calls made
EXPECTED = {
    "encode_text": 1500,
    "generate": 1500,
    "encode_motion": 1500,
    "decode": 1200,
    "search": 1500,
    "classify": 500,
    "interpolate": 800,
    "edit": 600,
    "style_transfer": 600,
    "render": 400,
    "render_files": 150,
    "load": 40,
    "cli": 250,
}
ALLOWED = (ValueError, TypeError)
TMP = Path(tempfile.mkdtemp(prefix="l2m-props-"))
atexit.register(shutil.rmtree, TMP, True)


@pytest.fixture(scope="module")
def model(default_model):
    """The shared default Model, also installed as l2m_sdk's default so module-level calls use it."""
    assert default_model.dim == D
    old = l2m_sdk._default
    l2m_sdk._default = default_model
    yield default_model
    l2m_sdk._default = old


def outcome(name: str, fn, *args, expect_ok: bool | None = None, **kwargs):
    """Call fn; return (result, None) or (None, error) for ValueError/TypeError, fail on anything else.
    expect_ok True/False: the oracle's verdict, checked here."""
    try:
        out = fn(*args, **kwargs)
    except ALLOWED as e:
        CASES[name, "error"] += 1
        assert str(e), f"{type(e).__name__} with an empty message"
        if expect_ok:
            raise AssertionError(f"{name}: valid input rejected with {type(e).__name__}: {e}") from e
        return None, e
    CASES[name, "ok"] += 1
    if expect_ok is False:
        raise AssertionError(f"{name}: invalid input accepted, returned {type(out).__name__}")
    return out, None


def check_array(a, shape: tuple, dtype=np.float32) -> None:
    assert isinstance(a, np.ndarray), type(a)
    assert a.shape == shape, f"shape {a.shape}, expected {shape}"
    assert a.dtype == dtype, f"dtype {a.dtype}, expected {dtype}"
    if np.issubdtype(a.dtype, np.floating):
        assert np.isfinite(a).all(), f"{int((~np.isfinite(a)).sum())} non-finite values"


def check_unit(e) -> None:
    n = np.linalg.norm(e.astype(np.float64), axis=-1)
    assert np.abs(n - 1).max() < UNIT_TOL, f"norms {n.min()}..{n.max()}, expected 1"


# ------------------------------------------------------------------------------------------- text
POOL = [
    "a ball bouncing to the right",
    "a car turning left",
    "the crowd spreads out",
    "points spin clockwise fast",
    "zoom in slowly",
    "a bird flies up",
]
SPECIALS = list("\x00\x01\x07\t\n\r\x0b\x0c\x1b\x7f\x85\xa0\u00ad\u0301\u200b\u200d\u2028\u202e\ufeff\ufffd")
SPECIALS += ["\ud800", "\udfff", "\U0001f600", "\U0010ffff", " ", "  \t "]
any_char = st.characters(exclude_categories=[])  # every code point, lone surrogates included
short_text = st.one_of(
    st.text(any_char, max_size=24),
    st.lists(st.sampled_from(SPECIALS), max_size=6).map("".join),
    st.sampled_from(POOL),
)


@st.composite
def long_text(draw):
    """100,000 characters: a drawn piece repeated (with or without whitespace to cut at)."""
    piece = draw(
        st.text(any_char, min_size=1, max_size=12) | st.sampled_from(["word ", "x", "\u00e9\u0301 "])
    )
    return (piece * (100_000 // len(piece) + 1))[:100_000]


def text_ok(t) -> bool:
    return isinstance(t, str) and t.strip() != ""


def text_batch_ok(x) -> bool:
    if isinstance(x, str):
        return text_ok(x)
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(text_ok(t) for t in x)


cheap_text = st.one_of(st.sampled_from(POOL), st.sampled_from(POOL), short_text)
junk = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.binary(max_size=4),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.just(object()),
    st.just(np.float32(0.5)),
)
text_arg = st.one_of(
    cheap_text,
    st.lists(cheap_text, max_size=4),
    st.lists(cheap_text, max_size=3).map(tuple),
    st.lists(st.one_of(cheap_text, junk), min_size=1, max_size=3),
    junk,
)


# ------------------------------------------------------------------------------------------ arrays
FLOATS = [np.float32, np.float64, np.float16]
INTS = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64]
BAD_DTYPES = [np.complex64, np.complex128, object, "U3", "S2", "datetime64[s]"]
SPECIAL_VALUES = [np.nan, np.inf, -np.inf, 1e30, -1e30, 1e300, 1e4, 999.0, 1e-30, 5e-324, 0.0, -0.0]


def _fill(rng: np.random.Generator, shape: tuple, dtype, values: str) -> np.ndarray:
    """An array of `shape` and `dtype`; values "unit" (in [-1, 1]), "wide" (in [-1e3, 1e3]),
    "special" (unit plus a few NaN / inf / huge / tiny), "zero" or "extreme" (the dtype's limits)."""
    n = int(np.prod(shape))
    dt = np.dtype(dtype)
    if dt.kind in "fc" or values == "special":
        x = rng.uniform(-1, 1, n) * (1e3 if values == "wide" else 1.0)
        if values == "special" and n:
            k = rng.integers(1, min(n, 3) + 1)
            x[rng.choice(n, k, replace=False)] = rng.choice(SPECIAL_VALUES, k)
        if values == "zero":
            x[:] = 0
        if values == "extreme" and dt.kind == "f":
            x = rng.choice([np.finfo(dt).max, np.finfo(dt).min, np.finfo(dt).tiny], n)
        with np.errstate(over="ignore"):  # huge SPECIAL_VALUES overflow the narrow dtypes to inf: intended
            if dt.kind == "c":
                return (x + 1j * rng.uniform(-1, 1, n)).astype(dt).reshape(shape)
            if dt.kind == "f":
                return x.astype(dt).reshape(shape)
    if dt.kind in "iu":
        if values == "extreme":
            info = np.iinfo(dt)
            return rng.choice(np.array([info.min, info.max], dt), n).reshape(shape)
        lo = 0 if dt.kind == "u" else -2
        return rng.integers(lo, 3, n).astype(dt).reshape(shape)
    if dt.kind == "b":
        return (rng.uniform(size=n) < (0.0 if values == "zero" else 0.5)).reshape(shape)
    if dt.kind == "O":
        items = [0.5, None, "a", [1.0], 1.0, 2]
        out = np.empty(n, object)
        for i in range(n):
            out[i] = items[rng.integers(len(items))]
        return out.reshape(shape)
    if dt.kind in "US":
        return np.full(shape, "ab", dt)
    return np.zeros(shape, dt)  # datetime64


ANY_DTYPE = st.sampled_from(FLOATS) | st.sampled_from(FLOATS) | st.sampled_from(INTS) | st.just(np.bool_)
ANY_DTYPE = ANY_DTYPE | st.sampled_from(BAD_DTYPES)
ANY_VALUES = st.sampled_from(["unit", "unit", "unit", "wide", "special", "zero", "extreme"])
# Valid by the documentation (given a valid shape): real dtypes, values within normalised range
GOOD_DTYPE = st.sampled_from([np.float32, np.float32, np.float64, np.float16, np.int8, np.int64, np.bool_])
GOOD_VALUES = st.sampled_from(["unit", "unit", "wide"])


@st.composite
def arrays(draw, shape_st, dtype_st=ANY_DTYPE, values_st=ANY_VALUES):
    """A numeric-looking input: an ndarray of a drawn dtype and layout (or nested lists) and shape."""
    shape = draw(shape_st)
    dtype = draw(dtype_st)
    values = draw(values_st)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = _fill(rng, shape, dtype, values)
    layout = draw(
        st.sampled_from(["plain", "plain", "noncontig", "fortran", "readonly", "list", "broadcast"])
    )
    if layout == "noncontig" and a.ndim:
        big = np.repeat(a, 2, axis=-1)  # every other element: a strided view
        a = big[..., ::2]
    elif layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "readonly":
        a.flags.writeable = False
    elif layout == "list" and a.dtype.kind in "fiub" and a.size < 200:
        return a.tolist()
    elif layout == "broadcast" and a.ndim and a.shape[0] > 0:
        a = np.broadcast_to(a[:1], a.shape)  # zero stride, read-only
    return a


def _dims(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


good_traj_shapes = st.one_of(
    st.tuples(_dims(2, 7), _dims(1, 5), st.just(2)),  # (T, N, 2), valid sizes
    st.tuples(_dims(1, 2), _dims(2, 6), _dims(1, 4), st.just(2)),  # (B, T, N, 2)
)
good_emb_shapes = st.just((D,)) | st.tuples(_dims(1, 3), st.just(D))
good_point_shapes = st.tuples(_dims(1, 6), st.just(2))
traj_shapes = st.one_of(
    good_traj_shapes,
    st.tuples(_dims(0, 3), _dims(0, 3), _dims(0, 3)),  # any small 3-d
    st.tuples(_dims(0, 2), _dims(0, 3), _dims(0, 3), _dims(1, 3)),  # any small 4-d
    st.lists(_dims(0, 3), max_size=5).map(tuple),  # any rank
)
emb_shapes = st.one_of(
    good_emb_shapes,
    st.tuples(_dims(0, 1), st.just(D)),
    st.sampled_from([(D - 1,), (D + 1,), (2, D, 1), (), (0,), (1, 2)]),
)
point_shapes = st.one_of(
    good_point_shapes,
    st.tuples(_dims(1, 3), _dims(1, 5), st.just(2)),
    st.tuples(_dims(0, 3), _dims(0, 3)),
    st.lists(_dims(0, 3), max_size=4).map(tuple),
)
# About half of each argument's draws are valid (good dtype, values and shape, any layout); the rest
# are anything at all.
good_traj = arrays(good_traj_shapes, GOOD_DTYPE, GOOD_VALUES)
good_emb = arrays(good_emb_shapes, GOOD_DTYPE, GOOD_VALUES)
good_points = arrays(good_point_shapes, GOOD_DTYPE, st.just("unit"))
traj_arg = good_traj | good_traj | arrays(traj_shapes) | junk
emb_arg = good_emb | good_emb | arrays(emb_shapes) | junk
points_arg = st.none() | good_points | arrays(point_shapes) | junk
VALID = st.shared(st.booleans(), key="valid")


def either(good: st.SearchStrategy, anything: st.SearchStrategy) -> st.SearchStrategy:
    """`good` (valid by the documentation) in half of the examples, for every argument of the example at
    once (one shared draw decides), `anything` in the other half: so that both outcomes are common."""
    return VALID.flatmap(lambda ok: good if ok else anything)


good_single = st.sampled_from(POOL) | arrays(good_traj_shapes.filter(lambda s: len(s) == 3), GOOD_DTYPE)
good_single = good_single | arrays(st.just((D,)), GOOD_DTYPE, GOOD_VALUES)


def _arr(x) -> np.ndarray | None:
    """What the documentation says an array argument is: numpy's reading of it, or None if unreadable."""
    if x is None or isinstance(x, (str, bytes, dict)):
        return None
    try:
        return np.asarray(x)
    except (ValueError, TypeError):
        return None


def _numeric(a: np.ndarray | None) -> bool:
    return a is not None and (a.dtype.kind in "fiub")


def _coords_ok(a: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        f = a.astype(np.float64)
    return bool(np.isfinite(f).all() and (f.size == 0 or np.abs(f).max() <= MAX_ABS))


def traj_ok(x) -> bool:
    """Documented: (T, N, 2) or (B, T, N, 2), B >= 1, T >= 2, N >= 1, finite, normalised coordinates."""
    a = _arr(x)
    if not _numeric(a) or a.ndim not in (3, 4) or a.shape[-1] != 2:
        return False
    b, t, n = (1, *a.shape[:2]) if a.ndim == 3 else a.shape[:3]
    return b >= 1 and 2 <= t <= V.MAX_FRAMES and 1 <= n <= V.MAX_POINTS and _coords_ok(a)


def emb_ok(x) -> bool:
    """Documented: (D,) or (B, D), B >= 1, finite, no all-zero row (any scale: rows are normalised)."""
    a = _arr(x)
    if not _numeric(a) or a.ndim not in (1, 2) or a.shape[-1] != D or a.size == 0:
        return False
    f = a.astype(np.float64).reshape(-1, D)
    return bool(np.isfinite(f).all() and (np.abs(f).max(1) > 0).all())


def points_ok(x, batch: int) -> bool:
    """Documented: None, (N, 2) shared, or (B, N, 2) with B = the batch; finite normalised coordinates."""
    if x is None:
        return True
    a = _arr(x)
    if not _numeric(a) or a.ndim not in (2, 3) or a.shape[-1] != 2:
        return False
    if a.ndim == 3 and a.shape[0] not in (1, batch):
        return False
    return 1 <= a.shape[-2] <= V.MAX_POINTS and _coords_ok(a)


def batch_of(x) -> int:
    """Batch size of a valid text / embedding / trajectory argument."""
    if isinstance(x, str):
        return 1
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], str):
        return len(x)
    a = np.asarray(x)
    return 1 if a.ndim in (1, 3) else a.shape[0]


def latent_kind(x) -> str | None:
    """How `search`/`interpolate`/`edit` read an argument: "text", "emb", "traj" or None (invalid)."""
    if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], str)):
        return "text" if text_batch_ok(x) else None
    a = _arr(x)
    if a is None:
        return None
    if a.ndim in (3, 4) and a.shape[-1] == 2:
        return "traj" if traj_ok(x) else None
    return "emb" if emb_ok(x) else None


latent_arg = st.one_of(cheap_text, st.lists(st.sampled_from(POOL), min_size=1, max_size=3), traj_arg, emb_arg)
int_arg = st.one_of(
    st.integers(-3, 12),
    st.integers(),
    st.sampled_from([np.int64(4), np.uint8(3), np.int32(-1), True, 2.0, "3", None, 2**70]),
)
real_arg = st.one_of(
    st.floats(-0.5, 1.5),
    st.floats(),
    st.integers(-2, 12),
    st.sampled_from([np.float32(0.3), np.float64(0.7), np.int64(1), True, "0.5", None, float("nan")]),
)


def int_ok(x, lo: int, hi: int) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) and lo <= int(x) <= hi


def real_ok(x, lo: float, hi: float) -> bool:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        return False
    return lo <= float(x) <= hi


def api(model, use_module: bool):
    return l2m_sdk if use_module else model


# ------------------------------------------------------------------------------------------- tests
@settings(max_examples=EXPECTED["encode_text"], **SETTINGS)
@given(
    text=st.integers(0, 99).flatmap(
        lambda r: (
            long_text() if r == 0 else st.lists(long_text(), min_size=1, max_size=2) if r == 1 else text_arg
        )
    ),
    mod=st.booleans(),
)
@example(text="x" * 100_000, mod=False)
@example(text="word " * 20_000, mod=True)
@example(text=["\x00\x01\x02", "\ud800\udc00 lone", "\u200b"], mod=False)
@example(text=" \t\n ", mod=False)
@example(text=[], mod=False)
def test_encode_text(model, text, mod):
    ok = text_batch_ok(text)
    out, _ = outcome("encode_text", api(model, mod).encode_text, text, expect_ok=ok)
    if out is not None:
        check_array(out, (D,) if isinstance(text, str) else (len(text), D))
        check_unit(out)


@settings(max_examples=EXPECTED["generate"], **SETTINGS)
@given(
    text=either(
        st.sampled_from(POOL) | st.lists(st.sampled_from(POOL), min_size=1, max_size=3) | short_text,
        st.one_of(cheap_text, st.lists(st.sampled_from(POOL), min_size=1, max_size=3), text_arg),
    ),
    initial_points=either(st.none() | good_points, points_arg),
    num_frames=either(st.none() | st.integers(2, 9), st.none() | st.integers(2, 9) | int_arg),
    seed=either(st.none() | st.integers(0, 2**63 - 1), st.none() | int_arg),
    temperature=either(st.just(0.0) | st.floats(0, 10) | st.just(np.float32(0.3)), st.just(0.0) | real_arg),
    mod=st.booleans(),
)
def test_generate(model, text, initial_points, num_frames, seed, temperature, mod):
    B = len(text) if isinstance(text, (list, tuple)) else 1
    ok = (
        text_batch_ok(text)
        and points_ok(initial_points, B)
        and (num_frames is None or int_ok(num_frames, 2, V.MAX_FRAMES))
        and (seed is None or int_ok(seed, 0, 2**63 - 1))
        and real_ok(temperature, 0.0, 10.0)
    )
    if ok and initial_points is None and num_frames is not None and int(num_frames) > 64:
        num_frames = 64  # keep the default 64-point grid cheap
    fn = api(model, mod).generate
    args = (text, initial_points, num_frames, seed, temperature)
    out, _ = outcome("generate", fn, *args, expect_ok=ok)
    if out is None:
        return
    T = model.num_frames if num_frames is None else int(num_frames)
    p0 = np.asarray(initial_points, np.float32) if initial_points is not None else None
    N = model.num_points if p0 is None else p0.shape[-2]
    check_array(out, (T, N, 2) if isinstance(text, str) else (B, T, N, 2))
    if p0 is not None:  # frame 0 is the initial points, exactly (as float32)
        first = out[..., 0, :, :]
        assert np.array_equal(first, np.broadcast_to(p0 if p0.ndim == 2 or B > 1 else p0[0], first.shape))
    if seed is not None and float(temperature) > 0:  # a seed makes sampling reproducible
        assert np.array_equal(out, fn(*args))


@settings(max_examples=EXPECTED["encode_motion"], **SETTINGS)
@given(traj=traj_arg, mod=st.booleans())
def test_encode_motion(model, traj, mod):
    ok = traj_ok(traj)
    out, _ = outcome("encode_motion", api(model, mod).encode_motion, traj, expect_ok=ok)
    if out is not None:
        a = np.asarray(traj)
        check_array(out, (D,) if a.ndim == 3 else (a.shape[0], D))
        check_unit(out)


@settings(max_examples=EXPECTED["decode"], **SETTINGS)
@given(
    emb=either(good_emb, emb_arg),
    initial_points=either(st.none() | good_points, points_arg),
    num_frames=either(st.none() | st.integers(2, 9), st.none() | st.integers(2, 9) | int_arg),
    mod=st.booleans(),
)
def test_decode(model, emb, initial_points, num_frames, mod):
    ok = emb_ok(emb)
    B = batch_of(emb) if ok else 1
    ok = ok and points_ok(initial_points, B) and (num_frames is None or int_ok(num_frames, 2, V.MAX_FRAMES))
    if ok and num_frames is not None and int(num_frames) > 64:
        num_frames = 64
    out, _ = outcome("decode", api(model, mod).decode, emb, initial_points, num_frames, expect_ok=ok)
    if out is None:
        return
    T = model.num_frames if num_frames is None else int(num_frames)
    N = model.num_points if initial_points is None else np.asarray(initial_points).shape[-2]
    check_array(out, (T, N, 2) if np.asarray(emb).ndim == 1 else (B, T, N, 2))


@settings(max_examples=EXPECTED["search"], **SETTINGS)
@given(
    query=either(good_single | good_emb | good_traj, latent_arg | junk),
    gallery=either(good_emb | good_traj, emb_arg | traj_arg | latent_arg),
    k=either(st.integers(1, 6) | st.integers(1, 1 << 31), st.integers(1, 6) | int_arg),
    mod=st.booleans(),
)
def test_search(model, query, gallery, k, mod):
    qk, gk = latent_kind(query), latent_kind(gallery)
    ok = qk is not None and gk is not None and gk != "text" and int_ok(k, 1, 1 << 31)
    if gk == "text":  # a gallery of texts also works (embedded like queries); not documented, allowed
        ok = None
    out, _ = outcome("search", api(model, mod).search, query, gallery, k, expect_ok=ok)
    if out is None:
        return
    idx, scores = out
    M = batch_of(gallery)
    kk = min(int(k), M)
    single = isinstance(query, str) or (qk != "text" and np.ndim(query) in (1, 3))
    shape = (kk,) if single else (batch_of(query), kk)
    check_array(idx, shape, idx.dtype)
    check_array(scores, shape)
    assert np.issubdtype(idx.dtype, np.integer) and idx.min() >= 0 and idx.max() < M
    s2 = np.atleast_2d(scores)
    assert (np.diff(s2, axis=-1) <= 0).all(), "scores not best first"
    assert np.abs(s2).max() <= 1 + 1e-5, "cosine outside [-1, 1]"
    assert all(len(set(r)) == len(r) for r in np.atleast_2d(idx)), "an index repeats"


@settings(max_examples=EXPECTED["classify"], **SETTINGS)
@given(
    traj=either(good_traj, traj_arg),
    labels=either(
        st.lists(st.sampled_from(POOL), min_size=1, max_size=4) | st.sampled_from(POOL),
        st.lists(st.sampled_from(POOL), min_size=1, max_size=4) | st.sampled_from(POOL) | text_arg,
    ),
    mod=st.booleans(),
)
def test_classify(model, traj, labels, mod):
    ok = traj_ok(traj) and text_batch_ok(labels)
    out, _ = outcome("classify", api(model, mod).classify, traj, labels, expect_ok=ok)
    if out is None:
        return
    names, p = out
    L = 1 if isinstance(labels, str) else len(labels)
    B = batch_of(traj)
    check_array(p, (B, L))
    assert np.allclose(p.sum(1), 1, atol=1e-5) and p.min() >= 0
    choices = [labels] if isinstance(labels, str) else list(labels)
    assert len(names) == B and all(n in choices for n in names)


alphas_arg = st.one_of(
    st.floats(0, 1),
    st.lists(st.floats(0, 1), min_size=1, max_size=4),
    st.lists(st.floats(), max_size=3),
    arrays(st.sampled_from([(3,), (0,), (2, 2), ()])),
    junk,
)


def alphas_ok(x) -> bool:
    a = _arr(x)
    if not _numeric(a) or a.size == 0:
        return False
    f = a.astype(np.float64)
    return bool(np.isfinite(f).all() and f.min() >= 0 and f.max() <= 1)


def _emb64(model, *args) -> list[np.ndarray]:
    """Each argument as the model reads it (text, embedding or motion -> unit rows), in float64."""
    return [model._as_embeddings(x, "x").astype(np.float64) for x in args]


@settings(max_examples=EXPECTED["interpolate"], **SETTINGS)
@given(
    a=either(good_single, latent_arg),
    b=either(good_single, latent_arg),
    alphas=either(st.floats(0, 1) | st.lists(st.floats(0, 1), min_size=1, max_size=4), alphas_arg),
    mod=st.booleans(),
)
def test_interpolate(model, a, b, alphas, mod):
    ka, kb = latent_kind(a), latent_kind(b)
    ok = ka is not None and kb is not None and alphas_ok(alphas) and batch_of(a) == batch_of(b)
    opposite = False
    if ok:  # the one valid-input failure: a and b opposite (cosine -1) with an alpha inside (0, 1)
        ea, eb = _emb64(model, a, b)
        cos = (ea * eb).sum(-1)
        inner = np.asarray(alphas, np.float64)
        opposite = bool((cos < -1 + 1e-6).any() and ((inner > 0) & (inner < 1)).any())
    fn = api(model, mod).interpolate
    out, err = outcome("interpolate", fn, a, b, alphas, expect_ok=ok and not opposite)
    if opposite:
        assert err is not None and "opposite directions" in str(err), f"opposite endpoints gave {out}"
    if out is None:
        return
    K, B = np.asarray(alphas).size, batch_of(a)
    check_array(out, (K, D) if B == 1 else (K, B, D))
    check_unit(out)


@settings(max_examples=EXPECTED["edit"], **SETTINGS)
@given(
    a=either(good_single, latent_arg),
    b=either(good_single, latent_arg),
    c=either(good_single | good_emb, latent_arg),
    mod=st.booleans(),
)
def test_edit(model, a, b, c, mod):
    kinds = [latent_kind(x) for x in (a, b, c)]
    ok = all(k is not None for k in kinds)
    if ok:
        sizes = {batch_of(x) for x in (a, b, c)} - {1}
        ok = len(sizes) <= 1
    out, err = outcome("edit", api(model, mod).edit, a, b, c)
    if ok and err is not None:  # the one valid-input failure: a - b + c is exactly zero
        assert "zero vector" in str(err), f"valid input rejected: {err}"
        ea, eb, ec = _emb64(model, a, b, c)
        assert np.linalg.norm(ea - eb + ec, axis=-1).min() < 1e-6, f"non-zero a - b + c rejected: {err}"
        return
    assert ok == (out is not None), (
        f"expected {'success' if ok else 'an error'}, got {out if err is None else err}"
    )
    if out is not None:
        Bs = max(batch_of(x) for x in (a, b, c))
        check_array(out, (D,) if Bs == 1 else (Bs, D))
        check_unit(out)


@settings(max_examples=EXPECTED["style_transfer"], **SETTINGS)
@given(
    motion=either(good_traj, traj_arg),
    style=either(st.sampled_from(POOL), cheap_text | junk),
    strength=either(st.floats(0, 1), st.floats(0, 1) | real_arg),
    mod=st.booleans(),
)
def test_style_transfer(model, motion, style, strength, mod):
    ok = traj_ok(motion) and text_ok(style) and real_ok(strength, 0.0, 1.0)
    out, _ = outcome("style_transfer", api(model, mod).style_transfer, motion, style, strength, expect_ok=ok)
    if out is None:
        return
    m = np.asarray(motion)
    check_array(out, m.shape)
    assert np.array_equal(out[..., 0, :, :], m[..., 0, :, :].astype(np.float32)), "layout (frame 0) changed"


size_arg = (
    st.integers(1, 24)
    | st.tuples(st.integers(1, 16), st.integers(1, 16))
    | st.integers(1, 12)
    | int_arg
    | junk
)


@settings(max_examples=EXPECTED["render"], **SETTINGS)
@given(
    traj=either(good_traj, traj_arg),
    size=either(st.integers(1, 24) | st.tuples(st.integers(1, 16), st.integers(1, 16)), size_arg),
    colors=either(st.sampled_from(["both", "time", "point"]), st.sampled_from(["both", "rainbow", None, 3])),
    background=either(st.sampled_from(["black", "white", (10, 20, 30)]), st.sampled_from([(1, 2), None])),
    trails=st.booleans(),
)
def test_render(traj, size, colors, background, trails):
    """render's own checks (ValueError) on anything; the output is (H, W, 3) uint8 per trajectory."""
    out, _ = outcome(
        "render", l2m_sdk.render, traj, size, colors=colors, background=background, trails=trails
    )
    if out is not None:
        hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        a = np.asarray(traj)
        check_array(out, (*hw, 3) if a.ndim == 3 else (a.shape[0], *hw, 3), np.uint8)


@settings(max_examples=EXPECTED["render_files"], **SETTINGS)
@given(
    traj=either(good_traj, traj_arg),
    size=either(st.integers(1, 12), st.integers(1, 12) | junk),
    fps=either(st.floats(0.5, 60), real_arg),
    step=either(st.integers(1, 4), int_arg),
    kind=st.sampled_from(["png", "gif", "frames"]),
)
def test_render_files(traj, size, fps, step, kind):
    """save_png / save_gif / render_frames: a file or (F, H, W, 3) frames, or ValueError/TypeError."""
    if kind == "png":
        out, _ = outcome("render_files", l2m_sdk.save_png, TMP / "p.png", traj, size=size)
    elif kind == "gif":
        out, _ = outcome("render_files", l2m_sdk.save_gif, TMP / "g.gif", traj, fps=fps, size=size)
    else:
        out, _ = outcome("render_files", l2m_sdk.render_frames, traj, size, step=step)
        if out is not None:
            assert out.dtype == np.uint8 and out.shape[-1] == 3
        return
    if out is not None:
        assert out.exists() and out.stat().st_size > 0


@settings(max_examples=EXPECTED["load"], **SETTINGS)
@given(
    bundle=st.sampled_from(["default", "nope", "", str(TMP), str(TMP / "missing"), 3, None, b"default"]),
    backend=st.sampled_from(["auto", "ort", "cpu", "", None, 1]),
    device=st.sampled_from(["auto", "cpu", "gpu", None]),
    threads=st.none() | st.sampled_from([1, 2, 0, -1, 2.5, "2", True]),
    cache_size=st.sampled_from([0, 8, 1024, -1, 1.5, None, "8"]),
)
def test_load(bundle, backend, device, threads, cache_size):
    """Bad names and settings give ValueError/TypeError (FileNotFoundError for a missing directory's
    manifest); good ones a working Model."""
    try:
        m = l2m_sdk.load(bundle, backend=backend, device=device, threads=threads, cache_size=cache_size)
    except (ValueError, TypeError, FileNotFoundError) as e:
        CASES["load", "error"] += 1
        assert str(e)
        return
    CASES["load", "ok"] += 1
    with m:
        assert bundle == "default" and backend in ("auto", "ort") and device in ("auto", "cpu")
        assert int_ok(cache_size, 0, 1 << 24) and (threads is None or int_ok(threads, 1, 256))
        check_array(m.encode_text("ok"), (D,))


cli_text = st.one_of(st.sampled_from(POOL), short_text, st.sampled_from(["-x", "--frames", "", "-"]))


@settings(max_examples=EXPECTED["cli"], **SETTINGS)
@given(
    cmd=st.sampled_from(["generate", "search", "encode"]),
    texts=st.lists(cli_text, min_size=0, max_size=2),
    out=st.sampled_from(["o.npy", "o.json", "o.png", "o.gif", "o.txt", "o"]),
    frames=st.none() | st.sampled_from(["2", "5", "0", "-3", "x", "3000", "1e3"]),
    extra=st.sampled_from(
        [[], ["--seed", "1", "--temperature", "0.5"], ["--temperature", "nan"], ["--size", "0"]]
    ),
    k=st.sampled_from(["1", "3", "0", "-1", "z"]),
    library=arrays(traj_shapes) | arrays(emb_shapes),
    lib_kind=st.sampled_from(["npy", "npz", "dir", "missing"]),
)
def test_cli(model, cmd, texts, out, frames, extra, k, library, lib_kind):
    """The CLI on arbitrary arguments: exit status 0 (and the output written) or 2 with one error line."""
    from l2m_sdk import cli

    work = Path(tempfile.mkdtemp(dir=TMP))
    lib = work / ("lib" if lib_kind == "dir" else f"lib.{lib_kind}")
    arr = np.asarray(library) if isinstance(library, list) else library
    with contextlib.suppress(ValueError, TypeError):  # unsavable arrays (object dtype) make no library
        if lib_kind == "npy":
            np.save(lib, arr, allow_pickle=False)
        elif lib_kind == "npz":
            np.savez(lib, a=arr, b=arr)
        elif lib_kind == "dir":
            lib.mkdir()
            np.save(lib / "a.npy", arr, allow_pickle=False)
    if cmd == "generate":
        argv = ["generate", *texts, "-o", str(work / out), *(["--frames", frames] if frames else []), *extra]
    elif cmd == "search":
        argv = ["search", *(texts[:1] or ["q"]), "--library", str(lib), "-k", k]
    else:
        argv = ["encode", *(texts or [str(lib)]), "-o", str(work / "e.npy"), *(["--text"] if texts else [])]
    buf = io.StringIO()
    with (
        mock.patch.object(l2m_sdk, "load", lambda *a, **kw: model),
        contextlib.redirect_stdout(buf),
        contextlib.redirect_stderr(buf),
    ):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    CASES["cli", "ok" if rc == 0 else "error"] += 1
    assert rc in (0, 2), f"exit status {rc!r} for {argv}: {buf.getvalue()[-500:]}"
    if rc == 0 and cmd == "generate":
        assert (work / out).exists(), buf.getvalue()
    if rc == 0 and cmd == "encode":
        e = np.load(work / "e.npy")
        check_array(e, e.shape)
        check_unit(e)


def test_zz_case_count(capsys):
    """Prints the cases run per function; with the whole module run, at least 10,000 in all."""
    rows = {name: (CASES[name, "ok"], CASES[name, "error"]) for name in EXPECTED}
    total = sum(a + b for a, b in rows.values())
    with capsys.disabled():
        print(f"\nproperty cases run: {total} (function: returned / raised ValueError or TypeError)")
        for name, (a, b) in rows.items():
            print(f"  {name:<16} {a:>6} / {b:<6}")
    if any(a + b == 0 for a, b in rows.values()):
        pytest.skip("only part of the module ran; the 10,000-case floor applies to the whole module")
    assert total >= 10_000, f"only {total} cases ran"
