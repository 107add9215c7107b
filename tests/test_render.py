"""Rasterizer parity (CPU build and CUDA kernel vs the numpy reference), drawing conventions, API checks."""

import logging
import subprocess
import sys
import time

import numpy as np
import pytest

import l2m_sdk.render as R  # the submodule, not the package-level function of the same name

# Tolerance on [0, 1] float pixels. The three builds run the same float32 operations in the same order,
# with FMA contraction switched off (-ffp-contract=off, --fmad=false) and IEEE division/sqrt, so they
# agree to the bit in practice; 2e-6 (~16 ulp at 1.0) only absorbs a libm whose sqrtf/floor might not
# be correctly rounded. uint8 pixels may then differ by one step where a value sits on a rounding edge.
FLOAT_ATOL = 2e-6
U8_MAX_DIFF = 1


@pytest.fixture
def rng():
    seed = time.time_ns() % (2**32)
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def _cuda_available() -> bool:
    try:
        from cuda.bindings import driver

        (err,) = driver.cuInit(0)
        if int(err) != 0:
            return False
        err, count = driver.cuDeviceGetCount()
        return int(err) == 0 and count > 0
    except Exception:  # no cuda-python, or no NVIDIA driver library on this machine
        return False


BACKENDS = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not _cuda_available(), reason="no CUDA GPU")]
    ),
]


@pytest.fixture(scope="module")
def cpu_lib():
    lib = R._load_cpu_library()
    if lib is None:
        pytest.fail("CPU rasterizer library not built: run `python setup.py build_ext --inplace`")
    return lib


def _random_case(rng, kind: str):
    B = int(rng.integers(1, 4))
    T = {"n1_t2": 2, "t1": 1}.get(kind, int(rng.integers(2, 14)))
    N = 1 if kind == "n1_t2" else int(rng.integers(1, 24))
    H, W = (int(v) for v in rng.integers(5, 90, size=2))
    scale = 3.0 if kind == "outside" else 1.1  # "outside": most points leave the frame
    traj = rng.uniform(-scale, scale, size=(B, T, N, 2)).astype(np.float32)
    if kind == "smooth":  # short segments, like real motion
        traj = np.cumsum(rng.normal(0, 0.05, size=(B, T, N, 2)), axis=1).astype(np.float32)
        traj += rng.uniform(-0.8, 0.8, size=(B, 1, N, 2)).astype(np.float32)
    if kind == "degenerate":  # points that stand still: zero-length segments
        traj[:, 1::2] = traj[:, 0:-1:2][:, : traj[:, 1::2].shape[1]]
    if kind == "axis":  # exactly horizontal and vertical segments (scanline edge cases)
        traj = np.round(traj * 4) / 4
    kwargs = {
        "line_width": float(rng.uniform(0.3, 6.0)),
        "point_radius": float(rng.uniform(0.0, 5.0)),
        "colors": ["time", "point", "both"][int(rng.integers(0, 3))],
        "background": tuple(int(v) for v in rng.integers(0, 256, size=3)),
        "trails": bool(rng.random() < 0.85),
    }
    if rng.random() < 0.25:
        kwargs["colors"] = rng.uniform(0, 1, size=(N, 3)).astype(np.float32)
    return traj, (H, W), kwargs


CASES = ["random", "smooth", "outside", "degenerate", "axis", "n1_t2", "t1"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", CASES)
def test_build_matches_numpy_reference(backend, kind, rng, cpu_lib):
    for _ in range(3):
        traj, size, kw = _random_case(rng, kind)
        ref = R.render_reference(traj, size, dtype=np.float32, **kw)
        got = R.render(traj, size, dtype=np.float32, device=backend, **kw)
        assert got.shape == ref.shape == (traj.shape[0], *size, 3)
        diff = np.abs(got - ref)
        assert diff.max() <= FLOAT_ATOL, (
            f"{backend} vs numpy: max |diff| {diff.max():.3g} at {np.argmax(diff)}"
        )
        ref8 = R.render_reference(traj, size, **kw)
        got8 = R.render(traj, size, device=backend, **kw)
        d8 = np.abs(got8.astype(np.int16) - ref8)
        assert got8.dtype == np.uint8 and d8.max() <= U8_MAX_DIFF, f"uint8 max diff {d8.max()}"
        assert (d8 > 0).mean() <= 1e-3, f"{(d8 > 0).mean():.2%} of uint8 values differ"


def test_batched_equals_single(rng, cpu_lib):
    traj, size, kw = _random_case(rng, "smooth")
    batch = R.render(traj, size, **kw)
    for b in range(traj.shape[0]):
        np.testing.assert_array_equal(batch[b], R.render(traj[b], size, **kw))


def _dot_image(x, y, size, radius):
    traj = np.array([[[x, y]]], dtype=np.float32)  # T = 1, N = 1: one dot
    return R.render(traj, size, point_radius=radius, colors="point").max(axis=-1)


def test_pixel_centre_convention_and_y_down(cpu_lib):
    H, W = 40, 64
    # Pixel (i, j) has its centre at normalised ((i + 0.5) / W * 2 - 1, (j + 0.5) / H * 2 - 1).
    i, j = 50, 7
    img = _dot_image((i + 0.5) / W * 2 - 1, (j + 0.5) / H * 2 - 1, (H, W), radius=0.6)
    assert np.unravel_index(np.argmax(img), img.shape) == (j, i)
    assert img[j, i] == img.max() and img[j, i + 2] == 0 and img[j + 2, i] == 0
    # y = -0.9 is near the top: small row index.
    top = _dot_image(0.0, -0.9, (H, W), radius=1.0)
    assert np.argmax(top.max(axis=1)) < H // 4


def test_trails_colours_and_clipping(rng, cpu_lib):
    T, N = 20, 3
    x = np.linspace(-0.8, 0.8, T, dtype=np.float32)
    traj = np.zeros((T, N, 2), np.float32)
    traj[..., 0] = x[:, None]
    traj[..., 1] = np.array([-0.5, 0.0, 0.5], np.float32)
    img = R.render(traj, 64, colors="time", line_width=2.0, point_radius=0.0)
    row = img[32 - 1 : 32 + 1].max(axis=0).sum(axis=-1)  # the middle point's horizontal line
    left, right = row[10:20].mean(), row[44:54].mean()
    assert right > left > 0, "time ramp should get brighter toward the last frame"
    dots_only = R.render(traj, 64, trails=False)
    assert (dots_only.sum(-1) > 0).sum() < (R.render(traj, 64).sum(-1) > 0).sum()
    far = np.full((4, 2, 2), 5.0, np.float32)  # everything far outside: nothing drawn
    assert not R.render(far, 32, background="black").any()
    ref = R.render_reference(traj * 2.5, 48)  # partly outside: clipped, still drawn and identical
    np.testing.assert_array_equal(R.render(traj * 2.5, 48), ref)
    assert ref.any()


def test_render_frames_and_files(tmp_path, rng, cpu_lib):
    from PIL import Image

    traj, _, _ = _random_case(rng, "smooth")
    traj = traj[0]
    frames = R.render_frames(traj, 48)
    assert frames.shape == (traj.shape[0], 48, 48, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[-1], R.render(traj, 48))
    png = R.save_png(tmp_path / "a.png", traj, size=40)
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), R.render(traj, 40))
    R.save_png(tmp_path / "b.png", frames[0])
    gif = Image.open(R.save_gif(tmp_path / "a.gif", traj, fps=10, size=32))
    assert gif.n_frames == traj.shape[0] and gif.size == (32, 32)
    every3 = R.render_frames(traj, 16, step=3)
    assert every3.shape[0] == len(range(0, traj.shape[0], 3)) + ((traj.shape[0] - 1) % 3 != 0)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((5, 3, 3)),
        np.zeros((5, 2)),
        np.zeros((0, 4, 2)),
        np.zeros((5, 0, 2)),
        np.zeros((2, 0, 4, 2)),
        np.array([[[0.0, np.nan]]]),
        np.array([[[np.inf, 0.0]]]),
        np.array([[[1e300, 0.0]]]),  # finite float64, inf as float32: an error, not a RuntimeWarning
        np.zeros((5, 3, 2), np.complex64),
        "not an array",
    ],
)
@pytest.mark.filterwarnings("error")
def test_bad_trajectories_raise_value_error(bad):
    with pytest.raises(ValueError, match=r"\(T, N, 2\)"):
        R.render(bad)
    with pytest.raises(ValueError, match=r"\(T, N, 2\)"):
        R.render_reference(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 0},
        {"size": (10, 10, 3)},
        {"size": 2.5},
        {"line_width": 0},
        {"line_width": float("nan")},
        {"point_radius": -1},
        {"colors": "rainbow"},
        {"colors": np.zeros((7, 3))},
        {"colors": np.full((3, 3), 2.0)},
        {"background": (0, 0, 300)},
        {"background": "grey"},
        {"device": "tpu"},
        {"dtype": np.float64},
    ],
)
def test_bad_options_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        R.render(np.zeros((4, 3, 2), np.float32), **kwargs)


def test_numpy_fallback_warns_once(monkeypatch, caplog, rng):
    monkeypatch.setattr(R, "_library_path", lambda: None)
    monkeypatch.setattr(R, "_lib", None)
    monkeypatch.setattr(R, "_lib_tried", False)
    traj, size, kw = _random_case(rng, "smooth")
    with caplog.at_level(logging.WARNING, logger="l2m_sdk"):
        a = R.render(traj, size, **kw)
        b = R.render(traj, size, **kw)
    warnings = [r for r in caplog.records if "numpy reference" in r.getMessage()]
    assert len(warnings) == 1
    np.testing.assert_array_equal(a, R.render_reference(traj, size, **kw))
    np.testing.assert_array_equal(a, b)


def test_import_is_cheap():
    code = (
        "import sys, l2m_sdk.render as r; "
        "mods = ('torch', 'cuda', 'cuda.bindings', 'PIL', 'matplotlib', 'l2m_kernels'); "
        "heavy = [m for m in mods if m in sys.modules]; "
        "print(heavy); assert r._lib is None and not heavy"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=R.Path(R.__file__).parents[1]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_module_is_callable_like_the_function(rng, cpu_lib):
    import l2m_sdk

    traj, size, kw = _random_case(rng, "smooth")
    np.testing.assert_array_equal(l2m_sdk.render(traj, size, **kw), R.render(traj, size, **kw))
    assert callable(l2m_sdk.render.save_png) and callable(l2m_sdk.render.save_gif)


def test_gif_delays_past_the_format_limit_are_value_errors(tmp_path):
    """A GIF frame lasts at most 655.35 s (16-bit delays in 10 ms). Too low an fps or too long a hold is
    refused up front; identical frames that Pillow merges past the limit (hypothesis found two at
    fps 0.00195 raising OverflowError inside Pillow) are a ValueError too, and leave no partial file."""
    from PIL import Image

    traj = np.array([[[0.27, -0.46]], [[-0.92, -0.97]]], np.float32)
    out = tmp_path / "g.gif"
    for kw in ({"fps": 0.0015}, {"fps": 15, "hold_last_s": float("nan")}, {"fps": 15, "hold_last_s": 700.0}):
        with pytest.raises(ValueError, match="fps|hold_last_s"):
            R.save_gif(out, traj, size=1, **kw)
    with pytest.raises(ValueError, match="identical consecutive frames"):
        R.save_gif(out, traj, fps=0.001953125, size=1)  # 1x1 frames: both identical, 2 x 512 s merged
    assert not out.exists()
    assert Image.open(R.save_gif(out, traj, fps=0.002, size=8)).n_frames >= 1  # near the limit, distinct
