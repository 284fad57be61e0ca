"""A test-only callback that records each process's torch thread count when training starts.

Used by tests/test_cpu_threads.py through ``--trainer.callbacks+=cpu_thread_recorder.ThreadRecorder`` in DDP
subprocesses (tests/ is put on their PYTHONPATH): ``<folder>/rank<R>.json`` holds ``torch.get_num_threads()`` and
the ``OMP_NUM_THREADS`` the rank trains with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class ThreadRecorder(Callback):
    """Writes ``<folder>/rank<R>.json`` with this rank's torch thread count at the start of training."""

    def __init__(self, folder: str = "threads") -> None:
        self.folder = Path(folder)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
