"""The robustness matrix: every bad input in docs/robustness.md, run through the real CLI (``b4m.cli.main``).

Each case asserts exit status 2, exactly one stderr line matching the documented answer, and that no file under
the case's folder changed (hashes before and after). The table in docs/robustness.md lists the same cases.
"""

from __future__ import annotations

import errno
import hashlib
import json
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
    """A checkpoint as the TRAIN command (with this ``lr``) would leave it, optionally truncated."""
    from b4m.config import Stage1Config, resolve_preset, to_dict
    from b4m.train.checkpoint import save_checkpoint
    from b4m.train.identity import run_settings

    cfg = resolve_preset(
        Stage1Config(prompt="a photo of snq teddy", aux=["a", "b"], steps=4, rank=4, lr=lr, resolution=32)
    )
    p = torch.nn.Parameter(torch.zeros(2))
    extra = {"settings": run_settings(to_dict(cfg) | {"role": "content"}), "data": "0" * 16}
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
    (d / "exists.safetensors").write_bytes((d / "content.safetensors").read_bytes())

    _checkpoint(d / "runs" / "other", lr=0.01)
    _checkpoint(d / "runs" / "damaged", lr=0.001, damaged=True)
    (d / "demo_user" / "content").mkdir(parents=True)
    (d / "demo_user" / "content" / "adapter.safetensors").write_bytes(
        (d / "content.safetensors").read_bytes()
    )
    stamped = d / "demo_stamped"
    _folder(stamped / "data" / "content", 30, 2)
    (stamped / "b4m_demo.json").write_text(json.dumps({"made_by": "b4m demo", "adapters": {}}))
    return d


def _patch_read_only(monkeypatch, d):
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == d / "ro" else real(p, mode, **kw)
    )


def _patch_bomb(monkeypatch, d):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 32 x 32 = 1024 > 2 x 200: Pillow's bomb error


def _patch_disk_full(monkeypatch, d):
    import b4m.adapters.codec as codec

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(codec, "save_file", full)


PATCHES = {"read-only": _patch_read_only, "bomb": _patch_bomb, "disk-full": _patch_disk_full}

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
        r"--resume: .*belongs to another run; differs: --lr 0.001 \(checkpoint: 0.01\), the images",
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
        r"exists; choose another",
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
        r"--out .*demo_user: holds content, which b4m demo did not make",
        None,
    ),
    (
        "demo-user-images",
        "demo --out {d}/demo_stamped",
        r"holds data/content, which b4m demo did not make",
        None,
    ),
    ("demo-n-0", "demo --out {d}/demo_new -n 0", r"-n 0: give 1 or more", None),
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
