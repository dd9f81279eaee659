"""Read W&B's offline run files (``run-<id>.wandb``) for tests, without W&B's own reader.

The file is a LevelDB-style log, as written by wandb-core (checked against wandb 0.31):

    header   7 bytes: ident b":W&B", magic 0xBEE1 (uint16 LE), version 0 (uint8)
    blocks   of 32 KiB, counted from the start of the file (the header sits in block 0);
             each holds tightly packed chunks; a tail of fewer than 7 bytes is zero padding
    chunk    crc32 (uint32 LE) | length (uint16 LE) | type (uint8) | payload[length]
             crc = standard CRC-32 (IEEE, zlib.crc32), not LevelDB's masked CRC-32C,
             computed over the type byte followed by the payload
             type 1 = full record, 2 = first, 3 = middle, 4 = last chunk of a record
    record   the reassembled payload: a serialized ``wandb_internal_pb2.Record``

Every malformation raises :class:`WandbFileError`, so a test that decodes a file also checks that
the file is complete (no torn chunk, no unfinished record).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

HEADER = struct.Struct("<4sHB")
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
CHUNK = struct.Struct("<IHB")
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The bytes are not a complete, intact W&B run file."""


def run_files(wandb_dir: Path) -> list[Path]:
    """The ``.wandb`` files under a W&B directory, oldest run first (dirs are time-stamped)."""
    return sorted(Path(wandb_dir).glob("*run-*/run-*.wandb"), key=lambda p: p.parent.name)


def read_payloads(data: bytes) -> list[bytes]:
    """The record payloads of a run file's bytes, chunks checked and reassembled."""
    if len(data) < HEADER.size:
        raise WandbFileError(f"file of {len(data)} bytes has no header")
    ident, magic, version = HEADER.unpack_from(data)
    if (ident, magic, version) != (IDENT, MAGIC, VERSION):
        raise WandbFileError(f"bad header {ident!r} {magic:#x} v{version}")
    payloads: list[bytes] = []
    pending: list[bytes] | None = None  # chunks of a record that is not complete yet
    pos = HEADER.size
    for block_start in range(0, len(data), BLOCK_SIZE):
        block_end = min(block_start + BLOCK_SIZE, len(data))
        pos = max(pos, block_start)
        while pos + CHUNK.size <= block_end:
            crc, length, kind = CHUNK.unpack_from(data, pos)
            start, end = pos + CHUNK.size, pos + CHUNK.size + length
            if end > block_end:
                raise WandbFileError(f"chunk at {pos} runs past its block ({length} bytes)")
            body = data[start:end]
            if zlib.crc32(bytes([kind]) + body) != crc:
                raise WandbFileError(f"crc mismatch in chunk at {pos}")
            pending = _add_chunk(payloads, pending, kind, body, pos)
            pos = end
        if any(data[pos:block_end]):
            raise WandbFileError(f"non-zero padding at {pos}")
        pos = block_end
    if pending is not None:
        raise WandbFileError("file ends inside a record")
    return payloads


def _add_chunk(
    payloads: list[bytes], pending: list[bytes] | None, kind: int, body: bytes, pos: int
) -> list[bytes] | None:
    """Apply one chunk to the reassembly state; returns the new pending chunk list."""
    if kind in (FULL, FIRST) and pending is not None:
        raise WandbFileError(f"record interrupted by a new one at {pos}")
    if kind in (MIDDLE, LAST) and pending is None:
        raise WandbFileError(f"continuation chunk without a first chunk at {pos}")
    if kind == FULL:
        payloads.append(body)
        return None
    if kind == FIRST:
        return [body]
    if kind == MIDDLE:
        return [*pending, body]
    if kind == LAST:
        payloads.append(b"".join([*pending, body]))
        return None
    raise WandbFileError(f"unknown chunk type {kind} at {pos}")


def read_records(path: Path) -> list[pb.Record]:
    """Every record of a run file, in order."""
    return [pb.Record.FromString(p) for p in read_payloads(Path(path).read_bytes())]


def of_type(records: list[pb.Record], name: str) -> list[Any]:
    """The payloads of the records of one type ("history", "summary", "exit", ...)."""
    return [getattr(r, name) for r in records if r.WhichOneof("record_type") == name]


def _path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _put(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def _drop(target: dict[str, Any], path: list[str]) -> None:
    for key in path[:-1]:
        target = target.get(key, {})
    target.pop(path[-1], None)


def _history_value(item: pb.HistoryItem) -> Any:
    """A history item's value: typed fields in newer writers, value_json otherwise."""
    which = item.WhichOneof("value")
    if which is None:
        return json.loads(item.value_json)
    if which == "none":
        return None
    if which == "json":
        return json.loads(item.json)
    return getattr(item, which)


def history_rows(records: list[pb.Record]) -> list[dict[str, Any]]:
    """One dict per logged step; nested keys (media, tables) become nested dicts."""
    rows = []
    for history in of_type(records, "history"):
        row: dict[str, Any] = {}
        for item in history.item:
            _put(row, _path(item), _history_value(item))
        rows.append(row)
    return rows


def _apply_updates(target: dict[str, Any], record: Any) -> dict[str, Any]:
    for item in record.update:
        _put(target, _path(item), json.loads(item.value_json))
    for item in record.remove:
        _drop(target, _path(item))
    return target


def config(records: list[pb.Record]) -> dict[str, Any]:
    """The run's config: the run record's, then every config update, in order."""
    values: dict[str, Any] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            _apply_updates(values, record.run.config)
        elif kind == "config":
            _apply_updates(values, record.config)
    return values


def summary(records: list[pb.Record]) -> dict[str, Any]:
    """The run's final summary: every summary update and removal applied in order."""
    values: dict[str, Any] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            _apply_updates(values, record.run.summary)
        elif kind == "summary":
            _apply_updates(values, record.summary)
    return values


def run_info(records: list[pb.Record]) -> dict[str, Any]:
    """Identity of the run, from its (first) run record."""
    runs = of_type(records, "run")
    if not runs:
        raise WandbFileError("no run record")
    run = runs[0]
    return {
        "id": run.run_id,
        "project": run.project,
        "entity": run.entity,
        "group": run.run_group,
        "job_type": run.job_type,
        "name": run.display_name,
        "tags": list(run.tags),
    }


def exit_code(records: list[pb.Record]) -> int | None:
    """The exit code of the run's exit record (None when the run never finished)."""
    exits = of_type(records, "exit")
    return exits[-1].exit_code if exits else None
