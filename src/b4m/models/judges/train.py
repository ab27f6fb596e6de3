"""Training the judges (:func:`train_judges`): renders of all contents, styles and instances from a refreshed
pool, the augmentation of :mod:`b4m.models.judges.augment`, class losses balanced over the classes
(:func:`balanced_class_weights`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from b4m import threads as b4m_threads
from b4m.models.judges.augment import augment
from b4m.models.judges.config import JudgesTrainConfig
from b4m.models.judges.data import render_batch, scene_labels, uniform_scene
from b4m.models.judges.evaluate import evaluate_judges
from b4m.models.judges.network import WorldJudges, warm_start
from b4m.models.judges.resume import LoopState, Resumer
from b4m.world.concepts import CONTENTS, STYLES
from b4m.world.instances import has_instances
from b4m.world.render import Scene

__all__ = ["balanced_class_weights", "train_judges"]


def balanced_class_weights(has: torch.Tensor, share: float) -> torch.Tensor:
    """``(1/K) / p(class)`` for the class sampling of :func:`~b4m.models.judges.data.uniform_scene`: with probability ``share`` a class
    is drawn among those with instances (``has`` is 1 for them), otherwise among all ``K``. Weighting each
    sample's cross-entropy by it gives every class the same expected weight, ``1/K``."""
    k = len(has)
    p = (1 - share) / k + share * has / has.sum().clamp(min=1)
    return (1.0 / k) / p


def train_judges(
    out_dir: str | Path | None,
    config: JudgesTrainConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **overrides: Any,
) -> dict:
    """Train judges on renders of all contents and styles and all their instances (personal ones included:
    judges must score them), evaluate them on never-seen seeds, save them to ``out_dir`` (unless None) and
    return the metrics (also stored in ``judges.json``).

    Rendering is the bottleneck on CPU, so batches are drawn from a pool of ``pool_size`` uniform scenes in
    which ``refresh`` images are replaced by fresh renders every step (training seeds are
    ``seed * 1e8 + k`` with ``k < 1e8``; evaluation seeds start at ``1e9``). Loss: sum of cross-entropies
    (label smoothing 0.05), AdamW with a one-cycle schedule. Half of each batch gets colour jitter and
    trains only the content head. ``instance_share`` / ``style_share``: see :func:`~b4m.models.judges.data.uniform_scene`.
    ``init_from``: a judges folder to start from (a second phase, e.g. to rebalance the heads), instead of
    random weights. ``balance_classes``: weight the class heads' cross-entropy by ``(1/K) / p(class)``, the
    inverse of each class's sampling probability under the shares, so that the trait heads get the instance
    classes' many samples while the class heads still learn a uniform prior over all K classes.

    The settings are ``config`` (default: :class:`JudgesTrainConfig`'s, the shipped recipe) with ``overrides``
    (its field names, e.g. ``steps=3``) applied.

    Every ``checkpoint_every`` steps the run's state goes to ``out_dir/checkpoints``
    (:mod:`b4m.models.judges.resume`); called again with the same settings, a stopped run continues from there to
    the weights it would have reached uninterrupted. ``overwrite`` discards such a checkpoint and starts over.
    """
    cfg = dataclasses.replace(config or JudgesTrainConfig(), **overrides)
    steps, seed, batch_size, lr, threads = cfg.steps, cfg.seed, cfg.batch_size, cfg.lr, cfg.threads
    pool_size, refresh, n_eval = cfg.pool_size, cfg.refresh, cfg.n_eval
    instance_share, style_share, init_from = cfg.instance_share, cfg.style_share, cfg.init_from
    balance_classes = cfg.balance_classes
    resumer = Resumer(out_dir, cfg, overwrite)  # a stopped run with other settings is refused before any work
    threads = b4m_threads.apply(threads, resumer.threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 17])
    t0 = time.perf_counter()
    next_seed = seed * 100_000_000

    def fresh(n: int) -> tuple[torch.Tensor, list[Scene]]:
        nonlocal next_seed
        scenes = [
            uniform_scene(rng, instance_share=instance_share, style_share=style_share) for _ in range(n)
        ]
        images = render_batch(scenes, list(range(next_seed, next_seed + n)))
        next_seed += n
        return (images * 255).round().to(torch.uint8), scenes

    restored = resumer.restore_pool()
    if restored is None:
        pool, pool_scenes = fresh(pool_size)
        pool_labels = scene_labels(pool_scenes)
    else:
        pool, pool_labels = restored
    render_s = time.perf_counter() - t0
    if progress and restored is None:
        print(f"[judges] rendered a pool of {pool_size} images in {render_s:.0f}s", flush=True)

    judges = warm_start(init_from).train() if init_from else WorldJudges()
    judges = judges.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(judges.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    half = batch_size // 2
    color = torch.arange(batch_size) >= half
    content_has = torch.tensor([float(has_instances("content", c)) for c in CONTENTS])
    style_has = torch.tensor([float(has_instances("style", s)) for s in STYLES])

    shares = {"content": instance_share, "style": instance_share if style_share is None else style_share}
    has_of = {"content": content_has, "style": style_has}
    class_w = {
        k: balanced_class_weights(has_of[k], shares[k]) if balance_classes else torch.ones(len(has_of[k]))
        for k in shares
    }
    log = []
    start = 0
    resumer.attach(judges, opt, sched, gen, rng, pool, pool_labels)
    state = resumer.restore()
    if state is not None:
        start, next_seed, render_s, log = state.step, state.next_seed, state.render_s, state.log
        t0 = time.perf_counter() - state.elapsed_s
        if progress:
            print(f"[judges] continuing from {resumer.found} (step {start} of {steps})", flush=True)
    judges.train()
    for step in range(start, steps):
        tr = time.perf_counter()
        if refresh:
            slots = torch.from_numpy(rng.choice(pool_size, refresh, replace=False))
            new_images, new_scenes = fresh(refresh)
            pool[slots] = new_images
            for name, value in scene_labels(new_scenes).items():
                pool_labels[name][slots] = value
        idx = torch.from_numpy(rng.choice(pool_size, batch_size, replace=False))
        x = augment(pool[idx].float() / 255.0, gen, color)
        labels = {k: v[idx] for k, v in pool_labels.items()}
        render_s += time.perf_counter() - tr
        logits = judges.classify(x)
        # trait heads learn only from classes that have instances (the others have one look)
        has = {"content": content_has[labels["content"]], "style": style_has[labels["style"]]}
        # colour jitter keeps shapes: the content judges (class and traits) train on the whole batch
        losses = {}
        for name, lg in logits.items():
            rows = slice(None) if name.startswith("content") else slice(0, half)
            if name in class_w:
                w = class_w[name][labels[name][rows]]
                ce = F.cross_entropy(lg[rows], labels[name][rows], label_smoothing=0.05, reduction="none")
                losses[name] = (ce * w).sum() / w.sum()
            elif name.startswith(("content_", "style_")):
                mask = has[name.partition("_")[0]][rows]
                ce = F.cross_entropy(lg[rows], labels[name][rows], label_smoothing=0.05, reduction="none")
                losses[name] = (ce * mask).sum() / mask.sum().clamp(min=1)
            else:
                losses[name] = F.cross_entropy(lg[rows], labels[name][rows], label_smoothing=0.05)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            entry = {"step": step, **{k: round(v.item(), 4) for k, v in losses.items()}}
            log.append(entry)
            if progress:
                print(f"[judges] step {step}/{steps} {time.perf_counter() - t0:.0f}s {entry}", flush=True)
        if resumer.due(step + 1, steps):
            resumer.save(LoopState(step + 1, next_seed, render_s, time.perf_counter() - t0, log), threads)
    train_s = time.perf_counter() - t0
    judges.eval()
    t1 = time.perf_counter()
    metrics = evaluate_judges(judges, n_per_concept=n_eval, seed=seed + 1)
    metrics["training"] = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "threads": threads,
        "pool_size": pool_size,
        "refresh_per_step": refresh,
        "instance_share": instance_share,
        "style_share": shares["style"],
        "init_from": str(init_from) if init_from else None,
        "balance_classes": balance_classes,
        "earlier_training": judges.metrics.get("training") if init_from else None,
        "unique_training_images": next_seed - seed * 100_000_000,
        "train_seconds": round(train_s, 1),
        "render_augment_seconds": round(render_s, 1),
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "final_losses": log[-1],
    }
    if out_dir is not None:
        judges.save(out_dir, metrics=metrics)
        resumer.finish()
    return metrics
