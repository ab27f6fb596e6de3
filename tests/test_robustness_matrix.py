"""The robustness matrix: every bad input in docs/robustness.md, run through the real CLI (``b4m.cli.main``).

Each case asserts exit status 2, exactly one stderr line matching the documented answer, and that no file under
the case's folder changed (hashes before and after). The table in docs/robustness.md lists the same cases.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from b4m.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "robustness.md"
TRAIN = "train content --images {d}/content --aux-styles {d}/aux0 {d}/aux1 --prompt 'a photo of snq teddy' "
TRAIN += "--steps 4 --rank 4 --lr 0.001 --resolution 32"
FUSE = "fuse --content {d}/content.safetensors --style {d}/style.safetensors --stage2-steps 0"
_IMAGES = "--content-images {d}/content --content-prompt 'a photo of snq teddy' --style-images {d}/aux0 "
_IMAGES += "--steps 2 --rank 4 --resolution 32"
_SOURCES = "--content-lora {d}/content.safetensors --style-lora {d}/style.safetensors"
RUN = {
    "lora": "run lora " + _IMAGES,
    "joint": "run joint " + _IMAGES,
    "qrlora": "run qrlora " + _IMAGES,
    "ziplora": f"run ziplora {_IMAGES} {_SOURCES}",
    "duolora": f"run duolora {_IMAGES} {_SOURCES}",
    "direct-merge": f"run direct-merge {_SOURCES}",
    "nplora": f"run nplora {_SOURCES}",
    "klora": f"run klora {_SOURCES}",
    "b4m": f"run b4m {_IMAGES} --aux-styles {{d}}/aux0 --aux-contents {{d}}/aux1",
}
"""Every ``b4m run`` method with inputs that pass its checks (the cases stop at the output folder)."""


def _png(path: Path, seed: int, size: int = 32) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)


def _folder(path: Path, seed: int, n: int, caption: bytes | None = None) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        _png(path / f"{i:02d}.png", seed + i)
        if caption is not None:
            (path / f"{i:02d}.txt").write_bytes(caption)
    return path


def _checkpoint(folder: Path, lr: float, damaged: bool = False) -> None:
    """A checkpoint as the TRAIN command (with this ``lr``) would leave it (killed after it), optionally
    truncated."""
    from b4m.config import to_dict
    from b4m.diffusion.builtin_base import weights_digest
    from b4m.options import Stage1Config, resolve_preset
    from b4m.owned import Folder
    from b4m.train.checkpoint import save_checkpoint
    from b4m.train.identity import run_settings

    cfg = resolve_preset(
        Stage1Config(prompt="a photo of snq teddy", aux=["a", "b"], steps=4, rank=4, lr=lr, resolution=32)
    )
    p = torch.nn.Parameter(torch.zeros(2))
    settings = run_settings(to_dict(cfg) | {"role": "content"}) | {"base_weights": weights_digest()}
    extra = {"settings": settings, "data": "0" * 16}
    Folder(folder).save()  # the run's folder is b4m's, as the training session leaves it
    ckpt = save_checkpoint(
        folder / "checkpoints", 2, {"x": p}, torch.optim.SGD([p], lr=lr), torch.Generator(), extra=extra
    )
    if damaged:
        state = ckpt / "state.safetensors"
        state.write_bytes(state.read_bytes()[:40])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every input file the cases use, made once (the cases must leave it unchanged)."""
    from b4m.adapters import PLPSpec, inject_plp, load_lora, save_lora, save_plp
    from b4m.diffusion.pipeline import load_pipeline

    d = tmp_path_factory.mktemp("matrix")
    _folder(d / "content", 0, 3)
    _folder(d / "aux0", 10, 1, b"a cup in stripes style")
    _folder(d / "aux1", 11, 1, b"a car in dots style")
    _folder(d / "latin1", 12, 1, "une tasse caf\u00e9".encode("latin-1"))
    (d / "empty").mkdir()
    (d / "empty" / "notes.txt").write_text("no images here")
    (d / "garbage").mkdir()
    (d / "garbage" / "00.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    _folder(d / "big", 20, 1)  # 32 x 32: over the limit the case sets
    (d / "config_latin1.yaml").write_bytes("prompt: caf\u00e9\n".encode("latin-1"))
    (d / "afile").write_text("a file where a folder should be")
    (d / "ro").mkdir()
    (d / "rofs").mkdir()
    (d / "df").mkdir()
    (d / "weights.bin").write_bytes(b"pickled weights would be here")

    pipe = load_pipeline(None)  # adapters for the built-in model, whose layers generate checks
    torch.manual_seed(0)
    for role in ("content", "style"):
        adapter = inject_plp(pipe.unet, PLPSpec(rank=4), name=role)
        with torch.no_grad():
            for p in adapter.parameters("BD"):
                p.normal_(std=0.1)
        save_plp(adapter, d / f"{role}.safetensors", role=role, base_model="builtin", trigger_words=["snq"])
    good = load_lora(d / "content.safetensors")
    module = sorted(good.factors)[0]
    bad = {m: (u.clone(), v) for m, (u, v) in good.factors.items()}
    bad[module][0][0, 0] = float("nan")
    save_lora(d / "nan.safetensors", bad, meta=good.meta)
    save_lora(d / "sdxl.safetensors", good.factors, meta=good.meta | {"base_model": "stabilityai/sdxl-base"})
    u, v = good.factors[module]
    save_lora(d / "foreign.safetensors", {"down_blocks.7.attentions.0.proj_in": (u, v)})
    (d / "truncated.safetensors").write_bytes((d / "content.safetensors").read_bytes()[:100])
    (d / "kohya_out").mkdir()
    (d / "truncated_png").mkdir()
    _png(d / "truncated_png" / "00.png", 5)
    data = (d / "truncated_png" / "00.png").read_bytes()
    (d / "truncated_png" / "00.png").write_bytes(data[: len(data) // 2])  # a copy cut short
    (d / "usersplit").mkdir()
    (d / "usersplit" / "content_style.safetensors").write_bytes(b"the user's own style LoRA")
    (d / "usergen").mkdir()
    _png(d / "usergen" / "00_00.png", 6)
    _png(d / "usergen" / "grid.png", 7)
    (d / "exists.safetensors").write_bytes((d / "content.safetensors").read_bytes())

    _checkpoint(d / "runs" / "other", lr=0.01)
    _checkpoint(d / "runs" / "damaged", lr=0.001, damaged=True)
    (d / "demo_user" / "fits").mkdir(parents=True)
    (d / "demo_user" / "fits" / "adapter.safetensors").write_bytes((d / "content.safetensors").read_bytes())
    from b4m.owned import Folder

    stamped = d / "demo_stamped"  # a demo folder whose data/content holds the user's photos
    Folder(stamped).child("data")
    _folder(stamped / "data" / "content", 30, 2)
    _user_project(d / "userproj")
    _user_project(d / "userdemo", demo=True)
    return d


def _user_project(root: Path, demo: bool = False) -> None:
    """A user's project folder: their checkpoints, training log, photos and dot-files (``demo``: also names the
    demo writes: a fits/ folder and a report.html)."""
    (root / "checkpoints" / "epoch10").mkdir(parents=True)
    (root / "checkpoints" / "epoch10" / "model.ckpt").write_bytes(b"the user's weights")
    (root / "train_log.jsonl").write_text('{"epoch": 10, "loss": 0.1}\n')
    _png(root / "photo.png", 99)
    (root / ".hidden").write_text("the user's settings")
    (root / "scores.json").write_text('{"fid": 12.3}')
    if demo:
        (root / "fits").mkdir()
        _png(root / "fits" / "my_teddy.png", 98)
        (root / "report.html").write_text("<p>the user's report</p>")


def _patch_read_only(monkeypatch, d):
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == d / "ro" else real(p, mode, **kw)
    )


def _patch_bomb(monkeypatch, d):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 32 x 32 = 1024 > 2 x 200: Pillow's bomb error


def _patch_disk_full(monkeypatch, d):
    """What the safetensors writer raises on a real full disk: its own error type, not an OSError."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)


def _patch_disk_full_text(monkeypatch, d):
    """A full disk for every text, JSON, HTML and PNG writer (b4m.io.atomic_write's temporary file)."""
    import b4m.io as io

    real = io.atomic_write

    def full(path, write, hint="rerun"):
        if Path(path).suffix in (".json", ".jsonl", ".png", ".html", ".txt"):

            def write_then_fail(tmp, write=write):
                write(tmp)
                raise OSError(errno.ENOSPC, "No space left on device")

            return real(path, write_then_fail, hint)
        return real(path, write, hint)

    monkeypatch.setattr(io, "atomic_write", full)


def _patch_read_only_fs(monkeypatch, d):
    """A read-only file system under the case's output (the tests run as root, whom chmod does not stop)."""
    import tempfile

    real = tempfile.mkstemp, tempfile.mkdtemp

    def refuse(kind):
        def make(*args, dir=None, **kw):
            if dir is not None and "rofs" in str(dir):
                raise OSError(errno.EROFS, "Read-only file system", str(dir))
            return real[kind](*args, dir=dir, **kw)

        return make

    monkeypatch.setattr(tempfile, "mkstemp", refuse(0))
    monkeypatch.setattr(tempfile, "mkdtemp", refuse(1))


PATCHES = {
    "read-only": _patch_read_only,
    "bomb": _patch_bomb,
    "disk-full": _patch_disk_full,
    "disk-full-text": _patch_disk_full_text,
    "read-only-fs": _patch_read_only_fs,
}

# (id, command line, regex of the one stderr line, patch)
CASES = [
    ("rank-0", TRAIN + " --rank 0 --out {d}/o", r"--rank 0: give a rank from 2 to 1024", None),
    ("rank-1", TRAIN + " --rank 1 --out {d}/o", r"--rank 1: give a rank from 2 to 1024", None),
    ("rank-huge", TRAIN + " --rank 100000 --out {d}/o", r"--rank 100000: give a rank from 2 to 1024", None),
    (
        "rho-1.5",
        TRAIN + " --rho 1.5 --out {d}/o",
        r"--rho 1.5: give the frozen fraction strictly between",
        None,
    ),
    ("lr-nan", TRAIN + " --lr nan --out {d}/o", r"--lr nan: give a finite number > 0", None),
    ("lr-0", TRAIN + " --lr 0 --out {d}/o", r"--lr 0.0: give a finite number > 0", None),
    (
        "resolution-0",
        TRAIN + " --resolution 0 --out {d}/o",
        r"--resolution 0: give a positive multiple of 8",
        None,
    ),
    (
        "resolution-30",
        TRAIN + " --resolution 30 --out {d}/o",
        r"--resolution 30: give a positive multiple of 8",
        None,
    ),
    (
        "steps-0",
        TRAIN + " --steps 0 --out {d}/o",
        r"--steps 0: give 1 or more \(a run of 0 steps would save",
        None,
    ),
    ("steps-neg", TRAIN + " --steps -1 --out {d}/o", r"--steps -1: give 1 or more", None),
    ("out-is-file", TRAIN + " --out {d}/afile", r"--out .*afile: .*afile is a file, not a folder", None),
    (
        "out-under-file",
        TRAIN + " --out {d}/afile/run",
        r"--out .*afile/run: .*afile is a file, not a folder",
        None,
    ),
    (
        "out-read-only",
        TRAIN + " --out {d}/ro/run",
        r"--out .*ro/run: cannot write into .*ro \(read-only",
        "read-only",
    ),
    ("images-missing", TRAIN + " --images {d}/nope --out {d}/o", r"--images .*nope: no such folder", None),
    ("images-empty", TRAIN + " --images {d}/empty --out {d}/o", r"--images .*empty: no images found", None),
    (
        "image-undecodable",
        TRAIN + " --images {d}/garbage --out {d}/o",
        r"garbage/00.png: cannot read this image",
        None,
    ),
    (
        "image-bomb",
        TRAIN + " --images {d}/big --out {d}/o",
        r"big/00.png: image too large to decode safely",
        "bomb",
    ),
    (
        "caption-not-utf8",
        TRAIN + " --aux-styles {d}/latin1 --out {d}/o",
        r"latin1/00.txt: caption is not UTF-8",
        None,
    ),
    (
        "config-not-utf8",
        "train content --config {d}/config_latin1.yaml",
        r"--config .*config_latin1.yaml: not UTF-8",
        None,
    ),
    (
        "resume-other-run",
        TRAIN + " --out {d}/runs/other --resume",
        r"--out .*runs/other: .*belongs to another run; differs: --lr 0.001 \(recorded: 0.01\), the images",
        None,
    ),
    (
        "rerun-other-run",
        TRAIN + " --out {d}/runs/other",
        r"--out .*runs/other: .*step-000002 belongs to another run; differs: --lr 0.001 \(recorded: 0.01\)",
        None,
    ),
    (
        "resume-damaged",
        TRAIN + " --out {d}/runs/damaged --resume",
        r"damaged checkpoint .*it is the only checkpoint kept: pass --overwrite to start the run over",
        None,
    ),
    (
        "fuse-nan",
        "fuse --content {d}/nan.safetensors --style {d}/style.safetensors --out {d}/f",
        r"nan.safetensors: tensor unet\..* holds NaN values",
        None,
    ),
    (
        "fuse-missing",
        "fuse --content {d}/none.safetensors --style {d}/style.safetensors --out {d}/f",
        r"none.safetensors: no such file",
        None,
    ),
    (
        "fuse-swapped",
        "fuse --content {d}/style.safetensors --style {d}/content.safetensors --out {d}/f",
        r"--content .*style.safetensors: this is a style adapter",
        None,
    ),
    (
        "fuse-lr-inf",
        "fuse --content {d}/content.safetensors --style {d}/style.safetensors --stage2-lr inf",
        r"--stage2-lr inf: give a finite number > 0",
        None,
    ),
    (
        "fuse-steps-neg",
        "fuse --content {d}/content.safetensors --style {d}/style.safetensors --stage2-steps -1",
        r"--stage2-steps -1: give 0 or more",
        None,
    ),
    (
        "fuse-out-file",
        "fuse --content {d}/content.safetensors --style {d}/style.safetensors --out {d}/afile",
        r"--out .*afile: .*is a file, not a folder",
        None,
    ),
    ("generate-n-0", "generate --prompt x -n 0 --out {d}/g", r"-n 0: give 1 or more images per prompt", None),
    (
        "generate-resolution-30",
        "generate --prompt x --resolution 30 --out {d}/g",
        r"--resolution 30: give a positive multiple of 8",
        None,
    ),
    (
        "generate-steps-0",
        "generate --prompt x --steps 0 --out {d}/g",
        r"--steps 0: give 1 or more sampling",
        None,
    ),
    (
        "generate-empty-prompt",
        "generate --prompt '' --out {d}/g",
        r"--prompt: give at least one prompt",
        None,
    ),
    (
        "generate-nan",
        "generate --prompt x --adapter {d}/nan.safetensors --out {d}/g",
        r"holds NaN values",
        None,
    ),
    (
        "generate-other-base",
        "generate --prompt x --adapter {d}/sdxl.safetensors --out {d}/g",
        r"sdxl.safetensors: made for the base model 'stabilityai/sdxl-base', not 'builtin'",
        None,
    ),
    (
        "generate-foreign-layers",
        "generate --prompt x --adapter {d}/foreign.safetensors --out {d}/g",
        r"foreign.safetensors: a LoRA for another base model \(its layer down_blocks.7",
        None,
    ),
    (
        "generate-pickle",
        "generate --prompt x --adapter {d}/weights.bin --out {d}/g",
        r"safetensors files only",
        None,
    ),
    (
        "generate-out-file",
        "generate --prompt x --out {d}/afile",
        r"--out .*afile: .*is a file, not a folder",
        None,
    ),
    (
        "generate-out-read-only",
        "generate --prompt x --out {d}/ro",
        r"--out .*ro: cannot write into",
        "read-only",
    ),
    ("info-nan", "info {d}/nan.safetensors", r"nan.safetensors: tensor .* holds NaN values", None),
    (
        "info-truncated",
        "info {d}/truncated.safetensors",
        r"truncated.safetensors: not a readable safetensors",
        None,
    ),
    ("export-nan", "export {d}/nan.safetensors --out {d}/k.safetensors", r"holds NaN values", None),
    (
        "export-exists",
        "export {d}/content.safetensors --out {d}/exists.safetensors",
        r"exists, and b4m did not make it; choose another path",
        None,
    ),
    (
        "export-scale-plain",
        "export {d}/foreign.safetensors --out {d}/k.safetensors --content-scale 0.5",
        r"--content-scale: .*foreign.safetensors is not a b4m PLP adapter \(its header has no rho or basis_id\)",
        None,
    ),
    (
        "export-split-plain",
        "export {d}/foreign.safetensors --split --out {d}/parts",
        r"--split: .*foreign.safetensors is not a b4m PLP adapter",
        None,
    ),
    (
        "export-split-scale",
        "export {d}/content.safetensors --split --style-scale 0.5 --out {d}/parts",
        r"--style-scale: --split writes the parts unscaled",
        None,
    ),
    (
        "export-scale-nan",
        "export {d}/content.safetensors --out {d}/k.safetensors --style-scale nan",
        r"--style-scale nan: give a finite number",
        None,
    ),
    (
        "convert-out-folder",
        "convert {d}/content.safetensors {d}/kohya_out --to kohya",
        r"OUT .*kohya_out: is a folder",
        None,
    ),
    (
        "convert-disk-full",
        "convert {d}/content.safetensors {d}/k.safetensors --to kohya",
        r"no space left writing .*k.safetensors; free space and rerun",
        "disk-full",
    ),
    (
        "demo-user-adapter",
        "demo --out {d}/demo_user",
        r"--out .*demo_user: holds fits/, which b4m demo did not make",
        None,
    ),
    (
        "demo-user-images",
        "demo --out {d}/demo_stamped",
        r"--out .*demo_stamped/data: holds content/, which b4m demo did not make",
        None,
    ),
    ("demo-n-0", "demo --out {d}/demo_new -n 0", r"-n 0: give 1 or more", None),
    *[
        (
            f"user-out-{name}",
            f"{command} --out {{d}}/userproj{extra}",
            r"--out .*userproj: holds checkpoints/, train_log.jsonl, which b4m did not make; choose another --out: "
            r"b4m never removes or replaces files it did not make",
            None,
        )
        for name, command, extra in (
            ("train-content", TRAIN, ""),
            ("train-content-overwrite", TRAIN, " --overwrite"),
            (
                "train-style",
                TRAIN.replace("train content", "train style").replace("aux-styles", "aux-contents"),
                "",
            ),
            ("fuse", FUSE, ""),
            ("fuse-overwrite", FUSE, " --overwrite"),
            *[(f"run-{m}", RUN[m], "") for m in RUN],
            ("run-lora-overwrite", RUN["lora"], " --overwrite"),
        )
    ],  # fmt: skip
    (
        "user-out-demo",
        "demo --out {d}/userdemo",
        r"--out .*userdemo: holds fits/, report.html, which b4m demo did not make",
        None,
    ),
    (
        "user-out-demo-overwrite",
        "demo --out {d}/userdemo --overwrite",
        r"holds fits/, report.html, which b4m demo did not make.*\(--overwrite too replaces only files b4m made\)",
        None,
    ),
    (
        "user-out-bench",
        "bench --quick --out {d}/userproj",
        r"--out .*userproj: holds .*, which b4m bench did not make",
        None,
    ),
    (
        "user-out-world-export",
        "world export --out {d}/userproj --content teddy#3 -n 2",
        r"--out .*userproj: holds \.hidden, checkpoints, photo.png ..., which b4m did not make",
        None,
    ),
    (
        "user-out-world-export-overwrite",
        "world export --out {d}/userproj --content teddy#3 -n 2 --overwrite",
        r"--out .*userproj: holds \.hidden, checkpoints, photo.png ..., which b4m did not make",
        None,
    ),
    (
        "user-out-eval",
        "eval --adapter {d}/content.safetensors --content-images {d}/content --style-images {d}/content "
        "--prompts x --out {d}/userproj/scores.json --overwrite",
        r"--out .*userproj/scores.json: exists, and b4m did not make it; choose another path",
        None,
    ),
    (
        "user-file-convert",
        "convert {d}/content.safetensors {d}/exists.safetensors --to kohya --overwrite",
        r"OUT .*exists.safetensors: exists, and b4m did not make it; choose another path",
        None,
    ),
    (
        "user-file-export",
        "export {d}/content.safetensors --out {d}/exists.safetensors --overwrite",
        r"--out .*exists.safetensors: exists, and b4m did not make it",
        None,
    ),
    (
        "user-out-generate",
        "generate --prompt x -n 1 --out {d}/usergen --overwrite",
        r"--out .*usergen: holds 00_00.png, grid.png, which b4m did not make",
        None,
    ),
    (
        "user-file-world-show",
        "world show --out {d}/userproj/photo.png --overwrite",
        r"--out .*userproj/photo.png: exists, and b4m did not make it; choose another path",
        None,
    ),
    (
        "user-out-export-split",
        "export {d}/content.safetensors --split --out {d}/usersplit --overwrite",
        r"--out .*usersplit: holds content_style.safetensors, which b4m did not make",
        None,
    ),
    (
        "disk-full-world-export",
        "world export --out {d}/df/export --content teddy#3 -n 2",
        r"no space left writing .*df/export; free space and rerun",
        "disk-full-text",
    ),
    (
        "read-only-world-export",
        "world export --out {d}/rofs/export --content teddy#3 -n 2",
        r"cannot write .*rofs.*: read-only file system; choose a writable place",
        "read-only-fs",
    ),
    (
        "direct-merge-other-base",
        "run direct-merge --content-lora {d}/sdxl.safetensors --style-lora {d}/style.safetensors --out {d}/dm",
        r"--content-lora .*sdxl.safetensors: made for the base model 'stabilityai/sdxl-base', not 'builtin'",
        None,
    ),
    (
        "prompt-missing-aux",
        TRAIN.replace("{d}/aux0 {d}/aux1", "{d}/content") + " --out {d}/o",
        r"--aux-styles .*content: no prompt given and 3 images have no caption file .*pass --aux-prompts",
        None,
    ),
    (
        "images-is-file",
        TRAIN + " --images {d}/afile --out {d}/o",
        r"--images .*afile: is a file, not a folder",
        None,
    ),
    (
        "image-truncated",
        TRAIN + " --images {d}/truncated_png --out {d}/o",
        r"truncated_png/00.png: cannot read this image: the file is damaged or cut short .*copy it again",
        None,
    ),
    (
        "base-missing-local",
        TRAIN + " --base ./no/such/pipeline --out {d}/o",
        r"--base ./no/such/pipeline: no such folder",
        None,
    ),
    (
        "bench-quick-seeds",
        "bench --quick --seeds 0 --out {d}/b",
        r"--seeds 0: give 1 or more",
        None,
    ),
]


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _argv(command: str, d: Path) -> list[str]:
    import shlex

    return shlex.split(command.format(d=d))


@pytest.mark.parametrize(("case", "command", "answer", "patch"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    world, monkeypatch, capsys, case, command, answer, patch
):
    monkeypatch.chdir(world)
    if patch:
        PATCHES[patch](monkeypatch, world)
    before = _tree(world)
    capsys.readouterr()
    code = main(_argv(command, world))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("b4m: error: ") and re.search(answer, err[0]), err[0]
    assert "Traceback" not in err[0]
    assert _tree(world) == before


def test_the_docs_table_lists_exactly_these_cases():
    rows = re.findall(r"^\| `([a-z0-9.-]+)` \|", DOC.read_text(encoding="utf-8"), flags=re.M)
    assert rows == [c[0] for c in CASES]
    assert len(CASES) >= 30


USED_AS_IS = [
    ("train", TRAIN),
    ("fuse", FUSE),
    ("run-lora", RUN["lora"]),
    ("generate", "generate --prompt x -n 1"),
    pytest.param(
        "demo", "demo --steps 2 --stage2-steps 1 -n 1 --n-content 2 --n-style 2", marks=pytest.mark.slow
    ),  # two tiny demos (35 s); the demo's refusals are the matrix's user-out-demo cases
]


@pytest.mark.parametrize(
    ("case", "command"), USED_AS_IS, ids=["train", "fuse", "run-lora", "generate", "demo"]
)
def test_an_out_folder_with_other_files_is_used_without_touching_them(
    world, tmp_path, monkeypatch, case, command
):
    """A user's photos, notes and dot-files in ``--out`` (none of them a name the command writes) stay exactly as
    they were: the command writes beside them, and ``--overwrite`` replaces only what it made."""
    out = tmp_path / "project"
    out.mkdir()
    _png(out / "photo.png", 1)
    (out / "notes.txt").write_text("mine")
    (out / ".hidden").write_text("mine too")
    (out / "sub").mkdir()
    (out / "sub" / "x.bin").write_bytes(b"\x00\x01")
    before = _tree(out)
    monkeypatch.chdir(world)
    assert main([*_argv(command, world), "--out", str(out)]) == 0
    assert main([*_argv(command, world), "--out", str(out), "--overwrite"]) == 0
    after = _tree(out)
    assert {k: after[k] for k in before} == before


def test_a_full_disk_at_the_final_save_keeps_the_trained_state_and_the_same_command_finishes(
    world, tmp_path, monkeypatch, capsys
):
    """``--checkpoint-every 0``, the disk full (the safetensors writer's own error) as the adapter is written: one
    line that says where the trained state is, and the same command run again only saves it."""
    out = tmp_path / "run"
    argv = [*_argv(TRAIN, world), "--checkpoint-every", "0", "--out", str(out)]
    with monkeypatch.context() as mp:
        real = PATCHES["disk-full"]
        import safetensors.torch

        original = safetensors.torch.save_file
        real(mp, world)
        failing = safetensors.torch.save_file
        mp.setattr(
            safetensors.torch,
            "save_file",
            lambda t, f, metadata=None: (failing if "adapter" in str(f) else original)(
                t, f, metadata=metadata
            ),
        )
        capsys.readouterr()
        assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(
        r"b4m: error: no space left writing .*adapter.safetensors; free space and rerun the same command to "
        r"continue; the trained state is kept in .*step-000004",
        last,
    ), last
    assert main(argv) == 0
    assert (out / "adapter.safetensors").is_file()
