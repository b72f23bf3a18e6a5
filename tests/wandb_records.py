"""Read an offline W&B run's ``run-<id>.wandb`` file: the records ``wandb sync`` uploads.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic, version) and then LevelDB's
log format (32 KiB blocks; each record a CRC, a length, a type: full, first, middle or last) of
serialised ``wandb_internal_pb2.Record`` messages. wandb >= 0.20 reads it only in Go, so the tests
read it here to check what a run holds.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """Every record of the log, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    out, pos, parts = [], HEADER, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # a block's tail too short for a header is padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break  # zero padding at the end
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, FIRST):
            parts = payload
        else:
            parts += payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            out.append(record)
    return out


def run_contents(run_dir: Path) -> dict[str, Any]:
    """An offline run's name, group, job type, config, logged history rows and final summary."""
    [log] = Path(run_dir).glob("run-*.wandb")
    run: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "exit": None}
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.update(name=r.display_name, group=r.run_group, job_type=r.job_type)
            run["config"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":  # a chart's settings come as nested keys (_wandb/visualize/<key>)
            run["config"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run["summary"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "exit":
            run["exit"] = record.exit.exit_code
    return run
