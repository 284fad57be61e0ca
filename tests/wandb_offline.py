"""Read what an offline W&B run wrote: its ``.wandb`` transaction log, parsed with wandb's own protobufs.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records, each with a 7-byte header
(CRC32, length, type: 1 full, 2 first, 3 middle, 4 last chunk).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: str | Path) -> list[pb.Record]:
    """Every record of a ``run-*.wandb`` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, chunks, pos = [], [], HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            break
        chunks.append(payload)
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


@dataclass
class OfflineRun:
    """The parts of an offline run that tests look at."""

    run_id: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[pb.ArtifactRecord] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    group: str = ""

    def metric(self, key: str) -> list[Any]:
        """Every logged value of ``key``, in step order."""
        return [row[key] for row in self.history if key in row]


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_dir: str | Path) -> OfflineRun:
    """Parse ``runs/wandb/offline-run-*`` (the folder) into config, history, summary and artifacts."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    run = OfflineRun(run_id=log.stem.removeprefix("run-"))
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.tags, run.group = list(record.run.tags), record.run.run_group
            for item in record.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "files":
            run.files.extend(f.path for f in record.files.files)
    return run
