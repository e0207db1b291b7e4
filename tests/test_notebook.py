"""The Colab notebook executes top to bottom (tiny random-weight pipeline, as in CI)."""
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "colab_sampling.ipynb"


def test_colab_notebook_executes_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("TRELLIS_WEIGHTS", raising=False)
    monkeypatch.delenv("TRELLIS_DINOV2", raising=False)
    import os

    repo = str(NOTEBOOK.parents[1])  # the kernel imports this checkout even without `pip install -e .`
    monkeypatch.setenv("PYTHONPATH", repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "ONE jitted call" not in text and "second call (compiled)" in text
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) >= 2  # inline images and previews
