"""Write world renders as an image folder, the layout a user hands b4m with real photos.

``out_dir/0000.png`` + ``out_dir/0000.txt`` (the caption) per image, and ``out_dir/metadata.jsonl`` with the scene
fields, the seed, the file name and the caption of every image. Folders are written into a temporary sibling
directory and renamed into place, so a reader never sees a half-written folder; the folder's b4m manifest
(:mod:`b4m.owned`) records every file and what the export was made from, so that only an export b4m made is
ever replaced.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from b4m.errors import B4MError, DiskFullError
from b4m.io import fs_error, make_dir, make_temp_dir, save_image, write_text
from b4m.owned import Folder
from b4m.world.concepts import HELD_IN_CONTENTS
from b4m.world.render import Scene, caption, render

__all__ = ["export_concept", "export_folder"]


def _clean_stale(out: Path) -> None:
    """Remove the hidden siblings an export of ``out`` killed mid-way left behind (its half-written
    ``.<name>.tmp-*`` folder, or the ``.<name>.old-*`` folder it was about to delete): only names this
    module makes, only for this ``out``, only folders that are b4m's (:mod:`b4m.owned`)."""
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
        for stale in out.parent.glob(pattern):
            if stale.is_dir() and Folder(stale).known:
                Folder(stale).clear()


def export_folder(
    out_dir: str | Path,
    scenes: list[Scene],
    seeds: list[int],
    resolution: int = 32,
    content_word: str | None = None,
    style_word: str | None = None,
    overwrite: bool = False,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Render ``scenes[i]`` with ``seeds[i]`` into ``out_dir`` as ``{i:04d}.png`` + ``{i:04d}.txt``, plus
    ``metadata.jsonl`` and b4m's manifest (recording ``settings``, what the export was made from, as
    ``info["export"]``). ``content_word``/``style_word`` go into the captions (see :func:`caption`).

    An existing ``out_dir`` that is not empty is refused (:class:`~b4m.errors.B4MError`) unless ``overwrite``
    *and* everything in it is an earlier export's (then the old folder is replaced once the new one is
    complete); a folder holding anything b4m did not make is never replaced. Returns ``out_dir`` as a ``Path``.
    """
    out = Path(out_dir)
    if len(scenes) != len(seeds):
        raise ValueError(f"got {len(scenes)} scenes and {len(seeds)} seeds; pass one seed per scene")
    if out.exists() and not out.is_dir():
        raise B4MError(f"--out {out}: is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        theirs = Folder(out).others()
        if theirs:
            raise B4MError(
                f"--out {out}: holds {', '.join(theirs[:3])}{' ...' if len(theirs) > 3 else ''}, which b4m did "
                "not make; choose another --out (b4m never removes or replaces files it did not make)"
            )
        if not overwrite:
            raise B4MError(f"--out {out}: holds an earlier export; pass --overwrite to replace it")
    make_dir(out.parent)
    _clean_stale(out)
    tmp = make_temp_dir(out.parent, f".{out.name}.tmp-", shown=out)
    try:
        folder = Folder(tmp)
        folder.info = {"export": settings or {}}
        folder.save()  # a killed export leaves a folder that says it is b4m's
        records = []
        for i, (scene, seed) in enumerate(zip(scenes, seeds, strict=True)):
            stem = f"{i:04d}"
            text = caption(scene, content_word=content_word, style_word=style_word)
            save_image(Image.fromarray(render(scene, int(seed), resolution)), tmp / f"{stem}.png")
            write_text(tmp / f"{stem}.txt", text + "\n")
            records.append({"file": f"{stem}.png", **scene.as_dict(), "seed": int(seed), "caption": text})
            folder.record(f"{stem}.png", f"{stem}.txt")
        write_text(tmp / "metadata.jsonl", "".join(json.dumps(rec) + "\n" for rec in records))
        folder.record("metadata.jsonl")
        if out.exists():
            old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except DiskFullError:  # named by the folder, not by its temporary sibling
        raise DiskFullError(f"no space left writing {out}; free space and rerun") from None
    except OSError as err:
        raise fs_error(err, out) from None  # type: ignore[misc]
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_concept(
    out_dir: str | Path,
    content: str | None = None,
    style: str | None = None,
    n: int = 4,
    seed: int = 0,
    resolution: int = 32,
    content_word: str | None = None,
    style_word: str | None = None,
    contents: tuple[str, ...] | list[str] = HELD_IN_CONTENTS,
    overwrite: bool = False,
) -> Path:
    """``n`` images of one concept with default attributes.

    ``content`` and ``style`` are names the world knows, a personal instance written ``"teddy#3"`` /
    ``"papercut#5"`` (:mod:`b4m.world.instances`); a bare class name gives random public instances.

    - ``content`` given: that content, in ``style`` (``"photo"`` when ``style`` is None).
    - only ``style`` given: that style over random contents from ``contents`` (held-in contents by default,
      so a style reference does not leak a held-out content; random public instances of them).
    """
    if content is None and style is None:
        raise ValueError("export_concept needs content=..., style=... or both")
    if n < 1:
        raise ValueError(f"n={n}: export at least one image")
    rng = np.random.default_rng([seed, 5])
    if content is not None:
        # a user's own photos: the plain photo instance (style code 0), not random lighting per image
        scenes = [Scene.of(content, style or "photo") for _ in range(n)]
        if style is None:
            scenes = [dataclasses.replace(sc, style_code=0) for sc in scenes]
    else:
        scenes = [Scene.of(contents[int(rng.integers(len(contents)))], style) for _ in range(n)]
    seeds = [seed * 1000 + i for i in range(n)]
    settings = {
        "content": content,
        "style": style,
        "n": n,
        "seed": seed,
        "resolution": resolution,
        "content_word": content_word,
        "style_word": style_word,
        "contents": list(contents) if content is None else None,
    }
    return export_folder(
        out_dir,
        scenes,
        seeds,
        resolution=resolution,
        content_word=content_word,
        style_word=style_word,
        overwrite=overwrite,
        settings=settings,
    )
