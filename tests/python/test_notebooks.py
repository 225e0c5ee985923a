"""The notebooks are committed with the outputs of one top-to-bottom run, and run top to bottom
in their small setting (``DEEPREBIRTH_NOTEBOOK_QUICK=1``), with the kernel in the repository root
so that this checkout's deeprebirth is the one imported."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The first code cell of each notebook prints where deeprebirth was imported from, relative to the
# kernel's working directory (the repository root): this checkout's package prints as "deeprebirth",
# a copy installed elsewhere as a "../" path.
IMPORTED_FROM_CHECKOUT = "from deeprebirth\n"


def _code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _output_text(output: nbformat.NotebookNode) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return "\n".join(output.traceback)
    return "\n".join(v for k, v in output.get("data", {}).items() if k.startswith("text/"))


def test_three_notebooks_are_committed_with_the_outputs_of_one_clean_run():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_layerwise_finetune.ipynb",
        "03_torchvision_deploy.ipynb",
    ]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = _code_cells(notebook)
        assert code, f"{path.name} has no code cell"
        # One kernel session, top to bottom: every cell ran, once, in order.
        counts = [cell.execution_count for cell in code]
        assert counts == list(range(1, len(code) + 1)), f"{path.name}: execution counts {counts}"
        outputs = [out for cell in code for out in cell.outputs]
        assert not [out for out in outputs if out.output_type == "error"], path.name
        first = "".join(out.get("text", "") for out in code[0].outputs)
        assert "quick=" in first and IMPORTED_FROM_CHECKOUT in first, first
        text = "".join(_output_text(out) for out in outputs)
        assert str(ROOT) not in text, f"{path.name}: outputs name this machine's checkout"
        assert "\r" not in text, f"{path.name}: progress-bar overwrites left in the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_in_quick_mode(path, monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPREBIRTH_NOTEBOOK_QUICK", "1")
    # The kernel inherits it: the quick setting's temporary folders (exported models) land here.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    notebook = nbformat.read(path, as_version=4)
    for cell in _code_cells(notebook):  # the executed copy must not reuse the committed outputs
        cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        notebook,
        timeout=600,  # per cell: a guard against hangs, not a speed limit (a busy CI machine)
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()  # raises CellExecutionError with the cell and traceback on any failure
    code = _code_cells(notebook)
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    first = "".join(out.get("text", "") for out in code[0].outputs)
    assert "quick=True" in first and IMPORTED_FROM_CHECKOUT in first, first
    for cell in code:
        assert not any(out.output_type == "error" for out in cell.outputs)
