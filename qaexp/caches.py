"""Caches that verify themselves: every Arrow file qaexp has the datasets library cache (the
materialised raw data, the windows) gets a checksum file beside it when it is written, and is
checked against it whenever it is loaded again. A cached file that cannot be read, or whose
content no longer matches (garbled, truncated, emptied, or from a qaexp without checksums), is
rebuilt with a warning: a cache never yields a silently different result.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import datasets

from qaexp.errors import QAExpError

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".qaexp-sha256.json"
# Errors of the cache folder rather than of a cached file: rebuilding would not help.
ENVIRONMENT_ERRORS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.ENOSPC,
    errno.EDQUOT,
}


def file_digest(file: Path) -> dict:
    """{"bytes": size, "sha256": hex digest} of a file's content."""
    with open(file, "rb") as fh:
        return {
            "bytes": Path(file).stat().st_size,
            "sha256": hashlib.file_digest(fh, "sha256").hexdigest(),
        }


def _write_checksum(file: Path, digest: dict) -> None:
    sidecar = file.with_name(file.name + CHECKSUM_SUFFIX)
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(digest))
    os.replace(tmp, sidecar)


def check_cache_files(dataset: datasets.Dataset, built_since: float) -> str | None:
    """None when every cache file of `dataset` matches its checksum; files written after
    `built_since` (time.time()) are new and get their checksum now. Otherwise what is wrong."""
    for entry in dataset.cache_files:
        file = Path(entry["filename"])
        sidecar = file.with_name(file.name + CHECKSUM_SUFFIX)
        if file.stat().st_mtime >= built_since:
            _write_checksum(file, file_digest(file))
            continue
        try:
            expected = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return f"{file} has no readable checksum ({sidecar.name})"
        if file_digest(file) != expected:
            return f"{file} does not match the checksum written with it"
    return None


def verified_dataset(build: Callable[[bool], datasets.Dataset], what: str) -> datasets.Dataset:
    """`build(fresh)` returns a cached dataset (fresh=True: rebuilt, ignoring the cache). Use
    the cache when it loads and matches its checksums; otherwise warn and rebuild it once."""
    began = time.time()
    try:
        dataset = build(False)
        problem = check_cache_files(dataset, began)
    except QAExpError:
        raise
    except OSError as err:
        if err.errno in ENVIRONMENT_ERRORS:  # the cache folder itself is the problem
            raise
        problem = f"could not be read ({type(err).__name__}: {err})"
    except Exception as err:  # any failure to read a cached file means: rebuild it
        problem = f"could not be read ({type(err).__name__}: {err})"
    if problem is None:
        return dataset
    log.warning("The cached %s is damaged: %s. Rebuilding it.", what, problem)
    began = time.time()
    dataset = build(True)
    check_cache_files(dataset, began)
    return dataset


def content_fingerprint(dataset: datasets.Dataset, rows: int = 10_000) -> str:
    """A sha256 of the records `dataset` holds, in order: the same records give the same
    fingerprint whichever file, cache folder or Arrow layout they come from. (The cache
    files' own checksums cannot serve: rebuilding a cache from the same records writes other
    bytes.) Read in slices of `rows` records, each serialised alone (Arrow IPC, without the
    schema's metadata)."""
    import pyarrow as pa

    digest = hashlib.sha256()
    arrow = dataset.with_format("arrow")
    for start in range(0, len(dataset), rows):
        table = arrow[start : start + rows].replace_schema_metadata(None).combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue())
    return digest.hexdigest()
