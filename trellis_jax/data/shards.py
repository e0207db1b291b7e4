"""ArrayRecord shards with crash-safe commits, and readers whose errors name shard and index.

A dataset directory holds committed shards `shards/<prefix>-NNNNN.arrayrecord` (options
`group_size:1`, so every record is randomly accessible) and, next to each, `<same>.ids.json` listing
the asset ids in record order. A shard is written under a `.tmp` name; committing writes the ids file
first and then renames the shard, so at any moment the committed shards are exactly the ones that
exist under their final name. After a crash, `ShardWriter` removes `.tmp` files and orphaned ids
files, and `committed_ids` tells the driver which assets are done — nothing is lost or duplicated.
"""
from __future__ import annotations

import glob
import json
import os
import re

from array_record.python import array_record_module as ar

from trellis_jax.atomic import atomic_write

from trellis_jax.data.schema import RecordError, decode

WRITER_OPTIONS = "group_size:1"
SHARD_SUFFIX = ".arrayrecord"
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<num>\d{5})\.arrayrecord$")


class ShardError(RecordError):
    """A shard (or one of its records) that cannot be read; the message names file and index."""


def _fsync_dir(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def shard_dir(root: str) -> str:
    return os.path.join(root, "shards")


def list_shards(root_or_dir: str, prefix: str | None = None) -> list[str]:
    """Committed shard paths, sorted (accepts the dataset root or its shards/ directory)."""
    d = shard_dir(root_or_dir) if os.path.isdir(shard_dir(root_or_dir)) else root_or_dir
    out = []
    for path in sorted(glob.glob(os.path.join(d, "*" + SHARD_SUFFIX))):
        m = _SHARD_RE.match(os.path.basename(path))
        if m and (prefix is None or m["prefix"] == prefix):
            out.append(path)
    return out


def shard_ids(path: str) -> list[str]:
    """Asset ids of a committed shard, in record order (from its ids file)."""
    with open(path + ".ids.json") as f:
        return json.load(f)


def committed_ids(root: str) -> dict[str, str]:
    """{asset id: shard path} over every committed shard of the dataset."""
    out = {}
    for path in list_shards(root):
        for asset_id in shard_ids(path):
            out[asset_id] = path
    return out


def _write_synced(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class ShardWriter:
    """Appends encoded records into shards of at most `shard_size` records, committing atomically."""

    def __init__(self, root: str, prefix: str = "data", shard_size: int = 64):
        if not re.fullmatch(r"[A-Za-z0-9_.]+", prefix):
            raise ValueError(f"shard prefix {prefix!r} must be [A-Za-z0-9_.]+")
        self.dir = shard_dir(root)
        self.prefix = prefix
        self.shard_size = int(shard_size)
        os.makedirs(self.dir, exist_ok=True)
        self._recover()
        existing = [int(_SHARD_RE.match(os.path.basename(p))["num"]) for p in list_shards(self.dir, prefix)]
        self._next = max(existing, default=-1) + 1
        self._writer = None
        self._ids: list[str] = []
        self._tmp = None

    def _recover(self):
        """Drop what an interrupted run left half-written (uncommitted shards, orphaned ids files)."""
        for tmp in glob.glob(os.path.join(self.dir, f"{self.prefix}-*.tmp")) + glob.glob(os.path.join(self.dir, f".{self.prefix}-*.tmp")):
            os.remove(tmp)
        for ids in glob.glob(os.path.join(self.dir, f"{self.prefix}-*{SHARD_SUFFIX}.ids.json")):
            if not os.path.exists(ids[: -len(".ids.json")]):
                os.remove(ids)

    def _path(self, num: int) -> str:
        return os.path.join(self.dir, f"{self.prefix}-{num:05d}{SHARD_SUFFIX}")

    def add(self, asset_id: str, record: bytes):
        if self._writer is None:
            self._tmp = self._path(self._next) + ".tmp"
            self._writer = ar.ArrayRecordWriter(self._tmp, WRITER_OPTIONS)
        self._writer.write(record)
        self._ids.append(asset_id)
        if len(self._ids) >= self.shard_size:
            self.commit()

    def commit(self) -> str | None:
        """Close and publish the open shard (no-op when empty); returns its path."""
        if self._writer is None:
            return None
        self._writer.close()
        final = self._path(self._next)
        atomic_write(final + ".ids.json", lambda tmp: _write_synced(tmp, json.dumps(self._ids)))
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, final)
        _fsync_dir(self.dir)
        self._writer, self._ids, self._tmp = None, [], None
        self._next += 1
        return final

    def close(self):
        self.commit()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close()


def open_reader(path: str):
    """(ArrayRecordReader, num_records) for a shard; missing or truncated files raise ShardError."""
    if not os.path.exists(path):
        raise ShardError(f"{path}: shard not found")
    reader = None
    try:
        reader = ar.ArrayRecordReader(path, "readahead_buffer_size:0")
        n = reader.num_records()
        if not reader.ok():  # a truncated file opens "successfully" with 0 records
            raise RuntimeError("reader not ok after open")
    except Exception as e:
        close_reader(reader)
        raise ShardError(f"{path}: unreadable or truncated ArrayRecord shard ({e or type(e).__name__})") from e
    if os.path.exists(path + ".ids.json"):
        expected = len(shard_ids(path))
        if n != expected:
            close_reader(reader)
            raise ShardError(f"{path}: holds {n} records but its ids file lists {expected} (truncated?)")
    return reader, n


def read_record(reader, path: str, index: int, fields: tuple[str, ...] | None = None):
    """Decode record `index` of an open shard; errors name the shard and the index."""
    try:
        buf = reader.read([index])[0]
    except Exception as e:
        raise ShardError(f"{path}: record {index} unreadable ({e or type(e).__name__})") from e
    try:
        return decode(buf, fields=fields)
    except RecordError as e:
        raise ShardError(f"{path}: record {index}: {e}") from e


def read_shard(path: str, fields: tuple[str, ...] | None = None):
    """Yield (meta, arrays) of every record of a shard; errors name the shard and record index."""
    reader, n = open_reader(path)
    try:
        for i in range(n):
            yield read_record(reader, path, i, fields)
    finally:
        close_reader(reader)


def close_reader(reader):
    """ArrayRecordReader.close() re-raises the reader's earlier failure; that one was reported."""
    if reader is not None:
        try:
            reader.close()
        except Exception:
            pass


def read_dataset(root: str, fields: tuple[str, ...] | None = None):
    """Yield (meta, arrays) over all committed shards of a dataset, in shard order."""
    for path in list_shards(root):
        yield from read_shard(path, fields)


def main(argv=None):
    """python -m trellis_jax.data.shards DIR [--verify]: list committed shards; --verify decodes every record."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("root")
    p.add_argument("--verify", action="store_true")
    args = p.parse_args(argv)
    total = 0
    for path in list_shards(args.root):
        reader, n = open_reader(path)
        close_reader(reader)
        if args.verify:
            for meta, arrays in read_shard(path):
                pass
        total += n
        print(f"{path}: {n} records")
    print(f"{total} records in {len(list_shards(args.root))} shards" + (" (all decoded)" if args.verify else ""))


if __name__ == "__main__":
    main()
