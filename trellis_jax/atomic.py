"""Atomic outputs: the one way this code base writes a file or an output directory.

    atomic_write(path, lambda tmp: tmp.write_bytes(data))      # a file appears whole or not at all
    atomic_write_many({p1: writer1, p2: writer2})              # several files, renamed after all are written
    with atomic_directory(out / "sample_00") as d: ...         # a directory appears complete or not at all

Each file is written to a UNIQUE temporary name in its own directory (`tempfile`, so two writers never
share one) and renamed into place with `os.replace`; on an error the temporary file is removed. A
directory is assembled as `<name>.partial-XXXX` beside its final name and renamed when complete, so a
killed run leaves only a `.partial-*` directory (visibly incomplete), never a half-filled final one;
an existing non-empty final directory is never overwritten (`FileExistsError`).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


def _temp_sibling(path: Path, keep_suffix: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    return Path(name)


def atomic_write_many(writers: dict[str | Path, Callable[[Path], Any]], keep_suffix: bool = False) -> list[Path]:
    """Call each `write(tmp_path)` on a unique temporary sibling of its path, then rename all into place.

    An exception in any writer leaves every target untouched and no temporary file behind.
    `keep_suffix` ends the temporary name in the target's suffix, for writers (ffmpeg) that take the
    container format from the file name."""
    tmps: dict[Path, Path] = {}
    try:
        for path, write in writers.items():
            path = Path(path)
            tmps[path] = _temp_sibling(path, keep_suffix)
            write(tmps[path])
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    return list(tmps)


def atomic_write(path: str | Path, write: Callable[[Path], Any], keep_suffix: bool = False) -> Path:
    """`write(tmp_path)` then rename onto `path`. Writers must not infer a format from tmp_path's suffix
    unless `keep_suffix` (then tmp_path ends in path's suffix)."""
    return atomic_write_many({path: write}, keep_suffix)[0]


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def check_output_dir(path: str | Path) -> Path:
    """Raise FileExistsError if `path` exists and is not an empty directory (an earlier or concurrent run's output)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} already exists (an earlier run's output?); choose another --out or remove it")
    return path


def check_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove a file can be written there (OSError naming it otherwise)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise OSError(f"{path}: cannot write output there ({e.strerror or e})") from e
    return path


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a fresh `<final>.partial-XXXX` directory; on success rename it to `final`, on error remove it."""
    final = check_output_dir(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{final.name}.partial-", dir=final.parent))
    os.chmod(partial, 0o777 & ~_UMASK)
    try:
        yield partial
        try:
            os.rename(partial, final)  # fails if another run filled `final` meanwhile; replaces an empty one
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise FileExistsError(f"{final} was written by another run meanwhile; this run's output was discarded") from e
            raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
