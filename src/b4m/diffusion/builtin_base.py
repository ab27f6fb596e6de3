"""The built-in base model as the diffusion layer sees it: where the shipped pipeline folder lives, its
``b4m_base.json`` (the recommended sampling settings) and how it loads.

How that model is built and trained is :mod:`b4m.models.base`'s business; sampling and pipeline loading need
only what is here. Importing this module loads neither torch nor diffusers (configs and the command line read
it); :func:`load_base_pipeline` imports them when it runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from b4m.options import BASE_INFO_FILE

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

__all__ = [
    "BASE_INFO",
    "INFO_FILE",
    "BaseModelInfo",
    "default_base_path",
    "load_base_pipeline",
    "read_base_info",
]

INFO_FILE = BASE_INFO_FILE


@dataclass(frozen=True)
class BaseModelInfo:
    """Recommended generation settings for a base pipeline (written into the folder as ``b4m_base.json``)."""

    resolution: int = 32
    num_inference_steps: int = 25
    guidance_scale: float = 3.0


#: Settings measured for the shipped model (see ``benchmarks/base_model.md``).
BASE_INFO = BaseModelInfo()


def default_base_path() -> Path:
    """The shipped pipeline folder, ``src/b4m/assets/base``."""
    return Path(__file__).resolve().parent.parent / "assets" / "base"


def load_base_pipeline(
    path_or_id: str | Path | None = None, dtype: torch.dtype | None = None
) -> DiffusionPipeline:
    """Load a base pipeline: ``None`` → the shipped world model; otherwise any diffusers folder or hub id.

    ``dtype`` defaults to ``torch.float32``."""
    import torch

    from b4m.diffusion.pipeline import from_pretrained

    if path_or_id is None:
        path_or_id = default_base_path()
        if not (Path(path_or_id) / "model_index.json").exists():
            raise FileNotFoundError(
                f"load_base_pipeline: no shipped base model at {path_or_id}; "
                "train one with `b4m base train` (or `python benchmarks/base_model.py train`) or pass a path."
            )
    return from_pretrained(path_or_id, torch.float32 if dtype is None else dtype)


def read_base_info(path: str | Path | None = None) -> BaseModelInfo:
    """The recommended settings stored in a pipeline folder (``BASE_INFO`` when the file is missing)."""
    p = Path(path) if path is not None else default_base_path()
    f = p / INFO_FILE
    if not f.exists():
        return BASE_INFO
    d = json.loads(f.read_text())
    return BaseModelInfo(**{k.name: d[k.name] for k in dataclasses.fields(BaseModelInfo) if k.name in d})


@functools.cache
def weights_digest(path: str | None = None) -> str:
    """A short SHA-256 of the built-in base model's weights: part of every run's identity on it
    (:mod:`b4m.train.session`), so that a result made on other shipped weights is never reused."""
    h = hashlib.sha256()
    folder = Path(path) if path is not None else default_base_path()
    for file in sorted(folder.rglob("*.safetensors")):
        h.update(file.relative_to(folder).as_posix().encode())
        h.update(file.read_bytes())
    return h.hexdigest()[:16]
