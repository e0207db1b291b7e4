"""Parity with the PyTorch reference: every case of the shared reference fixtures (network, sampler
and pipeline cases; the format is docs/reference_fixtures.md) through `check_fixture`, one test per
case so the workers share them. `fixtures/` must always pass; `fixtures_next/` holds kinds added
later, all of which are supported now, so they run too."""
from pathlib import Path

import pytest

from trellis_jax.tools import check_fixture

REPO = Path(__file__).resolve().parents[1]
# shared/reference sits beside the checkout: `../shared` from /work/main, `../../shared` from a worktree.
REFERENCE = next((p / "shared" / "reference" for p in REPO.parents if (p / "shared" / "reference").is_dir()),
                 REPO.parent / "shared" / "reference")
CASES = sorted(d for sub in ("fixtures", "fixtures_next") for d in (REFERENCE / sub).glob("*") if (d / "io.npz").exists())


@pytest.mark.parametrize("case", CASES or [None], ids=[f"{c.parent.name}/{c.name}" for c in CASES] or ["none"])
def test_reference_case_passes(case, capsys):
    if case is None:
        pytest.skip(f"no reference fixtures under {REFERENCE}")
    code = check_fixture.main([str(case)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip().splitlines()[-1] == "check_fixture: 1 passed, 0 failed"
