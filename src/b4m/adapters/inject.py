"""Put PLP adapters into any ``nn.Module`` (a diffusers UNet in practice) with peft's LoRA machinery.

peft does the module matching and wrapping (``LoraLayer`` keeps the base layer visible in the module tree, and
``set_adapters``/fusing/unloading keep working); b4m then swaps each layer's two ``nn.Linear`` factors for the
partly frozen :class:`~b4m.adapters.plp.PLPUp` / :class:`~b4m.adapters.plp.PLPDown` (see the note in ``plp.py``
on why peft cannot express them itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from b4m.adapters.plp import PLPDown, PLPSpec, PLPUp, basis_id, frozen_parts, split_dims, split_factors
from b4m.errors import B4MError

__all__ = ["DEFAULT_TARGETS", "PLPAdapter", "inject_plp", "lora_config"]

# Every attention projection, self- and cross-attention (560 layers on SDXL), as the official code adapts.
DEFAULT_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


def lora_config(
    rank: int, target_modules: Sequence[str] | str, lora_alpha: float | None = None
) -> LoraConfig:
    """The peft config of a b4m adapter: scale ``alpha / r = 1`` unless told otherwise, no dropout.

    ``init_lora_weights=False`` keeps peft from spending time on an initialisation b4m overwrites at once.
    """
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    return LoraConfig(
        r=rank,
        lora_alpha=rank if lora_alpha is None else lora_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        init_lora_weights=False,
    )


@dataclass
class PLPAdapter:
    """A handle on the PLP adapter named ``name`` inside ``model``.

    ``layers`` maps module names (``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``...) to their
    peft ``LoraLayer``; ``dims`` maps the same names to ``(m, n, d_out, d_in)``.
    """

    model: nn.Module
    spec: PLPSpec
    name: str
    layers: dict[str, LoraLayer] = field(repr=False)
    dims: dict[str, tuple[int, int, int, int]] = field(repr=False)

    @property
    def module_names(self) -> list[str]:
        return list(self.layers)

    def up(self, layer: str) -> PLPUp:
        return self.layers[layer].lora_B[self.name]

    def down(self, layer: str) -> PLPDown:
        return self.layers[layer].lora_A[self.name]

    def parameters(self, part: str = "BD") -> list[nn.Parameter]:
        """Learnable parameters: ``"B"`` (content, up projections), ``"D"`` (style, down projections) or both."""
        if not part or set(part) - {"B", "D"}:
            raise ValueError(f"part must be 'B', 'D' or 'BD', got {part!r}")
        params: list[nn.Parameter] = []
        for layer in self.layers:
            if "B" in part:
                params.append(self.up(layer).learnable)
            if "D" in part:
                params.append(self.down(layer).learnable)
        return params

    def named_parts(self) -> dict[str, nn.Parameter]:
        """``{"<layer>.B": B, "<layer>.D": D}``: the learnable parts by name (what checkpoints record)."""
        return {
            f"{layer}.{part}": p
            for layer in self.layers
            for part, p in (("B", self.up(layer).learnable), ("D", self.down(layer).learnable))
        }

    def frozen(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (A, C)}``, the frozen parts."""
        return {layer: (self.up(layer).frozen, self.down(layer).frozen) for layer in self.layers}

    def basis_id(self) -> str:
        return basis_id(self.spec, self.frozen())

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (U, V)}``: the full up (``m x r``) and down (``r x n``) projections, detached, float32."""
        return {
            layer: (self.up(layer).weight.detach().float(), self.down(layer).weight.detach().float())
            for layer in self.layers
        }

    @torch.no_grad()
    def load_factors(
        self, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], source: str = ""
    ) -> None:
        """Set every layer from full ``(U, V)``; the frozen parts are taken from ``factors`` too.

        Raises if the layer sets or shapes differ (naming ``source``) rather than loading part of an adapter.
        """
        where = f" in {source}" if source else ""
        missing, unexpected = sorted(set(self.layers) - set(factors)), sorted(set(factors) - set(self.layers))
        if missing or unexpected:
            raise B4MError(
                f"adapter layers do not match the model{where}: {len(missing)} missing "
                f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
                "was it trained on another base model or with other --targets?"
            )
        for layer, (u, v) in factors.items():
            m, n, d_out, d_in = self.dims[layer]
            if tuple(u.shape) != (m, self.spec.rank) or tuple(v.shape) != (self.spec.rank, n):
                raise B4MError(
                    f"layer {layer}{where} has up {tuple(u.shape)} / down {tuple(v.shape)}, expected "
                    f"{(m, self.spec.rank)} / {(self.spec.rank, n)} (rank {self.spec.rank})"
                )
            a, b, c, d = split_factors(u, v, d_out, d_in)
            up, down = self.up(layer), self.down(layer)
            up.frozen.copy_(a)
            up.learnable.copy_(b)
            down.frozen.copy_(c)
            down.learnable.copy_(d)


def _adapted_layers(model: nn.Module, name: str) -> dict[str, LoraLayer]:
    return {
        module_name: module
        for module_name, module in model.named_modules()
        if isinstance(module, LoraLayer) and name in module.lora_A
    }


def _check_rank_fits(model: nn.Module, rank: int, targets: Sequence[str] | str) -> None:
    """Refuse a rank above the narrowest targeted layer's width before peft allocates anything (a rank that
    high is not low-rank, and an absurd one would ask for many GB)."""
    if isinstance(targets, str):
        return  # a regex: peft decides what matches
    widths = [
        (min(module.in_features, module.out_features), name)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]
    if widths and rank > min(widths)[0]:
        width, name = min(widths)
        raise B4MError(
            f"--rank {rank}: larger than the narrowest targeted layer ({name}: {width} wide); "
            f"give a rank of at most {width}"
        )


def inject_plp(
    model: nn.Module,
    spec: PLPSpec,
    target_modules: Sequence[str] | str = DEFAULT_TARGETS,
    name: str = "b4m",
    only: Iterable[str] | None = None,
    blocks: Sequence[str] = (),
) -> PLPAdapter:
    """Inject a PLP adapter named ``name`` into every linear layer of ``model`` that ``target_modules`` matches.

    ``target_modules`` follows peft: a list of module-name suffixes, or one regex matched against the full name.
    ``blocks`` keeps the matches inside those blocks only (:mod:`b4m.adapters.blocks`). ``only`` restricts
    injection to exactly these module names (used when loading a file). Returns a :class:`PLPAdapter`; ``B`` and
    ``D`` start at zero, so the adapted model equals the base model.
    """
    if only is None and blocks:
        from b4m.adapters.deltas import target_linears

        only = list(target_linears(model, target_modules, blocks))
    targets: Sequence[str] | str = sorted(only) if only is not None else target_modules
    _check_rank_fits(model, spec.rank, targets)
    config = lora_config(spec.rank, targets)
    try:
        if callable(getattr(model, "add_adapter", None)):
            # diffusers models: also registers the config so `set_adapters`/`disable_lora` work as users expect.
            model.add_adapter(config, adapter_name=name)
        else:
            inject_adapter_in_model(config, model, adapter_name=name)
    except ValueError as err:
        if "not found" in str(err) or "No modules were targeted" in str(err) or "Target modules" in str(err):
            raise B4MError(
                f"no layer of the model matches target modules {targets!r}; give module-name suffixes such as "
                f"{list(DEFAULT_TARGETS)} or a regex over full module names"
            ) from None
        raise
    layers = _adapted_layers(model, name)
    if not layers:
        raise B4MError(f"no linear layer matches target modules {targets!r}")
    dims: dict[str, tuple[int, int, int, int]] = {}
    for layer_name, layer in layers.items():
        base = layer.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise B4MError(
                f"target {layer_name} is a {type(base).__name__}; PLP adapts nn.Linear layers only"
            )
        m, n = base.out_features, base.in_features
        d_out, d_in = split_dims(m, n, spec.rho)
        ref = layer.lora_A[name].weight
        a, c = frozen_parts(spec, layer_name, m, n)
        b = torch.zeros(m - d_out, spec.rank)
        d = torch.zeros(spec.rank, n - d_in)
        # Adapters stay fp32 on a bf16/fp16 base (peft casts the input to them and the sum back), so that small
        # updates of B and D are not rounded away.
        dtype = torch.float32 if ref.dtype in (torch.float16, torch.bfloat16) else ref.dtype
        layer.lora_B[name] = PLPUp(a, b).to(device=ref.device, dtype=dtype)
        layer.lora_A[name] = PLPDown(c, d).to(device=ref.device, dtype=dtype)
        dims[layer_name] = (m, n, d_out, d_in)
    return PLPAdapter(model=model, spec=spec, name=name, layers=layers, dims=dims)
