"""Training losses: reconstruction (position + velocity), alignment (cosine + symmetric InfoNCE), and
image-view alignment against the CLIP image tower of rendered ground truth.

Weights are chosen so no term drowns the others (the public code's reconstruction sums outweigh its
alignment term ~1000x): reconstruction is a per-coordinate mean scaled to O(1) at initialisation,
InfoNCE is O(log B), cosine terms are in [0, 2].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    rec_motion: float = 10.0
    rec_text: float = 10.0
    velocity: float = 0.5  # relative to position, per term
    cosine: float = 0.5
    infonce: float = 1.0
    image: float = 0.5


def reconstruction(pred: torch.Tensor, target: torch.Tensor, vel_weight: float) -> torch.Tensor:
    """L1 of positions plus L1 of per-frame velocities (scaled to clip-time units). (B, T, N, 2) each."""
    pos = (pred - target).abs().mean()
    steps = max(target.shape[1] - 1, 1)
    dv = (pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])
    return pos + vel_weight * dv.abs().mean() * steps / 4.0


def infonce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between unit rows a (B, D) and b (B, D). `same` (B, B) bool marks pairs with the
    same meaning; they are soft positives rather than false negatives."""
    logits = logit_scale.clamp(max=np.log(100.0)).exp() * a @ b.t()
    target = same.float() / same.float().sum(1, keepdim=True)
    la = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    lb = -(target.t() * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return 0.5 * (la + lb)


def splat_render(traj: np.ndarray, size: int = 64, sigma: float = 1.0) -> np.ndarray:
    """Tiny numpy renderer for the image-view signal (B, T, N, 2) -> (B, 3, size, size) float in [0, 1]:
    each point at each frame is a Gaussian dot coloured by time (blue early, red late)."""
    B, T, N, _ = traj.shape
    px = (traj + 1) * 0.5 * size - 0.5  # pixel centres at integer coordinates
    g = np.arange(size, dtype=np.float32)
    tcol = np.linspace(0, 1, T, dtype=np.float32)
    colors = np.stack([tcol, 0.3 * np.ones_like(tcol), 1 - tcol], -1)  # (T, 3)
    wx = np.exp(-((g[None, None, None, :] - px[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, T, N, W)
    wy = np.exp(-((g[None, None, None, :] - px[..., 1:2]) ** 2) / (2 * sigma**2))  # (B, T, N, H)
    img = np.einsum("btnh,btnw,tc->bchw", wy, wx, colors)
    return np.clip(img, 0, 1).astype(np.float32)


def same_meaning(keys: list[str]) -> torch.Tensor:
    k = np.array(keys)
    return torch.from_numpy(k[:, None] == k[None, :])
