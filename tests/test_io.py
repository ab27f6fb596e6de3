"""Every writer of ``b4m.io``: a full disk, a read-only file system and a permission error are one
:class:`~b4m.errors.B4MError` naming the file (the safetensors writer's own error type too), the file that was
there is unchanged, and no temporary file is left; files get the umask's mode."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch
from PIL import Image

import b4m.io as io
from b4m.errors import B4MError, DiskFullError

WRITERS = {
    "text": lambda p: io.write_text(p.with_suffix(".txt"), "new"),
    "json": lambda p: io.write_json(p.with_suffix(".json"), {"new": 1}),
    "html": lambda p: io.write_text(p.with_suffix(".html"), "<p>new</p>"),
    "png": lambda p: io.save_image(Image.new("RGB", (4, 4)), p.with_suffix(".png")),
    "safetensors": lambda p: io.save_safetensors({"x": torch.ones(2)}, p.with_suffix(".safetensors"), {}),
}
FAULTS = {
    errno.ENOSPC: (DiskFullError, r"no space left writing .*old\.\w+; free space and rerun"),
    errno.EROFS: (B4MError, r"cannot write .*old\.\w+: read-only file system; choose a writable place"),
    errno.EACCES: (B4MError, r"cannot write .*old\.\w+: no permission"),
}


def _fail_in(monkeypatch, code, rust=False):
    """Make the next write into a temporary file fail with ``code`` after writing part of it."""
    real = os.replace

    def replace(src, dst):
        if str(src).endswith(".b4m-tmp"):
            if rust:
                from safetensors import SafetensorError

                raise SafetensorError(f"Error while serializing: I/O error: failed (os error {code})")
            raise OSError(code, os.strerror(code))
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)


@pytest.mark.parametrize("code", sorted(FAULTS))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_turns_a_storage_fault_into_one_line_and_keeps_the_old_file(
    tmp_path, monkeypatch, writer, code
):
    for suffix in (".txt", ".json", ".html", ".png", ".safetensors"):
        (tmp_path / f"old{suffix}").write_bytes(b"the old file")
    _fail_in(monkeypatch, code, rust=writer == "safetensors")
    kind, message = FAULTS[code]
    with pytest.raises(kind, match=message):
        WRITERS[writer](tmp_path / "old")
    assert all((tmp_path / f"old{s}").read_bytes() == b"the old file" for s in (".txt", ".json", ".png"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_fault_that_is_not_about_storage_keeps_its_traceback():
    assert io.storage_fault(ValueError("a bug")) is None
    assert io.storage_fault(OSError(errno.ENOENT, "No such file")) is None
    assert "no space left" in str(io.storage_fault(OSError(errno.ENOSPC, "full", "f.bin")))


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_writers_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = [WRITERS[w](tmp_path / "f") for w in sorted(WRITERS)]
        folder = io.make_temp_dir(tmp_path, ".x-")
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {mode}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


def test_the_log_drops_what_was_logged_after_a_checkpoint(tmp_path):
    seen = []
    log = io.JsonlLog(tmp_path / "train_log.jsonl", on_write=seen.append)
    for step in (10, 20, 30):
        log.write(step=step, loss=float(step))
    log.keep_until(20)
    import json

    assert [json.loads(x)["step"] for x in (tmp_path / "train_log.jsonl").read_text().splitlines()] == [
        10,
        20,
    ]
    assert len(seen) == 4  # every write and the truncation were reported to the folder's owner
