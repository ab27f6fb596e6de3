"""ComfyUI custom node "B4M LoRA loader": a b4m adapter at a content strength and a style strength.

Install: ``ln -s <b4m checkout>/integrations/comfyui/b4m_lora_loader <ComfyUI>/custom_nodes/`` and restart
ComfyUI; the node appears under ``loaders``. It reads ``rho`` and the basis id from the file's ``b4m`` header,
scales the content part ``B`` and the style part ``D`` of every layer (:mod:`.b4m_scale`, torch only) and hands
the result to ComfyUI's own LoRA patching (``comfy.sd.load_lora_for_models``), as LoraLoader does with a file.
b4m adapts the diffusion model only, so a CLIP connected to the node passes through unchanged.
"""

from __future__ import annotations

import os
from typing import Any

from .b4m_scale import scaled_lora

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "B4MLoraLoader"]

_STRENGTH = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05}


class B4MLoraLoader:
    """One b4m adapter file from ``models/loras`` at a content strength (scales ``B``) and a style strength
    (scales ``D``): each layer's update ``[[AC, AD], [BC, BD]]`` becomes ``[[AC, s AD], [c BC, c s BD]]``."""

    CATEGORY = "loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("MODEL", "CLIP")
    DESCRIPTION = (
        "Load a b4m (Break-for-Make) LoRA with separate content and style strengths. Content strength scales "
        "what the adapter learned from your subject's photos, style strength what it learned from the style "
        "images; 1 and 1 is the file as trained."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        import folder_paths

        return {
            "required": {
                "model": (
                    "MODEL",
                    {"tooltip": "The diffusion model (SD, SDXL or FLUX) the adapter was trained on."},
                ),
                "lora_name": (
                    folder_paths.get_filename_list("loras"),
                    {"tooltip": "A b4m adapter file (b4m train/fuse/export) in models/loras."},
                ),
                "content_strength": (
                    "FLOAT",
                    _STRENGTH
                    | {"tooltip": "Strength of the content part B: 0 removes the subject, 1 as trained."},
                ),
                "style_strength": (
                    "FLOAT",
                    _STRENGTH
                    | {"tooltip": "Strength of the style part D: 0 removes the style, 1 as trained."},
                ),
            },
            "optional": {
                "clip": (
                    "CLIP",
                    {"tooltip": "Passed through unchanged (b4m adapts the diffusion model only)."},
                ),
            },
        }

    def __init__(self) -> None:
        self._cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def load(
        self, model: Any, lora_name: str, content_strength: float, style_strength: float, clip: Any = None
    ) -> tuple[Any, Any]:
        import comfy.sd
        import folder_paths

        find = getattr(folder_paths, "get_full_path_or_raise", None) or folder_paths.get_full_path
        path = find("loras", lora_name)
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size, float(content_strength), float(style_strength))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, scaled_lora(path, float(content_strength), float(style_strength)))
        patched, _ = comfy.sd.load_lora_for_models(model, None, self._cache[1], 1.0, 0.0)
        return (patched, clip)


NODE_CLASS_MAPPINGS = {"B4MLoraLoader": B4MLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"B4MLoraLoader": "B4M LoRA loader"}
