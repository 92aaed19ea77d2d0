"""The shipped notebook runs top to bottom in a real Jupyter kernel (nbclient), offline, in about two minutes."""

import os

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("HF_TUNE_NOTEBOOK_STEPS", "6")
    monkeypatch.setenv("HF_TUNE_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    outputs = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "did you mean" in outputs and "README.md" in outputs
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # curves, confusion matrix, ROC/PR shown inline
    html = "".join(str(o.get("data", {}).get("text/html", "")) for c in nb.cells for o in c.get("outputs", []))
    assert "<progress" in html  # Trainer's notebook progress bar rendered in the kernel
    assert (tmp_path / "quickstart" / "model" / "model.safetensors").is_file()
    search = tmp_path / "search"  # the notebook's two-trial search through hf_tune.search
    assert (search / "best_recipe.yaml").is_file() and (search / "search_report.md").is_file()
    assert sorted(p.name for p in search.glob("trial-*")) == ["trial-0000", "trial-0001"]
    assert os.environ["HF_TUNE_NOTEBOOK_STEPS"] == "6"
