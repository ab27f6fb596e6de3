"""``ziplora``: ZipLoRA (Shah et al., ECCV 2024), column-wise merger coefficients on a frozen content and style LoRA.

Per layer, ``m_c, m_s`` (one coefficient per column of ``dW``, i.e. per input feature, ``R^n``; all ones at start):

    dW_m = dW_c diag(m_c) + dW_s diag(m_s)

    L = ||eps_m(z_c, p_c) - eps_c(z_c, p_c)||^2 + ||eps_m(z_s, p_s) - eps_s(z_s, p_s)||^2
        + lambda sum_layers |m_c . m_s|                                                     (ZipLoRA Eq. 5)

where ``eps_m`` is the UNet with the merged update, ``eps_c``/``eps_s`` with the content/style LoRA alone, on
noised content/style latents with their own prompts; ``lambda = 0.01``, at most 100 steps. Adam at ``lr = 1e-2``:
the popular implementation's 5e-5 leaves coefficients that start at 1 practically at 1 after 100 steps (method
notes Sec. 5). Exported exactly as a rank ``r_c + r_s`` LoRA: ``U = [U_c | U_s]``, ``V = [V_c diag(m_c); V_s diag(m_s)]``.
"""

from __future__ import annotations

from typing import Any

import torch

from b4m.adapters.compose import fold_columns
from b4m.adapters.deltas import MergedPairDelta, attach, delta_mode, factors_of
from b4m.diffusion.pipeline import masked_mse, training_scheduler
from b4m.errors import B4MError
from b4m.methods.base import Fitted, Method, register
from b4m.methods.catalogue import CATALOGUE, ZipLoRAOptions
from b4m.methods.common import (
    MERGE_INPUTS,
    Session,
    align_sources,
    check_folders,
    named_params,
    predict,
    read_source,
    reused,
    save_adapter,
    train_steps,
)
from b4m.methods.direct_merge import _words, check_same_base
from b4m.train.loop import sample_batch

__all__ = ["ZipDelta", "ZipLoRAOptions", "fit_ziplora", "teacher_targets"]


class ZipDelta(MergedPairDelta):
    """Frozen source factors (buffers) and the learnable merger coefficients ``m_c``, ``m_s`` of one layer:
    one per input column, starting at 1."""

    fold = staticmethod(fold_columns)

    def __init__(
        self, content: tuple[torch.Tensor, torch.Tensor], style: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        super().__init__(content, style)
        n = self.v_c.shape[1]
        self.m_c = torch.nn.Parameter(torch.ones(n))
        self.m_s = torch.nn.Parameter(torch.ones(n))

    def merged_delta(self) -> torch.Tensor:
        """``dW_c diag(m_c) + dW_s diag(m_s)``, densely (the definition, not the fold)."""
        m_c, m_s = self.m_c.detach().cpu(), self.m_s.detach().cpu()
        return (self.u_c.cpu() @ self.v_c.cpu()) * m_c + (self.u_s.cpu() @ self.v_s.cpu()) * m_s


def teacher_targets(session: Session, scheduler: Any, batch: tuple) -> torch.Tensor:
    """The content LoRA's prediction for row 0 (content) and the style LoRA's for row 1 (style), no gradient."""
    latents, cond, noise, t = batch
    with torch.no_grad():
        with delta_mode("content"):
            c = predict(session.unet, scheduler, latents[:1], cond.index([0]), noise[:1], t[:1])
        with delta_mode("style"):
            s = predict(session.unet, scheduler, latents[1:], cond.index([1]), noise[1:], t[1:])
    return torch.cat([c, s])


def fit_ziplora(cfg: ZipLoRAOptions, pipe: Any = None, progress: bool = True) -> Fitted:
    if cfg.steps > 100:
        raise B4MError(f"--steps {cfg.steps}: ZipLoRA merges in at most 100 steps")
    check_same_base(cfg)
    check_folders(cfg, ["content", "style"])
    session = Session(cfg, "ziplora", inputs=MERGE_INPUTS)
    if session.finished is not None:
        return reused(session.finished)
    session.start(pipe=pipe)
    content = read_source(cfg.content_lora, "--content-lora", session.unet)
    style = read_source(cfg.style_lora, "--style-lora", session.unet)
    names, content, style = align_sources(content, style)
    deltas = {n: ZipDelta(content[n], style[n]) for n in names}
    attach(session.unet, deltas)
    sets = session.image_sets("content", "style")
    scheduler = training_scheduler(session.pipe)
    gen = session.generator(3)
    history: list[float] = list(session.resume_info.get("max_move_per_step", []))  # the steps before a resume

    def step(_: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = sample_batch(sets, [1, 1], gen, scheduler)
        target = teacher_targets(session, scheduler, batch)
        pred = predict(session.unet, scheduler, *batch)
        mse = masked_mse(pred, target, batch.mask)
        overlap = sum((d.m_c * d.m_s).sum().abs() for d in deltas.values())
        loss = mse.sum() + cfg.lambda_merge * overlap
        return loss, {
            "loss_content": mse[0].detach(),
            "loss_style": mse[1].detach(),
            "overlap": overlap.detach(),
        }

    def track(_: int) -> None:
        history.append(
            max(float(torch.cat([d.m_c, d.m_s]).detach().sub(1).abs().max()) for d in deltas.values())
        )

    params = named_params(deltas, ("m_c", "m_s"))
    checkpoints = session.checkpoints(params, gen, extra={"max_move_per_step": history})
    train_steps(
        session,
        list(params.values()),
        step,
        cfg.steps,
        cfg.lr,
        "ziplora (merger coefficients)",
        progress,
        after_step=track,
        checkpoints=checkpoints,
    )
    factors = factors_of(deltas)
    coefficients = {
        n: (d.m_c.detach().cpu().clone(), d.m_s.detach().cpu().clone()) for n, d in deltas.items()
    }
    path = save_adapter(
        session,
        factors,
        "ziplora",
        cfg,
        checkpoints=checkpoints,
        role="fused",
        sources={"content": str(cfg.content_lora), "style": str(cfg.style_lora)},
        trigger_words=_words(cfg),
    )
    return Fitted(
        path,
        merged_delta=lambda: {n: d.merged_delta() for n, d in deltas.items()},
        info={"coefficients": coefficients, "max_move_per_step": history},
    )


register(Method.of(CATALOGUE["ziplora"], fit_ziplora))
