"""Shared fixtures: a private cache directory, fresh random generators, and exports made once per session.

The export fixtures (tiny trained MiniLM bundle, tiny random CLIP bundle) take tens of seconds each, so
they are session-scoped and shared by test_sdk.py, test_onnx_parity.py and test_bundle.py. Torch and the
export side are imported inside the fixtures only: runtime tests that need none of them stay torch-free.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

# onnxruntime writes `deviceid` and `onnxruntime.db` under $XDG_CACHE_HOME when imported (PITFALLS.md):
# point it at a temporary directory before any test imports it. Subprocesses inherit the variable.
_CACHE = tempfile.mkdtemp(prefix="l2m-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "l2m_sdk" / "assets" / "default"


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator each test; the seed is printed so that a failure can be replayed."""
    seed = int(np.random.SeedSequence().entropy % (1 << 63))
    print(f"rng seed = {seed}")
    return np.random.default_rng(seed)


def _random_trajectories(rng: np.random.Generator, B: int, T: int, N: int) -> np.ndarray:
    """(B, T, N, 2) float32 random walks from random starts: plausible motions in about [-1, 1]."""
    start = rng.uniform(-0.7, 0.7, (B, 1, N, 2))
    steps = rng.normal(0.0, 0.03, (B, T - 1, N, 2)).cumsum(1)
    drift = rng.normal(0.0, 0.3, (B, 1, 1, 2)) * np.linspace(0, 1, T)[None, :, None, None]
    return np.concatenate([start, start + steps + drift[:, 1:]], 1).astype(np.float32)


def _random_unit(rng: np.random.Generator, B: int, D: int) -> np.ndarray:
    e = rng.standard_normal((B, D)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture(scope="session")
def random_trajectories():
    """(rng, B, T, N) -> float32 (B, T, N, 2) random walks in about [-1, 1]."""
    return _random_trajectories


@pytest.fixture(scope="session")
def random_unit():
    """(rng, B, D) -> float32 (B, D) random unit rows."""
    return _random_unit


# Largest |onnx - torch| per graph, filled by test_onnx_parity.py and shown in the terminal summary.
PARITY_MAX_DIFF: dict[str, float] = {}


@pytest.fixture(scope="session")
def parity_log() -> dict[str, float]:
    return PARITY_MAX_DIFF


def pytest_terminal_summary(terminalreporter):
    if PARITY_MAX_DIFF:
        terminalreporter.section("ONNX vs PyTorch: largest absolute difference per graph")
        for k, v in sorted(PARITY_MAX_DIFF.items()):
            terminalreporter.write_line(f"{k:<45} {v:.3g}")


@pytest.fixture(scope="session")
def default_model():
    """The packaged default bundle on ONNX Runtime, CPU (what `l2m_sdk.generate` uses here)."""
    import l2m_sdk

    m = l2m_sdk.load("default", backend="ort", device="cpu")
    yield m
    m.close()


@dataclass
class TinyBundle:
    weights: Path  # model.safetensors written by export.train
    bundle: Path  # directory written by export.bundle.write_bundle
    model: object  # export.model.L2M in eval mode (the torch reference)
    text: object  # export.text_towers.TextEncoder (the frozen tower + tokenizer used for the bundle)


@pytest.fixture(scope="session")
def tiny_minilm(tmp_path_factory) -> TinyBundle:
    """export.train on the "tiny" preset (two steps: enough for non-trivial weights) with the real
    MiniLM tower, then write_bundle. About a minute here, most of it the MiniLM text export."""
    from export.bundle import write_bundle
    from export.text_towers import TextEncoder
    from export.train import PRESETS, load_weights, train

    root = tmp_path_factory.mktemp("tiny_minilm")
    cfg = replace(
        PRESETS["tiny"], steps=2, warmup=1, pool_size=64, seed=int(np.random.SeedSequence().entropy % 1000)
    )
    train(cfg, root / "run", cache_dir=root / "cache", progress=False)
    weights = root / "run" / "model.safetensors"
    text = TextEncoder("minilm")
    bundle = write_bundle(weights, root / "bundle", name="tiny-minilm", text_encoder=text)
    return TinyBundle(weights, bundle, load_weights(weights), text)


def _randomize(module, rng: np.random.Generator, scale: float = 0.2) -> None:
    """Give every parameter fresh random values (zero-initialised heads included), in place."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.normal(0.0, scale, tuple(p.shape)).astype(np.float32)))


@pytest.fixture(scope="session")
def randomize():
    """(module, rng, scale) -> None: fresh random values for every parameter."""
    return _randomize


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> TinyBundle:
    """A tiny random-init open_clip config (text + image tower) and a random motion model of matching
    dim, exported with write_bundle: the CLIP kind end to end (tokenizer, text, image, motion graphs)."""
    from export.bundle import write_bundle
    from export.model import L2M, ModelConfig
    from export.text_towers import TextEncoder, save_tiny_clip_config
    from export.train import PRESETS, load_weights, save_weights

    root = tmp_path_factory.mktemp("tiny_clip")
    name = save_tiny_clip_config(root)
    text = TextEncoder(f"clip:{name}")
    cfg = ModelConfig.from_dict({**PRESETS["tiny"].model, "dim": text.dim, "text_tower": f"clip:{name}"})
    model = L2M(cfg)
    _randomize(model, np.random.default_rng(), scale=0.1)
    (root / "run").mkdir()
    weights = save_weights(model, root / "run")
    bundle = write_bundle(weights, root / "bundle", name="tiny-clip", text_encoder=text)
    return TinyBundle(weights, bundle, load_weights(weights), text)


# ------------------------------------------------------------------------------ torch-side tests
@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny torch ops: one thread is faster than waiting on a second core that something else keeps busy
    (10x slower with a training job in the background). Use with pytest.mark.usefixtures."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torch_seed() -> int:
    """A fresh seed each run, printed, and torch seeded with it."""
    import torch

    s = time.time_ns() % 2**31
    print(f"seed = {s}")
    torch.manual_seed(s)
    return s
