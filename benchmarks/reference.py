"""The paper-style pipeline in PyTorch eager: the baseline the latency benchmark compares l2m against.

Written from MODEL.md's description of the public Lang2Motion code, not copied from it:
- text: open_clip's ViT-B-32 text tower on open_clip's tokenizer output, padded to the full 77 tokens
  (what `open_clip.tokenize` returns and what the public code feeds);
- decoder: the paper's autoregressive decoder (export.model.ARDecoder), one step per frame, 30
  sequential steps for 30 frames, at the paper's size (d = 512);
- render: matplotlib per image (benchmarks.render_bench.matplotlib_render: a figure per image, a plot
  call per point, a PNG round trip), the public code's way of drawing trajectories for CLIP.

Weights are random (pretrained CLIP cannot be fetched here; timing does not depend on weight values).
The CLIP tower is seeded like the benchmark's CLIP bundle (benchmarks.bench_setup.CLIP_SEED), so the
ONNX graph and this eager tower hold the same numbers and their outputs are compared before timing.
It is a fair baseline: torch.inference_mode, eval mode, the same thread count as l2m.

Shapes: texts B -> ids (B, 77) int64 -> embedding (B, 512) unit rows -> trajectory (B, T, N, 2) in
normalised image coordinates (x right, y down, [-1, 1]) -> images (H, W, 3) uint8.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.bench_setup import CLIP_ARCH, CLIP_SEED
from benchmarks.render_bench import matplotlib_render
from export.model import ARDecoder, ModelConfig
from export.text_towers import load_clip

PAPER_WIDTH = 512  # the paper's d (MotionCLIP size)


class ReferencePipeline:
    """Eager PyTorch text -> trajectory -> image pipeline, stage by stage (see the module docstring)."""

    def __init__(self, threads: int, arch: str = CLIP_ARCH, num_frames: int = 30, num_points: int = 64):
        torch.set_num_threads(threads)
        self.threads = threads
        torch.manual_seed(CLIP_SEED)
        self.tower, _, self._tokenize = load_clip(arch, None)
        self.dim = self.tower.dim
        self.context_length = self.tower.max_tokens
        torch.manual_seed(CLIP_SEED + 2)
        self.cfg = ModelConfig(dim=self.dim, width=PAPER_WIDTH, decoder="ar", text_tower=f"clip:{arch}")
        self.decoder = ARDecoder(self.cfg).eval()
        self.num_frames = num_frames
        self.num_points = num_points
        g = int(np.ceil(np.sqrt(num_points)))
        a = np.linspace(-0.15, 0.15, g)
        grid = np.stack(np.meshgrid(a, a), -1).reshape(-1, 2)[:num_points]
        self.initial_points = torch.from_numpy(grid.astype(np.float32))  # (N, 2), the SDK's default layout
        self.times = torch.linspace(0.0, 1.0, num_frames)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """B texts -> (B, 77) int64, zero-padded after <end_of_text> (open_clip's tokenizer)."""
        return self._tokenize(texts)

    @torch.inference_mode()
    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, 77) ids -> (B, D) unit embeddings, the whole 77-token window through every layer."""
        return self.tower(ids)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, initial_points: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) -> (B, T, N, 2): T - 1 sequential steps of the per-point step MLP."""
        p0 = self.initial_points if initial_points is None else initial_points
        if p0.ndim == 2:
            p0 = p0.expand(z.shape[0], -1, -1)
        return self.decoder(z, p0, self.times)

    def generate(self, texts: list[str]) -> np.ndarray:
        """B texts -> (B, T, N, 2) float32 trajectories (tokenize + text tower + decoder)."""
        return self.decode(self.encode_ids(self.tokenize(texts))).numpy()

    def render(self, traj: np.ndarray, size: int = 224) -> np.ndarray:
        """(T, N, 2) -> (size, size, 3) uint8 via matplotlib, one image per call."""
        return matplotlib_render(traj, size)

    def check(self) -> dict:
        """Sanity checks before timing: unit embeddings, 77-token ids, frame 0 = initial points."""
        ids = self.tokenize(["a ball bouncing to the right"])
        if tuple(ids.shape) != (1, self.context_length):
            raise RuntimeError(f"reference ids should be (1, {self.context_length}), got {tuple(ids.shape)}")
        z = self.encode_ids(ids)
        norm_err = float((z.norm(dim=-1) - 1).abs().max())
        traj = self.decode(z)
        f0_err = float((traj[:, 0] - self.initial_points).abs().max())
        if norm_err > 1e-5 or f0_err != 0.0 or not torch.isfinite(traj).all():
            raise RuntimeError(f"reference pipeline check failed: |z|-1 {norm_err}, frame-0 error {f0_err}")
        img = self.render(traj[0].numpy())
        if img.shape != (224, 224, 3):
            raise RuntimeError(f"matplotlib render gave {img.shape}, expected (224, 224, 3)")
        return {"unit_norm_err": norm_err, "frame0_err": f0_err, "tokens": self.context_length}
