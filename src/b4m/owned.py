"""What b4m made, and may therefore remove or replace: one rule for every command that writes into a folder.

Each folder b4m writes into holds a manifest, ``.b4m-manifest.json``, naming every file b4m wrote there with its
SHA-256 and every sub-folder it made (which has a manifest of its own). An entry is b4m's only while the manifest
records it *and* the file's bytes still hash to the recorded value: a file a user put in its place, or edited, is
theirs. b4m removes, replaces or prunes only its own entries; everything else in the folder is left as it is.

A command checks what it is about to write with :func:`claim` before any heavy work: a name it would write that
already holds something b4m did not make is refused in one line, with or without ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from b4m.errors import B4MError
from b4m.io import clean_temp_files, fs_error, make_dir, write_json

__all__ = ["MANIFEST", "Folder", "check_file", "claim", "record_file", "sha256_of"]

MANIFEST = ".b4m-manifest.json"
_KIND = "b4m manifest"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Folder:
    """A folder and its manifest (read when made; :meth:`save` writes it back atomically).

    ``info`` holds what the folder's maker records about it (for a training run: the run's identity and
    whether it finished)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.load()

    def load(self) -> None:
        """(Re)read the manifest: every change reads it first, so that two handles on one folder (a run's and
        its checkpoint writer's) never drop each other's entries."""
        self.entries: dict[str, dict[str, Any]] = {}
        self.info: dict[str, Any] = {}
        self.known = False  # a readable b4m manifest is there
        try:
            data = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and data.get("kind") == _KIND and isinstance(data.get("entries"), dict):
            self.entries = dict(data["entries"])
            self.info = dict(data.get("info") or {})
            self.known = True

    # ---------------------------------------------------------------------------------------------- reading
    def owns(self, name: str) -> bool:
        """Whether ``name`` (a direct child) is b4m's: recorded, and unchanged since (files: same SHA-256;
        folders: still a folder with b4m's manifest)."""
        entry, path = self.entries.get(name), self.path / name
        if entry is None:
            return False
        if entry.get("dir"):
            return path.is_dir() and not path.is_symlink() and Folder(path).known
        return path.is_file() and not path.is_symlink() and sha256_of(path) == entry.get("sha256")

    def foreign(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that exist and are not b4m's (the manifest itself counts when it is not b4m's)."""
        found = [n for n in names if (self.path / n).exists() or (self.path / n).is_symlink()]
        bad = [n for n in found if not self.owns(n)]
        if (self.path / MANIFEST).exists() and not self.known:
            bad.append(MANIFEST)
        return bad

    def others(self) -> list[str]:
        """Every entry of the folder that is not b4m's (a user's files), sorted."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name != MANIFEST and not self.owns(p.name))

    def child(self, name: str) -> Folder:
        """Sub-folder ``name``, made (with its manifest) and recorded here if it is not yet."""
        sub = Folder(self.path / name)
        if not sub.known:
            make_dir(sub.path)
            sub.save()
        self.load()
        if not self.entries.get(name, {}).get("dir"):
            self.entries[name] = {"dir": True}
            self.save()
        return sub

    # ---------------------------------------------------------------------------------------------- writing
    def save(self) -> None:
        make_dir(self.path)
        write_json(self.path / MANIFEST, {"kind": _KIND, "entries": self.entries, "info": self.info})
        self.known = True

    def record(self, *names: str) -> None:
        """Record files ``names`` (just written by b4m) with their current SHA-256."""
        self.load()
        for name in names:
            path = self.path / name
            self.entries[name] = {"dir": True} if path.is_dir() else {"sha256": sha256_of(path)}
        self.save()

    def remove(self, name: str) -> list[str]:
        """Remove ``name`` if it is b4m's (a folder: everything b4m made in it, then the folder if nothing else
        is left); returns what was left because b4m did not make it (paths relative to this folder)."""
        path = self.path / name
        if not (path.exists() or path.is_symlink()):
            self.entries.pop(name, None)
            return []
        if not self.owns(name):
            return [name]
        if self.entries[name].get("dir"):
            kept = [f"{name}/{k}" for k in Folder(path).clear()]
        else:
            kept = []
            try:
                path.unlink()
            except OSError as err:
                raise fs_error(err, path) from None  # type: ignore[misc]
        if not kept:
            self.load()
            self.entries.pop(name, None)
            self.save()
        return kept

    def set_info(self, **values: Any) -> None:
        """Update what the folder's maker records about it (:attr:`info`)."""
        self.load()
        self.info.update(values)
        self.save()

    def clear(self) -> list[str]:
        """Remove everything b4m made here (and the folder itself if that empties it); returns what was kept."""
        clean_temp_files(self.path)
        for tmp in self.path.glob(".ckpt-*"):  # a checkpoint write killed half-way (names only b4m makes)
            if tmp.is_dir() and Folder(tmp).known:
                shutil.rmtree(tmp, ignore_errors=True)
        kept: list[str] = []
        for name in sorted(self.entries):
            kept += self.remove(name)
        kept += [n for n in self.others() if n not in kept]
        if kept:
            return kept
        (self.path / MANIFEST).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()
        return []


def claim(
    folder: str | Path,
    writes: Iterable[str],
    option: str = "--out",
    overwrite: bool = False,
    what: str = "b4m",
) -> Folder:
    """The :class:`Folder` a command writes ``writes`` into, checked before any work: refuse in one line if one
    of those names holds something b4m did not make. Creates nothing."""
    f = Folder(folder)
    foreign = f.foreign(writes)
    if foreign:
        shown = ", ".join(n + ("/" if (f.path / n).is_dir() else "") for n in foreign)
        extra = " (--overwrite too replaces only files b4m made)" if overwrite else ""
        raise B4MError(
            f"{option} {folder}: holds {shown}, which {what} did not make; choose another {option}: b4m never "
            f"removes or replaces files it did not make{extra}"
        )
    return f


def check_file(path: str | Path, option: str, overwrite: bool) -> None:
    """A file a command is about to write at ``path`` (a name the user gave): refused in one line if it exists and
    b4m did not make it, or if it is b4m's and ``overwrite`` is not set."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not Folder(path.parent).owns(path.name):
        raise B4MError(
            f"{option} {path}: exists, and b4m did not make it; choose another path (b4m never replaces files it "
            "did not make, with or without --overwrite)"
        )
    if not overwrite:
        raise B4MError(f"{option} {path}: exists; choose another path, or pass --overwrite to replace it")


def record_file(path: str | Path) -> Path:
    """Record ``path``, just written, as b4m's (in its folder's manifest); returns it."""
    path = Path(path)
    Folder(path.parent).record(path.name)
    return path
