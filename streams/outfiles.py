"""Files written for users outside the lake (exports, `manage.py trades --out`): whole or not at all, and only
where they were asked for.

A file is written under a fresh name that `tempfile.mkstemp` creates in the target's folder (O_CREAT|O_EXCL,
a random name: nothing planted there in advance can be opened in its place, where a fixed `<file>.part` name
followed a symlink planted at it and overwrote whatever the link pointed to), fsynced, and moved over the
target with os.replace, which replaces a link at the target rather than writing through it. A failure on
the way removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644  # mkstemp's 0600 suits the temporary name, not the file a user asked for


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A file to write that becomes `path` when the block ends without an exception."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_whole(path: Path, chunks: Iterable[bytes | memoryview]) -> int:
    """Write the chunks as `path` (replaced only once whole); the number of bytes written."""
    size = 0
    with replacing(path) as file:
        for chunk in chunks:
            size += file.write(chunk)
    return size
