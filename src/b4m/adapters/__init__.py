"""Adapter math (pure torch + peft), file formats, and injection into models."""

from b4m.adapters.codec import LoraFile, load_lora, save_kohya, save_lora
from b4m.adapters.files import check_fusable, load_plp, read_plp_file, save_plp
from b4m.adapters.inject import DEFAULT_TARGETS, PLPAdapter, inject_plp
from b4m.adapters.plp import (
    PLPSpec,
    assemble,
    delta_blocks,
    mcp_routing,
    scale_parts,
    split_dims,
    split_factors,
)

__all__ = [
    "DEFAULT_TARGETS",
    "LoraFile",
    "PLPAdapter",
    "PLPSpec",
    "assemble",
    "check_fusable",
    "delta_blocks",
    "inject_plp",
    "load_lora",
    "load_plp",
    "mcp_routing",
    "read_plp_file",
    "save_kohya",
    "save_lora",
    "save_plp",
    "scale_parts",
    "split_dims",
    "split_factors",
]
