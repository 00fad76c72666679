"""Read an offline wandb run back from its `.wandb` file, to check what a sync would upload.

wandb 0.31 ships no reader for this file in Python (the old `wandb.sdk.internal.datastore`
is gone; wandb-core reads it in Go). The format is the LevelDB log format: a 7-byte file
header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of records, each with a 7-byte
header (CRC-32 of type byte + data, little-endian length, type FULL/FIRST/MIDDLE/LAST);
each assembled record is a serialised `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = struct.Struct("<IHB")  # checksum, length, record type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)


def raw_records(path: Path) -> Iterator[bytes]:
    """The data of each record in a .wandb file, checksums verified."""
    data = Path(path).read_bytes()
    assert data[: len(FILE_HEADER)] == FILE_HEADER, f"{path} is not a .wandb file"
    pos, pending = len(FILE_HEADER), b""
    while pos + HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < HEADER.size:  # a block's tail too short for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        checksum, length, kind = HEADER.unpack_from(data, pos)
        chunk = data[pos + HEADER.size : pos + HEADER.size + length]
        pos += HEADER.size + length
        if kind == 0 and length == 0:
            continue
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"bad CRC in {path}"
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    """What an offline run recorded: its run record, config, history, summary, exit code."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    name: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Parse the single .wandb file of an offline run folder (`.../offline-run-*`)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = Path(run_dir).glob("*.wandb")
    run = OfflineRun()
    for raw in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.group = r.run_id, r.project, r.run_group
            run.name, run.job_type, run.tags = r.display_name, r.job_type, list(r.tags)
            run.config.update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run
