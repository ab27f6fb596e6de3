"""b4m: content-style customization of text-to-image diffusion models with B4M (Break-for-Make).

Xu et al., "B4M: Breaking Low-Rank Adapter for Making Content-Style Customization", ACM TOG 2025.
The Python API mirrors the CLI: :func:`train_content`, :func:`train_style`, :func:`fuse`, :func:`generate`,
:func:`demo`, and :func:`run_method` for every method of :mod:`b4m.methods` by id; :func:`load_into` loads a b4m
file into any diffusers pipeline at a content and a style strength, :func:`export` writes it for other tools.
"""

__version__ = "0.1.0"

from b4m.api import (  # noqa: E402
    demo,
    export,
    fuse,
    generate,
    load_into,
    run_method,
    train_content,
    train_style,
)

__all__ = ["demo", "export", "fuse", "generate", "load_into", "run_method", "train_content", "train_style"]
