"""Every file b4m writes goes through here: atomically (a temporary file in the same folder, then a rename, so a
reader never sees half a file and a killed write leaves the old one), with the mode a plain ``open()`` would give
under the umask, and with every file-system fault (a full disk or quota, a read-only file system, no permission)
turned into one :class:`~b4m.errors.B4MError` that names the file and what to do.

This module sits at the bottom of the package: it imports only the standard library (torch, safetensors and
Pillow load inside the functions that need them).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from b4m.errors import B4MError, DiskFullError

__all__ = [
    "JsonlLog",
    "atomic_write",
    "clean_temp_files",
    "file_mode",
    "fs_error",
    "make_dir",
    "make_temp_dir",
    "save_image",
    "save_safetensors",
    "storage_fault",
    "write_json",
    "write_text",
]


def file_mode(folder: bool = False) -> int:
    """The mode a plain ``open()``/``mkdir()`` gives under the current umask. ``mkstemp``/``mkdtemp`` make
    0600/0700, which a ComfyUI or A1111 service running as another user cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


_OS_ERROR = re.compile(r"(?:os error |code: )(\d+)")


def _errno_of(err: BaseException) -> int | None:
    """The ``errno`` of an ``OSError``, or of the Rust I/O error the safetensors writer raises in its own type
    (``... No space left on device (os error 28)``)."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno
    found = _OS_ERROR.search(str(err))
    return int(found.group(1)) if found else None


def fs_error(err: BaseException, path: str | Path, hint: str = "rerun") -> B4MError | None:
    """The one-line error for a failed write of ``path`` (``hint``: what to do once the cause is fixed), or
    ``None`` if ``err`` is not a file-system fault."""
    code = _errno_of(err)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left writing {path}; free space and {hint}")
    if code == errno.EROFS:
        return B4MError(f"cannot write {path}: read-only file system; choose a writable place and {hint}")
    if code in (errno.EACCES, errno.EPERM):
        return B4MError(f"cannot write {path}: no permission; fix the permissions or choose another place")
    if isinstance(err, OSError) or code is not None:
        why = getattr(err, "strerror", None) or str(err).splitlines()[0]
        return B4MError(f"cannot write {path} ({why}); {hint}")
    return None


_STORAGE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def storage_fault(err: BaseException) -> B4MError | None:
    """:func:`fs_error` for an error raised far from its writer, if it is a full disk, a read-only file system
    or a permission problem (other errors are bugs, and keep their traceback)."""
    if _errno_of(err) not in _STORAGE:
        return None
    return fs_error(err, getattr(err, "filename", None) or "a file")


_TEMP_SUFFIX = ".b4m-tmp"
_TEMP = re.compile(r"^\..+\.b4m-tmp$")


def clean_temp_files(folder: str | Path) -> None:
    """Remove the temporary files a killed :func:`atomic_write` left in ``folder`` (only names it makes)."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.iterdir():
            if _TEMP.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)


def make_dir(path: str | Path, hint: str = "rerun") -> Path:
    """``mkdir -p`` with the umask's mode; a fault is one line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise fs_error(err, path, hint) from None  # type: ignore[misc]
    return path


def make_temp_dir(
    parent: str | Path, prefix: str, hint: str = "rerun", shown: str | Path | None = None
) -> Path:
    """A new hidden folder in ``parent`` with the umask's mode (``mkdtemp`` alone makes it 0700); a fault names
    ``shown`` (what the folder will become), else the parent."""
    make_dir(parent, hint)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        os.chmod(tmp, file_mode(folder=True))
    except OSError as err:
        raise fs_error(err, shown or parent, hint) from None  # type: ignore[misc]
    return tmp


def atomic_write(path: str | Path, write: Callable[[Path], None], hint: str = "rerun") -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, give it the umask's mode and rename it onto
    ``path``. On any failure ``path`` is as it was and the temporary file is gone; a file-system fault is one
    :class:`B4MError` (:func:`fs_error`)."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        mapped = fs_error(err, path, hint) if isinstance(err, Exception) else None
        if mapped is not None:
            raise mapped from None
        raise
    return path


def write_text(path: str | Path, text: str, hint: str = "rerun") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), hint)


def write_json(path: str | Path, value: Any, hint: str = "rerun", indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(value, indent=indent, sort_keys=indent is not None) + "\n", hint)


def save_safetensors(
    tensors: Mapping[str, Any], path: str | Path, metadata: dict[str, str], hint: str = "rerun"
) -> Path:
    """Write torch ``tensors`` as a safetensors file (contiguous, on the CPU) with string ``metadata``."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata), hint)


def save_image(image: Any, path: str | Path, hint: str = "rerun") -> Path:
    """Save a PIL image (format from ``path``'s suffix)."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt), hint)


def _json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON: the log records ``null`` for them."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class JsonlLog:
    """A JSON-lines log (``train_log.jsonl``), appended one record per line; each record gets ``time_s``, the
    seconds since the log was opened. ``on_write`` is told after each line (the owner of the folder records
    the file's new hash). :meth:`keep_until` drops the records of steps after a checkpoint, so a resumed run
    does not log a step twice."""

    def __init__(
        self, path: Path, enabled: bool = True, on_write: Callable[[Path], None] | None = None
    ) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.on_write = on_write
        self.t0 = time.perf_counter()

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record["time_s"] = round(time.perf_counter() - self.t0, 3)
        line = json.dumps({k: _json_safe(v) for k, v in record.items()}, allow_nan=False)
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as err:
            raise fs_error(err, self.path) from None  # type: ignore[misc]
        if self.on_write is not None:
            self.on_write(self.path)

    def keep_until(self, step: int) -> None:
        """Drop every record whose ``step`` is after ``step`` (what a killed run logged after its checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [x for x in lines if x.strip() and json.loads(x).get("step", 0) <= step]
        if len(kept) != len([x for x in lines if x.strip()]):
            write_text(self.path, "".join(x + "\n" for x in kept))
            if self.on_write is not None:
                self.on_write(self.path)
