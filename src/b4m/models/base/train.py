"""A whole base-model training run (:func:`train_base_model`): the run folder, its caches (the rendered pool,
the autoencoder and the pool's latents), resuming, and the finished pipeline folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
from safetensors import safe_open

from b4m import threads
from b4m.diffusion.builtin_base import BaseModelInfo
from b4m.io import atomic_write, save_safetensors, write_text
from b4m.models.base.build import assemble, build_components, init_from_pipeline
from b4m.models.base.config import BaseModelConfig
from b4m.models.base.data import WORD, encode_pool, render_pool, world_words
from b4m.models.base.phases import TrainLog, train_diffusion, train_vae
from b4m.models.base.ship import save_pipeline

__all__ = ["THREADS_FILE", "train_base_model"]


_RUNTIME_FIELDS = ("num_threads", "log_every", "checkpoint_every")
"""Config fields that may change when a run resumes (they do not change the result: a resumed run uses the
thread count recorded in ``THREADS_FILE``)."""
THREADS_FILE = "threads.json"


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as f:  # a file object: np.savez would append .npz to a name that lacks it
        np.savez(f, **arrays)


def train_base_model(
    cfg: BaseModelConfig, out_dir: str | Path, progress: bool = True, resume: bool = True
) -> Path:
    """Train the VAE, then the UNet and text encoder; write ``out_dir/pipeline`` atomically.

    ``out_dir`` also receives ``train_log.jsonl``, the rendered pool cache and periodic checkpoints; a killed
    run started again with the same ``cfg`` and ``out_dir`` resumes where it stopped (``resume=False`` starts
    over). Returns the pipeline folder.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = out_dir / "config.json"
    if not resume:
        for name in ("train_log.jsonl", "pool.npz", "latents.safetensors", "config.json", THREADS_FILE):
            (out_dir / name).unlink(missing_ok=True)
        for name in ("vae_ckpt", "diffusion_ckpt"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    extended_from = None
    if cfg_file.exists():
        old = BaseModelConfig.from_dict(json.loads(cfg_file.read_text()))
        same = dataclasses.replace(old, **{k: getattr(cfg, k) for k in (*_RUNTIME_FIELDS, "train_steps")})
        if same != cfg or cfg.train_steps < old.train_steps:
            raise ValueError(
                f"train_base_model: {out_dir} holds a run with a different config; "
                "use another out_dir or resume=False to start over "
                "(only train_steps may grow, to continue a run)."
            )
        if cfg.train_steps > old.train_steps:
            extended_from = old.train_steps
    write_text(cfg_file, json.dumps(cfg.to_dict(), indent=2) + "\n")
    threads_file = out_dir / THREADS_FILE
    recorded = json.loads(threads_file.read_text())["threads"] if threads_file.exists() else None
    n_threads = threads.apply(cfg.num_threads, recorded)
    if recorded is None:
        write_text(threads_file, json.dumps({"threads": n_threads}) + "\n")
    log = TrainLog(out_dir / "train_log.jsonl")
    log(phase="threads", threads=n_threads, recorded=recorded is not None)
    t_start = time.time()
    if extended_from is not None:
        # The cosine schedule is re-laid over the new total: the result is that of the two commands in
        # order (a warm restart at the schedule's value for the old step count), not of one longer run.
        log(phase="extend", train_steps_from=extended_from, train_steps_to=cfg.train_steps)

    pool_path = out_dir / "pool.npz"
    if pool_path.exists():
        data = np.load(pool_path)
        images, captions = data["images"], list(data["captions"])
    else:
        images, captions = render_pool(cfg, cfg.pool_size, seed=cfg.seed, progress=progress)
        atomic_write(pool_path, lambda tmp: _save_npz(tmp, images=images, captions=np.array(captions)))
    log(phase="pool", n=len(images), t=time.time() - t_start)

    words = world_words()
    components = build_components(cfg, words)
    vae = components["vae"]
    if cfg.init_from:
        lift = sorted({w for c in captions for w in WORD.findall(str(c))}) if cfg.lift_weak_words else None
        init_from_pipeline(components, cfg.init_from, lift)
    latents_path = out_dir / "latents.safetensors"
    if latents_path.exists():
        with safe_open(str(latents_path), framework="pt") as f:
            vae.load_state_dict({k[4:]: f.get_tensor(k) for k in f.keys() if k.startswith("vae.")})
            latents = f.get_tensor("latents")
            scaling = float(f.metadata()["scaling_factor"])
    else:
        if not cfg.init_from:
            train_vae(vae, images, cfg, out_dir, log, progress)
        vae.eval()
        latents = encode_pool(vae, images, progress=progress)
        scaling = (
            float(vae.config.scaling_factor)  # the UNet being fine-tuned learned latents of this scale
            if cfg.init_from
            else 1.0 / float(latents[:, 0].float().std())  # latents of unit std, as SD's 0.18215
        )
        tensors = {f"vae.{k}": v for k, v in vae.state_dict().items()} | {"latents": latents}
        save_safetensors(tensors, latents_path, {"scaling_factor": repr(scaling)})
    vae.register_to_config(scaling_factor=scaling)
    vae.requires_grad_(False)
    log(phase="latents", scaling_factor=scaling, t=time.time() - t_start)

    input_ids = components["tokenizer"](
        captions, padding="max_length", max_length=cfg.max_length, truncation=True, return_tensors="pt"
    ).input_ids
    too_long = [
        c
        for c, ids in zip(captions, input_ids, strict=True)
        if ids[-1] != components["tokenizer"].eos_token_id
    ]
    if too_long:
        raise ValueError(
            f"train_base_model: caption longer than max_length={cfg.max_length}: {too_long[0]!r}"
        )
    stats = train_diffusion(components, latents, input_ids, cfg, out_dir, log, progress)
    pipe = assemble(components)
    wall = time.time() - t_start
    log(phase="done", wall_s=wall)
    extra = {"config": cfg.to_dict(), "train_wall_s_this_run": wall, "diffusion_steps": stats["steps"]}
    return save_pipeline(
        pipe, out_dir / "pipeline", BaseModelInfo(cfg.resolution, cfg.sample_steps, cfg.guidance_scale), extra
    )
