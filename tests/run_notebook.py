"""Run a notebook top to bottom in a fresh kernel of this interpreter and save it with its outputs (a test helper:
``python tests/run_notebook.py NOTEBOOK EXECUTED``; the kernel gets this process's environment and runs in the folder
of EXECUTED). Exits 1 with the failing cell's error when a cell fails; the test reads the saved notebook."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

CELL_TIMEOUT_S = 150


def this_python_kernel(kernel_dir: Path) -> KernelSpecManager:
    """A kernel spec that runs ipykernel with this interpreter, whatever other kernels exist."""
    spec_dir = kernel_dir / "mnist-lightning-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mnist-lightning tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)


def main(source: Path, executed: Path) -> int:
    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:
        cell.outputs = [] if cell.cell_type == "code" else cell.get("outputs")
    notebook.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    folder = executed.parent
    manager = KernelManager(kernel_name="mnist-lightning-test", kernel_spec_manager=this_python_kernel(folder / "k"))
    work_dir = folder / "work"
    work_dir.mkdir()
    client = NotebookClient(
        notebook, km=manager, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(work_dir)}}
    )
    try:
        client.execute()  # raises CellExecutionError on the first failing cell
    except CellExecutionError as err:
        print(err, file=sys.stderr)
        return 1
    finally:
        nbformat.write(notebook, executed)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
