"""l2m: text -> 2D point trajectories (Lang2Motion), and motion retrieval by text.

Runs on ONNX Runtime (CPU or CUDA) or TensorRT; never imports torch. Coordinates are normalised image
coordinates, x in [-1, 1] left to right, **y in [-1, 1] top to bottom**. Importing is cheap: the
default model loads on the first call that needs it.
"""

from __future__ import annotations

import threading

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "Model",
    "Index",
    "BundleError",
    "load",
    "generate",
    "encode_text",
    "encode_motion",
    "search",
    "index",
    "classify",
    "decode",
    "interpolate",
    "edit",
    "style_transfer",
    "render",
    "render_frames",
    "save_png",
    "save_gif",
    "default_model",
    "list_bundles",
]

_default = None
_default_lock = threading.Lock()


def load(
    bundle="default",
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    cache_size: int = 1024,
    precision: str = "fp32",
):
    """Load a bundle: a built-in name ("default") or a bundle directory. See `Model`."""
    from l2m_sdk.model import Model

    return Model(
        bundle, backend=backend, device=device, threads=threads, cache_size=cache_size, precision=precision
    )


def default_model():
    """The shared default Model, loaded once (thread-safe) on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = load("default")
    return _default


def generate(text, initial_points=None, num_frames=None, seed=None, temperature=0.0):
    """Text -> trajectory (T, N, 2), or (B, T, N, 2) for a list. See `Model.generate`."""
    return default_model().generate(text, initial_points, num_frames, seed, temperature)


def encode_text(text):
    return default_model().encode_text(text)


def encode_motion(trajectories):
    return default_model().encode_motion(trajectories)


def search(query, gallery, k: int = 5):
    return default_model().search(query, gallery, k)


def index(gallery):
    return default_model().index(gallery)


def classify(trajectories, labels):
    return default_model().classify(trajectories, labels)


def decode(embedding, initial_points=None, num_frames=None):
    return default_model().decode(embedding, initial_points, num_frames)


def interpolate(a, b, alphas):
    return default_model().interpolate(a, b, alphas)


def edit(a, b, c):
    return default_model().edit(a, b, c)


def style_transfer(motion, style_text, strength=0.5):
    return default_model().style_transfer(motion, style_text, strength)


def __getattr__(name):
    # Lazy names: keep `import l2m_sdk` free of onnxruntime, tokenizers and native code.
    if name in ("Model", "Index"):
        from l2m_sdk import model

        return getattr(model, name)
    if name == "BundleError":
        from l2m_sdk.bundle import BundleError

        return BundleError
    if name == "list_bundles":
        from l2m_sdk.bundle import list_bundles

        return list_bundles
    if name in ("render", "render_frames", "save_png", "save_gif"):
        import importlib

        # Importing binds l2m_sdk.render to the submodule, which is callable (it runs render()).
        _r = importlib.import_module("l2m_sdk.render")
        return _r if name == "render" else getattr(_r, name)
    raise AttributeError(f"module 'l2m_sdk' has no attribute {name!r}")
