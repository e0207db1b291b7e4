"""Docstrings cite only documents in the repository: every `docs/<page>.md#anchor` they name exists,
and none cites the reference notes that live outside it."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("trellis_jax", "data_pipeline", "experiments", "tests", "tools", "benchmarks", "kernels")
DOC_REF = re.compile(r"docs/([\w/-]+\.md)(?:#([\w-]+))?")
# Names of the notes kept outside the repository (split so this file does not match itself).
OUTSIDE = re.compile("|".join(["TRELLIS_" + "SPEC", r"\b[Ss][Pp][Ee][Cc]\s*§", "§" + r"\s*\d", r"\bFIXTURES" + r"\.md",
                               "ENV_" + "NOTES", r"\bHELP" + r"ERS\b"]))


def _sources():
    for d in SOURCE_DIRS:
        yield from sorted((ROOT / d).rglob("*.py")) if (ROOT / d).is_dir() else ()


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces -> hyphens."""
    heads = [l.lstrip("#").strip() for l in page.read_text().splitlines() if l.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_cited_doc_pages_and_anchors_exist():
    missing = []
    for path in _sources():
        for m in DOC_REF.finditer(path.read_text()):
            page = ROOT / "docs" / m.group(1)
            if not page.is_file() or (m.group(2) and m.group(2) not in _anchors(page)):
                missing.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not missing, "\n".join(missing)


def test_no_source_cites_a_document_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{i}: {l.strip()}" for p in _sources()
            for i, l in enumerate(p.read_text().splitlines(), 1) if OUTSIDE.search(l)]
    assert not hits, "\n".join(hits)
