"""``qrlora``: QR-LoRA (ICCV 2025, arXiv 2507.04599), a frozen orthonormal basis from the base weights and a
learnable ``dR`` per concept; content and style merge by adding their ``dR``.

Per target layer ``W0`` (``m x n``), rank ``r`` (``min(r, m, n)`` where a layer is smaller):

    W0 ~ U_r S_r V_r^T (top-r SVD)  ->  U_r S_r V_r^T = Q R  (thin QR, Q: m x r orthonormal, R: r x n)
    W_res = W0 - s Q R,   forward  W_res x + s Q (R + dR) x  =  W0 x + s Q dR x

with ``Q`` and ``R`` frozen and only ``dR`` (``r x n``, zero at start) trained; ``s = alpha / r``. Because ``Q``
depends only on the base, every QR-LoRA on one base shares it, and a content and a style QR-LoRA merge as
``Q (R + a dR_s + b dR_c) + W_res``: a net change ``dW = s Q (a dR_s + b dR_c)``, exactly a standard rank-r LoRA
with up ``s Q`` and down ``a dR_s + b dR_c`` (the public code writes custom keys plus a residual file no loader
reads). This run trains ``dR_c`` on the content images, then ``dR_s`` on the style images, and writes the merged
LoRA (plus ``content.safetensors`` and ``style.safetensors``, each one concept's rank-r LoRA).

Choices where the paper is silent: the SVD and QR are computed in float64 on the CPU and rounded to float32; the
sign of each ``Q`` column is fixed by ``diag(R) >= 0``; ``a = b = 1`` by default (the paper uses 0.9-1.0).
"""

from __future__ import annotations

from typing import Any

import torch

from b4m.adapters.deltas import Delta, attach, factors_of, target_linears
from b4m.diffusion.memory import dense_weight
from b4m.diffusion.pipeline import default_targets
from b4m.methods.base import Fitted, Method, register
from b4m.methods.catalogue import CATALOGUE, QRLoRAOptions
from b4m.methods.common import Session, check_folders, reused, save_adapter, train_steps
from b4m.methods.lora import denoising_step
from b4m.train.checkpoint import read_checkpoint_params

__all__ = ["PARTS", "QRDelta", "QRLoRAOptions", "fit_qrlora", "qr_basis"]

PARTS = ("content.safetensors", "style.safetensors")
"""The two trained parts QR-LoRA writes beside its merged adapter (the merge coefficients can be changed later)."""


def qr_basis(w0: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, R)`` of the top-``rank`` SVD of ``w0``: ``U_r S_r V_r^T = Q R``, ``Q^T Q = I``, float64."""
    w = w0.detach().double().cpu()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = min(rank, s.numel())
    core = (u[:, :r] * s[:r]) @ vh[:r]
    q, rr = torch.linalg.qr(core)
    q, rr = q[:, :r], rr[:r]
    sign = torch.where(torch.diagonal(rr) < 0, -1.0, 1.0).to(q.dtype)
    return q * sign, rr * sign.unsqueeze(1)


class QRDelta(Delta):
    """``dW = s Q dR``: ``Q`` a frozen buffer, ``dR`` the layer's only parameter (zero at start)."""

    def __init__(self, q: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("q", q.float().contiguous())
        self.scale = scale
        self.d_r = torch.nn.Parameter(torch.zeros(q.shape[1], 0))

    def reset(self, n: int) -> None:
        self.d_r = torch.nn.Parameter(torch.zeros(self.q.shape[1], n, device=self.q.device))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q * self.scale, self.d_r


def fit_qrlora(cfg: QRLoRAOptions, pipe: Any = None, progress: bool = True) -> Fitted:
    check_folders(cfg, ["content", "style"])
    session = Session(cfg, "qrlora", inputs=["content_images", "style_images"], writes=PARTS)
    if session.finished is not None:
        return reused(session.finished)
    session.start(pipe=pipe)
    layers = target_linears(session.unet, default_targets(session.pipe, cfg.targets), cfg.blocks)
    deltas: dict[str, QRDelta] = {}
    for name, layer in sorted(layers.items()):
        q, _ = qr_basis(dense_weight(layer), cfg.rank)
        r = q.shape[1]
        deltas[name] = QRDelta(q, (cfg.alpha if cfg.alpha is not None else r) / r)
    attach(session.unet, deltas)
    trained: dict[str, dict[str, torch.Tensor]] = {}
    resumed_at = session.resume_info.get("step", 0)
    checkpoints = None  # counted over both loops: content steps, then style steps
    for i, concept in enumerate(("content", "style")):
        images = session.images(concept)
        for name, d in deltas.items():
            d.reset(layers[name].in_features)
        gen = session.generator(4 + i)
        offset = i * cfg.steps
        params = {f"{concept}.{n}": d.d_r for n, d in deltas.items()}
        if resumed_at > offset + cfg.steps:  # the checkpoint is of the style loop: this one had finished
            _restore(params, read_checkpoint_params(session.resume, list(params)))
        else:
            earlier = {f"{c}.{n}": t for c, done in trained.items() for n, t in done.items()}
            checkpoints = session.checkpoints(
                params | earlier, gen, resume=resumed_at > offset, offset=offset
            )
            train_steps(
                session,
                list(params.values()),
                lambda step, images=images, gen=gen: denoising_step(session, [images], gen),
                cfg.steps,
                cfg.lr,
                f"qrlora ({concept})",
                progress,
                checkpoints=checkpoints,
            )
        trained[concept] = {n: d.d_r.detach().cpu().clone() for n, d in deltas.items()}
        save_adapter(
            session,
            factors_of(deltas),
            "qrlora",
            cfg,
            name=f"{concept}.safetensors",
            role=concept,
            prompt=images.prompts[0],
            trigger_words=session.trigger_words(images),
        )
    with torch.no_grad():
        for name, d in deltas.items():
            d.d_r.copy_(cfg.lambda_s * trained["style"][name] + cfg.lambda_c * trained["content"][name])
    factors = factors_of(deltas)

    def merged() -> dict[str, Any]:  # s Q (a dR_s + b dR_c)
        return {
            n: d.scale
            * d.q.cpu()
            @ (cfg.lambda_s * trained["style"][n] + cfg.lambda_c * trained["content"][n])
            for n, d in deltas.items()
        }

    path = save_adapter(
        session,
        factors,
        "qrlora",
        cfg,
        checkpoints=checkpoints,
        role="fused",
        trigger_words=_all_words(session),
    )
    return Fitted(
        path, merged_delta=merged, info={"d_r": trained, "q": {n: d.q.cpu() for n, d in deltas.items()}}
    )


def _restore(params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])


def _all_words(session: Session) -> list[str]:
    from b4m.adapters.codec import load_lora

    words: list[str] = []
    for concept in ("content", "style"):
        words += load_lora(session.out / f"{concept}.safetensors").meta.get("trigger_words", [])
    return list(dict.fromkeys(words))


register(Method.of(CATALOGUE["qrlora"], fit_qrlora))
