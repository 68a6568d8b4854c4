"""The notebooks run top to bottom in a kernel of this venv, on synthetic data."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.integration

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "sml-venv"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def venv_kernel(tmp_path_factory) -> str:
    """A kernelspec pointing at this interpreter, so a user- or system-wide ``python3``
    kernel from another environment can never run the notebooks instead."""
    prefix = tmp_path_factory.mktemp("jupyter")
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", KERNEL],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(prefix / "share" / "jupyter")


def run_notebook(
    name: str, tmp_path: Path, jupyter_path: str, monkeypatch
) -> nbformat.NotebookNode:
    # The kernel inherits this environment: the test BENTOML_HOME, and no SML_DATA_CSV so
    # the notebooks use synthetic data, as on a fresh clone.
    monkeypatch.setenv("JUPYTER_PATH", jupyter_path)
    monkeypatch.delenv("SML_DATA_CSV", raising=False)
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(
        not cell.get("outputs") and cell.get("execution_count") is None
        for cell in notebook.cells
        if cell.cell_type == "code"
    ), f"{name}.ipynb is committed with outputs; clear them"
    client = NotebookClient(
        notebook, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )  # fmt: skip
    client.execute()
    return notebook


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_eda_notebook(tmp_path, venv_kernel, monkeypatch):
    notebook = run_notebook("01_eda", tmp_path, venv_kernel, monkeypatch)
    text = outputs_text(notebook)
    assert "20000 seeded synthetic listings" in text
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 2


def test_training_notebook(tmp_path, venv_kernel, monkeypatch):
    notebook = run_notebook("02_training", tmp_path, venv_kernel, monkeypatch)
    text = outputs_text(notebook)
    assert "'tag': 'ford_price:" in text
    assert "'source': 'synthetic'" in text
    assert "predicted_price" in text


def test_api_notebook(tmp_path, venv_kernel, monkeypatch, prediction_service):
    monkeypatch.setenv("SML_SERVICE_URL", prediction_service)
    notebook = run_notebook("03_api_request", tmp_path, venv_kernel, monkeypatch)
    text = outputs_text(notebook)
    assert "C-MAX      listed   8,295 GBP  predicted" in text
    assert "'model_tag': 'ford_price:" in text
    assert "p50" in text
