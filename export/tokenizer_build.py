"""Build the bundle's `tokenizer.json` (tokenizers library format) and its settings for both text towers.

CLIP: a BPE model rebuilt from open_clip's own vocabulary file (`bpe_simple_vocab_16e6.txt.gz`, found
next to open_clip's sources without importing open_clip, which would import torch). The pieces that
make open_clip's `SimpleTokenizer` what it is:
  - pre-tokenizer: open_clip's regex, matches kept and the rest (whitespace) dropped, then the GPT-2
    byte-to-unicode mapping (identical to open_clip's `bytes_to_unicode`);
  - model: BPE over the first 48,894 merges with "</w>" appended to the last symbol of every word;
  - vocab: 256 byte symbols, the same 256 with "</w>", one entry per merge, then <start_of_text> (49406)
    and <end_of_text> (49407).
The special tokens are deliberately NOT registered as added tokens: open_clip only recognises their
literal text where its regex starts a match, which an added-token scan cannot reproduce; the runtime
(`l2m_sdk.tokenizer`) handles that rare case itself.
The normalizer written here (NFC, whitespace runs, strip, lowercase) only approximates open_clip's
cleaning for standalone users of tokenizer.json; the runtime drops it and cleans in Python exactly.

MiniLM: the package's own tokenizer.json with its fixed 128-token padding and truncation removed (the
runtime pads to the batch's longest prompt and truncates to 256 itself).

Usage: python -m export.tokenizer_build {clip,minilm} OUT_DIR
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from l2m_sdk.tokenizer import TokenizerSettings, minilm_model_dir, minilm_settings

log = logging.getLogger("l2m.export")

CLIP_SOT = "<start_of_text>"
CLIP_EOT = "<end_of_text>"
CLIP_CONTEXT_LENGTH = 77
# open_clip's SimpleTokenizer pattern, special-token alternatives first, matched case-insensitively.
CLIP_PATTERN = r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
_N_MERGES = 49152 - 256 - 2  # open_clip keeps lines[1 : 49152 - 256 - 2 + 1] of the merges file


def clip_vocab_file() -> Path:
    """open_clip's bpe_simple_vocab_16e6.txt.gz, located without importing open_clip (and torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "open_clip not found; the CLIP vocabulary ships with it: pip install 'l2m[export]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the open_clip installation; reinstall open_clip_torch")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable character map (bytes 33..126, 161..172, 174..255 map to
    themselves, the other 68 bytes to U+0100 onward, in byte order)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # Same order as open_clip's vocab: the kept bytes first, then the remapped ones.
    return {b: table[b] for b in [*keep, *(b for b in range(256) if b not in keep)]}


def build_clip_tokenizer(vocab_file: Path | None = None) -> tuple[Tokenizer, TokenizerSettings]:
    """tokenizers.Tokenizer equal to open_clip's SimpleTokenizer after text cleaning, and its settings."""
    lines = gzip.open(vocab_file or clip_vocab_file()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"unexpected CLIP merges file: {len(merges)} merges, expected {_N_MERGES} pairs")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [CLIP_SOT, CLIP_EOT]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("CLIP vocabulary has duplicate entries; the merges file is not open_clip's")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
            normalizers.Lowercase(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
    sot, eot = vocab[CLIP_SOT], vocab[CLIP_EOT]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_SOT} $A {CLIP_EOT}", special_tokens=[(CLIP_SOT, sot), (CLIP_EOT, eot)]
    )
    settings = TokenizerSettings(
        kind="clip", max_length=CLIP_CONTEXT_LENGTH, pad_id=0, bos_id=sot, eos_id=eot
    )
    return tok, settings


def build_minilm_tokenizer() -> tuple[Tokenizer, TokenizerSettings]:
    """The package's WordPiece tokenizer without its fixed padding/truncation, and its settings."""
    model_dir = minilm_model_dir()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok, minilm_settings(model_dir)


def write_tokenizer(kind: str, out_dir: str | Path) -> dict:
    """Write OUT_DIR/tokenizer.json for `kind` ("clip" or "minilm"); returns the settings dict that the
    bundle manifest stores next to it."""
    builders = {"clip": build_clip_tokenizer, "minilm": build_minilm_tokenizer}
    if kind not in builders:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choices: {sorted(builders)}")
    tok, settings = builders[kind]()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    log.info("wrote %s tokenizer (%d tokens) to %s", kind, tok.get_vocab_size(), out / "tokenizer.json")
    return settings.to_dict()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["clip", "minilm"])
    ap.add_argument("out_dir")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings = write_tokenizer(args.kind, args.out_dir)
    print(json.dumps(settings))


if __name__ == "__main__":
    main()
