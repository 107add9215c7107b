"""The Lang2Motion trajectory auto-encoder: motion encoder, decoders, text adapter.

Shapes: trajectories (B, T, N, 2) in normalised image coordinates (x right, y down, [-1, 1]);
embeddings (B, D) unit vectors in the text tower's space (D = 384 for MiniLM, 512 for CLIP B/32).
Everything here exports to ONNX with dynamic B, T and N (plain matmul attention, no fused kernels).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    dim: int = 384  # text tower embedding size D
    width: int = 192  # transformer width
    enc_layers: int = 3
    dec_layers: int = 3
    heads: int = 4
    ff: int = 384
    point_hidden: int = 96
    cond_tokens: int = 4
    num_frames: int = 30  # training length; any T works at inference
    num_points: int = 64  # default N for generate()
    decoder: str = "nar"  # "nar" (ours) or "ar" (the paper's autoregressive step decoder)
    text_tower: str = "minilm"
    adapter_hidden: int = 512
    # How the frozen tower's token states become one embedding: "mean" (the tower's own pooling) or
    # "attention" (TextPool, learned; MiniLM only).
    text_pool: str = "mean"
    # Hidden size of a residual per-token MLP inside the attention pooling (0: none): token states are
    # remapped one by one (x + MLP(x), zero-initialised) before they are weighed and summed.
    pool_hidden: int = 0
    # How many of the frozen tower's transformer layers produce the token states the attention pool reads
    # (0: all of them, the last layer). MiniLM's middle layers separate the families of unseen verbs
    # better than its last one, which sentence-similarity training shaped around the object noun: a
    # linear probe from training captions to held-out ones (mean-pooled states) reads 0.87 at layer 4
    # against 0.72 at layer 6 (model card). Later layers are then never run.
    text_depth: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def time_features(t: torch.Tensor, n: int = 16) -> torch.Tensor:
    """Continuous-time encoding of t in [0, 1]: (..., ) -> (..., 2n) sin/cos at octave frequencies."""
    freqs = torch.pow(2.0, torch.arange(n, dtype=t.dtype, device=t.device) * 0.5) * math.pi
    a = t[..., None] * freqs
    return torch.cat([torch.sin(a), torch.cos(a)], -1)


class Block(nn.Module):
    """Pre-LN transformer block with explicit matmul attention (exports cleanly, any length)."""

    def __init__(self, width: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, ff)
        self.fc2 = nn.Linear(ff, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, W)
        B, L, W = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).reshape(B, L, 3, h, W // h).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * (1.0 / math.sqrt(W // h)), -1)
        y = (att @ v).transpose(1, 2).reshape(B, L, W)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def motion_features(traj: torch.Tensor):
    """Per-point and per-frame kinematic features, in clip-time units so any T is comparable.

    traj: (B, T, N, 2) -> point feats (B, T, N, 8), frame feats (B, T, 7), times (T,)
    """
    idx = torch.arange(traj.shape[1], dtype=traj.dtype)  # tensor ops on the shape keep T dynamic in ONNX
    steps = torch.clamp(idx[-1:], min=1.0)
    c = traj.mean(2)  # (B, T, 2) centroid
    rel = traj - c[:, :, None]
    d = traj[:, 1:] - traj[:, :-1]
    vel = torch.cat([torch.zeros_like(traj[:, :1]), d], 1) * (steps / 4.0)
    dv = vel[:, 1:] - vel[:, :-1]
    acc = torch.cat([torch.zeros_like(traj[:, :1]), dv], 1) * (steps / 20.0)
    vc = vel.mean(2)
    ac = acc.mean(2)
    spread = rel.norm(dim=-1).mean(2, keepdim=True)  # (B, T, 1)
    pts = torch.cat([rel, vel, acc, vel - vc[:, :, None]], -1)
    frame = torch.cat([c, vc, ac, spread * 4.0], -1)
    times = idx / steps
    return pts, frame, times


class MotionEncoder(nn.Module):
    """(B, T, N, 2) -> (B, D) unit embedding. Invariant to point order (mean + max pooling)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        W, P = cfg.width, cfg.point_hidden
        self.point_mlp = nn.Sequential(nn.Linear(8, P), nn.GELU(), nn.Linear(P, P))
        self.pool_proj = nn.Linear(2 * P, W)
        self.frame_proj = nn.Linear(7, W)
        self.time_proj = nn.Linear(32, W)
        self.summary = nn.Parameter(torch.zeros(1, 1, W))
        self.blocks = nn.ModuleList(Block(W, cfg.heads, cfg.ff) for _ in range(cfg.enc_layers))
        self.ln = nn.LayerNorm(W)
        self.out = nn.Linear(W, cfg.dim)

    def forward(self, traj: torch.Tensor) -> torch.Tensor:
        pts, frame, times = motion_features(traj)
        h = self.point_mlp(pts)  # (B, T, N, P)
        pooled = torch.cat([h.mean(2), h.amax(2)], -1)
        x = self.pool_proj(pooled) + self.frame_proj(frame) + self.time_proj(time_features(times))
        x = torch.cat([self.summary.expand(x.shape[0], -1, -1), x], 1)
        for blk in self.blocks:
            x = blk(x)
        return F.normalize(self.out(self.ln(x[:, 0])), dim=-1)


class MotionDecoder(nn.Module):
    """Non-autoregressive decoder: (z (B, D), initial points (B, N, 2), times (T,)) -> (B, T, N, 2).

    A transformer over T time queries (continuous time encoding, so any T) and K conditioning tokens
    gives per-frame features h_t; each point moves by an affine map of its offset from the centroid
    (rigid motion, rotation, scaling) plus a small shared point head (non-rigid parts such as wings).
    The displacement at the first time is subtracted, so frame 0 equals the initial points exactly.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        W, P, K = cfg.width, cfg.point_hidden, cfg.cond_tokens
        self.K = K
        self.cond = nn.Linear(cfg.dim, K * W)
        self.layout = nn.Linear(4, W)
        self.time_mlp = nn.Sequential(nn.Linear(32, W), nn.GELU(), nn.Linear(W, W))
        self.blocks = nn.ModuleList(Block(W, cfg.heads, cfg.ff) for _ in range(cfg.dec_layers))
        self.ln = nn.LayerNorm(W)
        self.affine = nn.Linear(W, 6)
        self.frame_to_point = nn.Linear(W, P)
        self.point_in = nn.Linear(4, P)
        self.point_mid = nn.Linear(P, P)
        self.point_out = nn.Linear(P, 2)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(
        self, z: torch.Tensor, init: torch.Tensor, times: torch.Tensor, points: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`points` (k,) int: decode only these points (training's cheaper loss). The layout (centroid,
        spread) still comes from all of `init`, so each point equals a full decode's, exactly."""
        B, N, _ = init.shape
        c0 = init.mean(1)  # (B, 2)
        rel = init - c0[:, None]
        spread = rel.norm(dim=-1).mean(1, keepdim=True)  # (B, 1)
        if points is not None:
            init, rel = init[:, points], rel[:, points]
        lay = self.layout(torch.cat([c0, spread * 4.0, torch.log(spread + 1e-3)], -1))
        cond = self.cond(z).reshape(B, self.K, -1) + lay[:, None]
        q = self.time_mlp(time_features(times))[None].expand(B, -1, -1) + lay[:, None]
        x = torch.cat([cond, q], 1)
        for blk in self.blocks:
            x = blk(x)
        h = self.ln(x[:, self.K :])  # (B, T, W)
        a = self.affine(h)  # (B, T, 6): 2x2 matrix + translation
        m = a[..., :4].reshape(B, -1, 2, 2)
        disp = torch.einsum("btij,bnj->btni", m, rel) + a[..., None, 4:]
        scale = torch.clamp(spread, min=0.05)[:, None]  # (B, 1, 1)
        pin = torch.cat([rel / scale, rel], -1)  # (B, N, 4)
        ph = F.gelu(self.point_in(pin)[:, None] + self.frame_to_point(h)[:, :, None])  # (B, T, N, P)
        disp = disp + self.point_out(F.gelu(self.point_mid(ph)))
        disp = disp - disp[:, :1]
        return init[:, None] + disp


class ARDecoder(nn.Module):
    """The paper's style of decoder, kept for comparison: one step per frame, each step a function of
    the previous positions and the latent. Sequential in T (30 steps for 30 frames)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        W = cfg.width
        self.cond = nn.Linear(cfg.dim, W)
        self.step = nn.Sequential(
            nn.Linear(W + 2 + 2 + 32, W), nn.GELU(), nn.Linear(W, W), nn.GELU(), nn.Linear(W, 2)
        )

    def forward(
        self, z: torch.Tensor, init: torch.Tensor, times: torch.Tensor, points: torch.Tensor | None = None
    ) -> torch.Tensor:
        c0 = init.mean(1, keepdim=True)
        if points is not None:  # as MotionDecoder: the centroid comes from every point
            init = init[:, points]
        B, N, _ = init.shape
        cz = self.cond(z)[:, None].expand(B, N, -1)
        out = [init]
        p = init
        tf = time_features(times)
        for t in range(1, times.shape[0]):
            feat = torch.cat([cz, p - c0, init - c0, tf[t].expand(B, N, -1)], -1)
            p = p + self.step(feat) * (times[t] - times[t - 1])
            out.append(p)
        return torch.stack(out, 1)


class TextAdapter(nn.Module):
    """Residual head on the frozen text embedding, zero-initialised (starts as the identity):
    e' = normalise(e + MLP(e)). Lets the model separate words the frozen tower embeds close together
    (left/right, clockwise/counterclockwise) while staying in the tower's space."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.adapter_hidden)
        self.fc2 = nn.Linear(cfg.adapter_hidden, cfg.dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return F.normalize(e + self.fc2(F.gelu(self.fc1(e))), dim=-1)


class TextPool(nn.Module):
    """Learned attention pooling over the frozen tower's token states, then the L2 norm the tower applies:
    (x (B, L, D), mask (B, L)) -> (B, D) unit rows. The score is one linear map per token, zero-initialised,
    so the pool starts as the tower's own mean pooling over the mask (sentence-transformers') and a model
    trained with "mean" pooling is its exact starting point. Why: MiniLM's mean-pooled sentence embedding
    is dominated by the object noun (53% of its variance on training captions), and a pooling that can
    weigh the verb tokens reads unseen verbs better (export/evaluate.py `--probe-words`, model card).

    With hidden > 0 each token state first goes through a residual MLP, x + MLP(x), whose output layer is
    zero-initialised (so the pool still starts as the mean): a sum of per-token nonlinear features can
    separate what a weighted sum of the raw states cannot ("zooms in" / "zooms out" differ in one token)."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        if hidden < 0:
            raise ValueError(f"pool_hidden must be >= 0, got {hidden}")
        self.score = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(self.score.weight)
        self.token_fc1 = nn.Linear(dim, hidden) if hidden else None
        self.token_fc2 = nn.Linear(hidden, dim) if hidden else None
        if hidden:
            nn.init.zeros_(self.token_fc2.weight)
            nn.init.zeros_(self.token_fc2.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.token_fc1 is not None:
            x = x + self.token_fc2(F.gelu(self.token_fc1(x)))
        m = mask.to(x.dtype)
        a = self.score(x).squeeze(-1) + (m - 1.0) * 1e4
        w = torch.softmax(a, dim=-1) * m  # a row of padding only (never produced by a tokenizer) gives 0
        return F.normalize((w[..., None] * x).sum(1), dim=-1)


class L2M(nn.Module):
    """Trainable part of the model (the text tower stays frozen outside it)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = MotionEncoder(cfg)
        self.decoder = MotionDecoder(cfg) if cfg.decoder == "nar" else ARDecoder(cfg)
        self.adapter = TextAdapter(cfg)
        if cfg.text_pool not in ("mean", "attention"):
            raise ValueError(f"text_pool must be 'mean' or 'attention', got {cfg.text_pool!r}")
        if cfg.text_pool == "attention" and not cfg.text_tower.startswith("minilm"):
            raise ValueError(
                f"text_pool='attention' needs the MiniLM tower's token states; tower {cfg.text_tower!r} "
                "pools its own (CLIP: the end-of-text token). Use text_pool='mean'."
            )
        if cfg.pool_hidden and cfg.text_pool != "attention":
            raise ValueError(
                f"pool_hidden={cfg.pool_hidden} needs text_pool='attention' (the MLP is in the pool)"
            )
        if cfg.text_depth < 0 or (cfg.text_depth and cfg.text_pool != "attention"):
            raise ValueError(
                f"text_depth={cfg.text_depth}: a count of tower layers >= 0 (0: all), read through "
                "text_pool='attention' (mean pooling is the tower's own sentence embedding, its last layer)"
            )
        self.pool = TextPool(cfg.dim, cfg.pool_hidden) if cfg.text_pool == "attention" else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if cfg.decoder not in ("nar", "ar"):
            raise ValueError(f"decoder must be 'nar' or 'ar', got {cfg.decoder!r}")

    @staticmethod
    def times(num_frames: int) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, num_frames)
