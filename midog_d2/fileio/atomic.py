"""The one way the project writes a file that must never be seen half-written: checkpoints,
threshold records, slide outputs, markers, annotation files."""

import os
import uuid
from typing import IO, Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def atomic_write(path: str, write: Callable[[IO[Any]], Any], mode: str = "wb") -> None:
    """``write(f)`` into a temporary file beside ``path`` (``.<name>.<pid>.<random>.tmp``,
    opened with ``mode``), flushed and fsynced, renamed over ``path``, and the folder
    fsynced: ``path`` is the old file or the whole new one, also after a crash. A failure (a
    full disk) removes the temporary file and says which file was not saved."""
    if mode not in ("w", "wb"):
        raise ValueError(f"{path}: mode must be 'w' or 'wb', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp = os.path.join(folder, name)
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(
            e.errno, f"could not save {path} ({e.strerror or e}); the previous file is intact"
        ) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a folder; the rename is done
        pass


def atomic_write_bytes(path: str, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str, text: str) -> None:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    if not isinstance(text, str):
        raise TypeError(f"{path}: expected text, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode("utf-8"))
