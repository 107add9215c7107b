"""Packaging: the l2m distribution owns every top-level name it installs.

transformers 5.25 requires Hugging Face's `kernels` package and imports it on `import transformers`.
Our rasterizer package used to be a top-level `kernels` as well: from the checkout it shadowed theirs on
sys.path, and a wheel install would have written into the same site-packages folder. It is
`l2m_kernels` now. These tests read the installed metadata, so they guard every name, not only that one.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _l2m_top_level() -> set[str]:
    return {name for name, dists in md.packages_distributions().items() if "l2m" in dists}


def test_l2m_is_installed_with_its_packages():
    names = _l2m_top_level()
    assert {"l2m_sdk", "l2m_kernels", "export", "benchmarks"} <= names, names


def test_no_top_level_name_is_shared_with_another_distribution():
    shared = {
        name: sorted(set(dists) - {"l2m"})
        for name, dists in md.packages_distributions().items()
        if "l2m" in dists and set(dists) - {"l2m"}
    }
    assert not shared, f"top-level names installed by l2m and by other distributions: {shared}"


def test_huggingface_kernels_is_not_shadowed_by_the_checkout():
    if importlib.util.find_spec("kernels") is None:
        pytest.skip("Hugging Face's kernels package is not installed (transformers < 5.25 does not need it)")
    origin = Path(importlib.util.find_spec("kernels").origin).resolve()
    assert REPO not in origin.parents, f"`import kernels` resolves inside the checkout: {origin}"
