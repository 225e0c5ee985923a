"""Executes notebooks in place (kernel in the repository root) and keeps their outputs, cleaned
as tests/python/test_notebooks.py expects: consecutive stream outputs merged, carriage-return
redraws of progress bars resolved to what a terminal shows, empty streams dropped.

Usage::

    python scripts/run_notebooks.py notebooks/01_quickstart.ipynb ...
    DEEPREBIRTH_NOTEBOOK_QUICK=1 python scripts/run_notebooks.py notebooks/02_layerwise_finetune.ipynb

Record the machine and mode in notebooks/README.md ("Saved outputs").
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def resolve_carriage_returns(text: str) -> str:
    """Each line as a terminal leaves it: the text after its last carriage return."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def clean_outputs(outputs: list) -> list:
    """``outputs`` with neighbouring streams of one name merged, redraws resolved, blank streams
    dropped (repeated until dropping one leaves no new neighbours)."""
    merged: list = []
    for out in outputs:
        previous = merged[-1] if merged else None
        if (
            out.output_type == "stream"
            and previous is not None
            and previous.output_type == "stream"
            and previous.name == out.name
        ):
            previous.text += out.text
        else:
            merged.append(out)
    kept = []
    for out in merged:
        if out.output_type == "stream":
            out.text = re.sub(r"\n{3,}", "\n\n", resolve_carriage_returns(out.text))
            if not out.text.strip():
                continue
        kept.append(out)
    return kept if len(kept) == len(merged) else clean_outputs(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    for path in args.notebooks:
        notebook = nbformat.read(path, as_version=4)
        started = time.time()
        client = NotebookClient(
            notebook,
            timeout=args.timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(ROOT)}},
        )
        client.execute()
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs = clean_outputs(cell.outputs)
        nbformat.validate(notebook)
        nbformat.write(notebook, path)
        print(f"{path}: executed in {time.time() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
