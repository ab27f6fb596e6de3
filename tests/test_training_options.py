"""The everyday training options (issue 28 item 3), each checked against an independent computation: LR schedules
(diffusers' ``get_scheduler`` and the closed forms), gradient clipping, gradient accumulation, min-SNR weights,
noise offset, FLUX timestep sampling, 8-bit AdamW and Prodigy, save precision, resume with a schedule, and the
options' messages and routing."""

from __future__ import annotations

import copy
import json
import math
import re
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import image_folder as _folder
from safetensors import safe_open

import b4m.train.loop as loop_mod
from b4m.adapters.codec import load_lora
from b4m.config import to_dict
from b4m.diffusion.objective import Objective
from b4m.diffusion.pipeline import Conditioning, per_sample_loss
from b4m.errors import B4MError
from b4m.io import JsonlLog
from b4m.options import LR_SCHEDULERS, NEUTRAL_DEFAULTS, Stage1Config, Stage2Config
from b4m.train.identity import run_settings
from b4m.train.loop import CachedSet, make_accelerator, run_steps, sample_batch
from b4m.train.recipe import check_family, make_lr_scheduler, make_optimizer


def _loop(step_fn, optimizer, steps, tmp_path, **kw):
    """``run_steps`` on a model-free loop (the parameters live in ``optimizer``)."""
    run_steps(
        step_fn,
        steps=steps,
        accelerator=make_accelerator("no"),
        model=torch.nn.Module(),
        optimizer=optimizer,
        log=JsonlLog(tmp_path / "log.jsonl"),
        name="test",
        progress=False,
        **kw,
    )
    return [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ LR schedules
@pytest.mark.parametrize("name", LR_SCHEDULERS)
def test_the_lr_of_each_step_is_get_schedulers(name, tmp_path):
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=0.1)
    seen = []

    def step(_):
        seen.append(opt.param_groups[0]["lr"])
        return (w - 1).pow(2).sum(), {}

    sched = make_lr_scheduler(opt, name, warmup_steps=3, steps=10, num_cycles=2, power=2.0)
    log = _loop(step, opt, 10, tmp_path, lr_scheduler=sched)

    from diffusers.optimization import get_scheduler

    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    ref = get_scheduler(name, ref_opt, num_warmup_steps=3, num_training_steps=10, num_cycles=2, power=2.0)
    expected = []
    for _ in range(10):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert seen == expected
    assert log[-1]["lr"] == expected[-1]  # the rate of the step, logged
    closed = {  # the schedules' closed forms, step k of 10, warm-up 3
        "linear": lambda k: k / 3 if k < 3 else (10 - k) / 7,
        "cosine": lambda k: k / 3 if k < 3 else 0.5 * (1 + math.cos(math.pi * (k - 3) / 7)),
        "constant_with_warmup": lambda k: min(1.0, k / 3),
    }
    if name in closed:
        assert seen == pytest.approx([0.1 * closed[name](k) for k in range(10)], abs=1e-12)


def test_the_default_schedule_builds_nothing():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert make_lr_scheduler(opt, "constant", 0, 100) is None
    assert "initial_lr" not in opt.param_groups[0]  # the optimizer is untouched: a default run is as before


# ------------------------------------------------------------------------------------------ clipping
@pytest.mark.parametrize("max_norm", [None, 0.5, 100.0])
def test_clipping_bounds_the_update_to_the_clipped_gradient(max_norm, tmp_path):
    target = torch.tensor([3.0, -4.0, 12.0])
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=1.0)  # w1 = w0 - g: the update is the (clipped) gradient
    log = _loop(lambda _: (((w - target) ** 2).sum(), {}), opt, 1, tmp_path, max_grad_norm=max_norm)
    grad = 2 * (torch.zeros(3) - target)  # by hand: d/dw |w - t|^2 = 2 (w - t); |g| = 26
    scale = 1.0 if max_norm is None else min(1.0, max_norm / float(grad.norm()))
    assert torch.allclose(w.detach(), -grad * scale, rtol=1e-5)
    assert float((w.detach()).norm()) <= (max_norm or math.inf) * (1 + 1e-5)
    if max_norm is None:
        assert "grad_norm" not in log[-1]
    else:
        assert log[-1]["grad_norm"] == pytest.approx(26.0)  # the norm before clipping


# ------------------------------------------------------------------------------------------ accumulation
def test_accumulating_two_batches_equals_one_step_on_both(tmp_path):
    """AdamW on a float64 linear model: 3 steps of 2 accumulated batches of 2 samples give the parameters of 3
    steps on the same 4 samples at once (equal up to float64 rounding: the gradient sums are ordered
    differently); 3 steps on the first halves alone do not."""
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(12, 4, generator=g, dtype=torch.float64),
        torch.randn(12, 2, generator=g, dtype=torch.float64),
    )

    def fit(batches, accumulation, sub):
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 2).double()
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
        calls = iter(batches)

        def step(_):
            i = next(calls)
            loss = torch.nn.functional.mse_loss(model(x[i]), y[i])
            return loss, {"part": loss.detach()}

        log = _loop(step, opt, 3, sub, accumulation=accumulation)
        return [p.detach().clone() for p in model.parameters()], log

    halves = [slice(2 * k, 2 * k + 2) for k in range(6)]
    wholes = [slice(4 * k, 4 * k + 4) for k in range(3)]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    accumulated, log = fit(halves, 2, tmp_path / "a")
    at_once, _ = fit(wholes, 1, tmp_path / "b")
    first_halves, _ = fit(halves[::2], 1, tmp_path / "c")
    for a, b, c in zip(accumulated, at_once, first_halves, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
        assert not torch.allclose(a, c, rtol=0, atol=1e-6)
    assert log[-1]["step"] == 3  # a step is one optimizer step
    assert log[-1]["loss"] == pytest.approx(log[-1]["part"])  # the mean of the micro-batches' losses


# ------------------------------------------------------------------------------------------ min-SNR
class _Half(torch.nn.Module):
    def forward(self, x, t, encoder_hidden_states):  # noqa: ARG002 - a UNet's signature
        return SimpleNamespace(sample=0.5 * x)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_are_the_hand_computed_ones(prediction):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction
    )
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas = np.cumprod(1 - betas)
    t = torch.tensor([0, 20, 300, 999])
    snr = alphas[t.numpy()] / (1 - alphas[t.numpy()])
    expected = np.minimum(snr, 5.0) / (snr if prediction == "epsilon" else snr + 1)
    weights = Objective(snr_gamma=5.0).loss_weights(sched, t)
    assert np.allclose(weights.numpy(), expected, rtol=1e-4)
    assert Objective().loss_weights(sched, t) is None

    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    cond = Conditioning(torch.zeros(4, 1, 8))
    plain = per_sample_loss(_Half(), sched, latents, cond, noise, t)
    weighted = per_sample_loss(_Half(), sched, latents, cond, noise, t, Objective(snr_gamma=5.0))
    assert torch.allclose(weighted, plain * torch.tensor(expected, dtype=torch.float32), rtol=1e-4)


# ------------------------------------------------------------------------------------------ noise and timesteps
def _sets():
    g = torch.Generator().manual_seed(3)
    return [
        CachedSet(
            Path("a"),
            torch.randn(3, 4, 8, 8, generator=g),
            Conditioning(torch.randn(3, 2, 5, generator=g)),
            ["a"] * 3,
        ),
        CachedSet(
            Path("b"),
            torch.randn(2, 4, 8, 8, generator=g),
            Conditioning(torch.randn(2, 2, 5, generator=g)),
            ["b"] * 2,
        ),
    ]


SCHED = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000))


def test_noise_offset_is_diffusers_formula_on_the_same_generator():
    sets = _sets()
    latents, _, noise, t = sample_batch(
        sets, [1, 1], torch.Generator().manual_seed(7), SCHED, Objective(noise_offset=0.1)
    )
    ref = torch.Generator().manual_seed(7)
    i0, i1 = torch.randint(3, (1,), generator=ref), torch.randint(2, (1,), generator=ref)
    eps = torch.randn((1, 4, 8, 8), generator=ref)
    t_ref = torch.randint(0, 1000, (1,), generator=ref)
    offset = torch.randn(
        (1, 4, 1, 1), generator=ref
    )  # offset * randn(B, C, 1, 1), one for the step's one noise
    assert torch.equal(latents, torch.cat([sets[0].latents[i0], sets[1].latents[i1]]))
    assert torch.equal(noise, (eps + 0.1 * offset).expand(2, 4, 8, 8))
    assert torch.equal(t, t_ref.expand(2))


def test_the_default_objective_draws_what_b4m_always_drew():
    """No offset and uniform timesteps: the same tensors and no extra random draw (the generator ends where the
    old code left it)."""
    out = []
    for objective in (None, Objective(), Objective(noise_offset=0.0)):
        gen = torch.Generator().manual_seed(11)
        out.append((*sample_batch(_sets(), [1, 1], gen, SCHED, objective), gen.get_state()))
    ref = torch.Generator().manual_seed(11)
    torch.randint(3, (1,), generator=ref), torch.randint(2, (1,), generator=ref)
    eps, t = torch.randn((1, 4, 8, 8), generator=ref), torch.randint(0, 1000, (1,), generator=ref)
    for _latents, _cond, noise, ts, state in out:
        assert torch.equal(noise, eps.expand(2, 4, 8, 8)) and torch.equal(ts, t.expand(2))
        assert torch.equal(state, ref.get_state())


def _draws(objective, n=3000):
    gen = torch.Generator().manual_seed(0)
    return np.array([int(objective.timestep(SCHED, gen)) for _ in range(n)])


@pytest.mark.parametrize(
    ("objective", "quantile"),
    [
        (
            Objective(timestep_sampling="logit_normal", logit_mean=0.5, logit_std=0.8),
            lambda z: 1 / (1 + math.exp(-(0.5 + 0.8 * z))),
        ),
        (Objective(timestep_sampling="sigmoid", logit_std=1.5), lambda z: 1 / (1 + math.exp(-1.5 * z))),
        (Objective(timestep_sampling="uniform"), lambda z: statistics.NormalDist().cdf(z)),
    ],
)
def test_timestep_quantiles_follow_the_sampling_density(objective, quantile):
    u = (_draws(objective) + 0.5) / 1000
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        z = statistics.NormalDist().inv_cdf(q)
        assert abs(np.quantile(u, q) - quantile(z)) < 0.025, (q, np.quantile(u, q), quantile(z))


def test_mode_sampling_follows_the_sd3_mode_density():
    """SD3's mode sampling: u ~ U(0, 1) mapped by f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u), monotone for
    s = 1.29, so its quantile q is f(1 - q)."""
    u = (_draws(Objective(timestep_sampling="mode", mode_scale=1.29)) + 0.5) / 1000
    for q in (0.1, 0.5, 0.9):
        x = 1 - q
        assert abs(np.quantile(u, q) - (1 - x - 1.29 * (math.cos(math.pi * x / 2) ** 2 - 1 + x))) < 0.025
    assert u.min() >= 0 and u.max() < 1  # u = 1 is clamped to the last index


def test_flow_and_ddpm_options_are_refused_on_the_other_family():
    with pytest.raises(B4MError, match=r"^--snr-gamma: .*FLUX trains by flow matching"):
        check_family(Stage1Config(snr_gamma=5.0), "flux")
    with pytest.raises(B4MError, match=r"^--timestep-sampling logit_normal: applies to FLUX"):
        check_family(Stage1Config(timestep_sampling="logit_normal"), "sdxl")
    check_family(Stage1Config(timestep_sampling="logit_normal"), "flux")
    check_family(Stage1Config(snr_gamma=5.0), "builtin")


# ------------------------------------------------------------------------------------------ messages, routing
def test_bad_values_are_one_line_each_naming_the_option(tmp_path):
    from b4m.train.stage1 import train_stage1
    from b4m.train.stage2 import train_stage2

    bad = Stage1Config(
        images=tmp_path, aux=["x"], lr_scheduler="sometimes", lr_warmup_steps=-1, max_grad_norm=-1.0,
        gradient_accumulation_steps=0, snr_gamma=0.0, noise_offset=-0.1, timestep_sampling="normal",
        logit_std=0.0, save_precision="fp8", train_optimizer="sgd", lr_num_cycles=0,
    )  # fmt: skip
    with pytest.raises(B4MError) as err:
        train_stage1(bad, "content", pipe=object())
    message = str(err.value)
    assert "\n" not in message
    for flag in (
        "--lr-scheduler sometimes", "--lr-warmup-steps -1", "--max-grad-norm -1.0", "--gradient-accumulation-steps 0",
        "--snr-gamma 0.0", "--noise-offset -0.1", "--timestep-sampling normal", "--logit-std 0.0",
        "--save-precision fp8", "--train-optimizer sgd", "--lr-num-cycles 0",
    ):  # fmt: skip
        assert flag in message
    bad2 = Stage2Config(
        content=tmp_path / "c.safetensors", style=tmp_path / "s.safetensors", stage2_max_grad_norm=-2.0,
        stage2_lr_scheduler="never", stage2_weight_decay=-1.0,
    )  # fmt: skip
    with pytest.raises(B4MError) as err:
        train_stage2(bad2, pipe=object())
    for flag in ("--stage2-weight-decay -1.0", "--stage2-lr-scheduler never", "--stage2-max-grad-norm -2.0"):
        assert flag in str(err.value)


def test_b4m_run_refuses_a_bad_stage_2_option_before_stage_1_trains(tmp_path):
    from b4m.methods import fit_method

    images = _folder(tmp_path / "c", 0)
    with pytest.raises(B4MError, match=r"^--stage2-max-grad-norm -1\.0: give a finite norm"):
        fit_method(
            "b4m", content_images=images, style_images=images, mcp=False, out=tmp_path / "o",
            stage2_max_grad_norm=-1.0, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "o" / "content").exists()


def test_a_missing_optimizer_package_is_one_line_with_its_pip_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    from b4m.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    images = _folder(tmp_path / "c", 0)
    argv = ["train", "content", "--images", str(images), "--no-mcp", "--out", str(tmp_path / "o")]
    assert main([*argv, "--train-optimizer", "adamw8bit"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--train-optimizer adamw8bit: needs bitsandbytes" in err and "pip install bitsandbytes" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()  # before any work
    assert main([*argv, "--gradient-accumulation-steps", "0"]) == 2
    assert "--gradient-accumulation-steps 0: give 1 or more" in capsys.readouterr().err


def test_help_names_each_option_once_and_stage_2_keeps_its_optimizer(capsys):
    from b4m.cli import main

    def help_of(*argv):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        return capsys.readouterr().out

    run = help_of("run", "b4m")
    for flag in ("--train-optimizer", "--optimizer", "--lr-scheduler", "--stage2-lr-scheduler", "--max-grad-norm",
                 "--stage2-max-grad-norm", "--stage2-weight-decay", "--snr-gamma", "--save-precision"):  # fmt: skip
        assert re.search(rf"^\s+{flag}\b", run, re.M), flag
    train = help_of("train", "content")
    assert "--lr-scheduler" in train and "--timestep-sampling" in train and "--stage2-" not in train
    fuse = help_of("fuse")
    assert "--stage2-max-grad-norm" in fuse and "--snr-gamma" in fuse and "--train-optimizer" not in fuse
    assert "--save-precision" in help_of("run", "direct-merge") and "--lr-scheduler" in help_of("run", "lora")


def test_b4m_run_routes_each_option_to_its_stages_and_defaults_leave_identities_alone(tmp_path):
    from b4m.methods.b4m import stage_configs
    from b4m.methods.catalogue import B4MOptions

    opts = B4MOptions(
        lr_scheduler="cosine", stage2_lr_scheduler="linear", snr_gamma=5.0, train_optimizer="prodigy",
        max_grad_norm=1.0, stage2_max_grad_norm=0.5, save_precision="bf16", gradient_accumulation_steps=2,
    )  # fmt: skip
    content, style, stage2 = stage_configs(opts, tmp_path)
    for s1 in (content, style):
        assert (s1.lr_scheduler, s1.train_optimizer, s1.max_grad_norm, s1.snr_gamma) == (
            "cosine",
            "prodigy",
            1.0,
            5.0,
        )
        assert (s1.save_precision, s1.gradient_accumulation_steps) == ("bf16", 2)
    assert (stage2.stage2_lr_scheduler, stage2.stage2_max_grad_norm, stage2.snr_gamma) == ("linear", 0.5, 5.0)
    assert stage2.save_precision == "bf16" and not hasattr(stage2, "train_optimizer")
    # A default run's identity is what it was before these options existed; a set one is part of it.
    assert not set(run_settings(to_dict(Stage1Config()))) & set(NEUTRAL_DEFAULTS)
    assert run_settings(to_dict(content))["lr_scheduler"] == "cosine"


# ------------------------------------------------------------------------------------------ optimizers
@pytest.fixture(scope="module")
def builtin_batch():
    """The built-in base with a fixed batch (one noise, one timestep), for optimizers to descend on."""
    from b4m.diffusion.pipeline import (
        encode_images,
        encode_prompts,
        freeze,
        load_pipeline,
        training_scheduler,
    )

    pipe = load_pipeline("builtin")
    freeze(pipe)
    g = torch.Generator().manual_seed(0)
    latents = encode_images(pipe, torch.rand(2, 3, 32, 32, generator=g))
    cond = encode_prompts(pipe, ["a photo of snq teddy"] * 2, 32)
    noise = torch.randn(1, *latents.shape[1:], generator=g).expand_as(latents)
    return pipe, training_scheduler(pipe), (latents, cond, noise, torch.full((2,), 400))


@pytest.mark.parametrize(
    ("name", "lr", "rank", "steps"), [("adamw8bit", 2e-3, 32, 4), ("prodigy", 1.0, 4, 10)]
)
def test_8bit_adamw_and_prodigy_train_the_builtin_base_and_checkpoint(
    name, lr, rank, steps, builtin_batch, tmp_path
):
    """Rank 32 gives the built-in base's 128-wide layers factors of 4096 entries, where bitsandbytes keeps 8-bit
    states (smaller tensors keep 32-bit ones); Prodigy grows its step from d0 = 1e-6, so it needs ~10 steps."""
    from b4m.adapters.deltas import attach
    from b4m.adapters.inject import DEFAULT_TARGETS
    from b4m.methods.lora import plain_deltas
    from b4m.train.checkpoint import load_checkpoint, save_checkpoint

    pipe, sched, batch = builtin_batch
    unet = copy.deepcopy(pipe.unet)
    deltas = plain_deltas(unet, DEFAULT_TARGETS, rank, seed=0)
    attach(unet, deltas)
    params = {f"{n}.{k}": p for n, d in deltas.items() for k, p in d.named_parameters()}
    opt = make_optimizer(name, list(params.values()), lr, weight_decay=1e-2)

    def loss_now():
        with torch.no_grad():
            return float(per_sample_loss(unet, sched, *batch).mean())

    before = loss_now()
    _loop(lambda _: (per_sample_loss(unet, sched, *batch).mean(), {}), opt, steps, tmp_path)
    assert loss_now() < before * 0.99  # it trains
    if name == "adamw8bit":
        states = [s["__bnb_optimizer_quant_state__"]["state1"] for s in opt.state_dict()["state"].values()]
        assert any(t.dtype == torch.uint8 for t in states)  # really 8-bit

    # Its state goes through a b4m checkpoint: a restored copy takes the same next step.
    gen = torch.Generator().manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", steps, params, opt, gen)
    saved = {k: p.detach().clone() for k, p in params.items()}
    twin = make_optimizer(name, list(params.values()), lr, weight_decay=1e-2)
    steps = []
    for o in (opt, twin):
        if o is twin:
            load_checkpoint(ckpt, params, twin, gen)
        per_sample_loss(unet, sched, *batch).mean().backward()
        o.step()
        o.zero_grad()
        steps.append({k: p.detach().clone() for k, p in params.items()})
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
    for k in params:
        assert torch.equal(steps[0][k], steps[1][k]), k


# ------------------------------------------------------------------------------------------ save precision
def _dtypes(path):
    with safe_open(str(path), framework="pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}, json.loads(f.metadata()["b4m"])


def test_a_half_precision_plp_file_restores_its_exact_frozen_basis(tiny_sd, tmp_path):
    from b4m.adapters import PLPSpec, inject_plp, read_plp_file, save_plp
    from b4m.adapters.plp import frozen_parts

    unet = tiny_sd().unet
    adapter = inject_plp(unet, PLPSpec(rank=4))
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.normal_(std=0.3)
    path = save_plp(adapter, tmp_path / "a.safetensors", dtype=torch.float16)
    dtypes, meta = _dtypes(path)
    assert dtypes == {"F16"} and meta["save_precision"] == "fp16"
    lora, spec = read_plp_file(path)  # the rounded frozen parts are checked, then replaced by the exact ones
    for module, (u, v) in lora.factors.items():
        a, c = frozen_parts(spec, module, u.shape[0], v.shape[1])
        assert torch.equal(u[: a.shape[0]], a) and torch.equal(v[:, : c.shape[1]], c)
        b = adapter.up(module).learnable.detach()
        assert torch.equal(u[a.shape[0] :], b.half().float())
    tampered = load_lora(path)
    first = next(iter(tampered.factors))
    tampered.factors[first][0][0, 0] += 0.01
    from b4m.adapters.files import checked_spec

    with pytest.raises(B4MError, match="frozen parts hash to basis id"):
        checked_spec(tampered, path)


def test_bf16_lora_reloads_in_diffusers(tiny_sd, tmp_path):
    from b4m.methods import fit_method

    images = _folder(tmp_path / "c", 0)
    fitted = fit_method(
        "lora", pipe=tiny_sd(), progress=False, base="tiny", steps=2, lr=1e-2, rank=2, resolution=32,
        content_images=images, content_prompt="a photo of snq teddy", out=tmp_path / "o", save_precision="bf16",
        max_grad_norm=1.0, lr_scheduler="linear", lr_warmup_steps=1, gradient_accumulation_steps=2,
        noise_offset=0.05, snr_gamma=5.0,
    )  # fmt: skip
    dtypes, meta = _dtypes(fitted.path)
    assert dtypes == {"BF16"} and meta["save_precision"] == "bf16"
    pipe = tiny_sd()
    pipe.load_lora_weights(str(fitted.path), adapter_name="x")
    file = load_lora(fitted.path).factors
    from peft.tuners.lora import LoraLayer

    loaded = {n: m for n, m in pipe.unet.named_modules() if isinstance(m, LoraLayer)}
    assert set(loaded) == set(file)
    for n, (u, v) in file.items():
        m = loaded[n]
        assert torch.equal(m.lora_B["x"].weight * m.scaling["x"] @ m.lora_A["x"].weight, u @ v)
    row = json.loads((tmp_path / "o" / "train_log.jsonl").read_text().splitlines()[-1])
    assert {"lr", "grad_norm"} <= set(row) and row["lr"] == pytest.approx(1e-2 * 1 / 1)


def test_stage2_clips_schedules_decays_and_saves_fp16(tiny_sd, tmp_path):
    from b4m.adapters import PLPSpec, inject_plp, save_plp
    from b4m.train.stage2 import train_stage2

    files = {}
    for role, seed in (("content", 1), ("style", 2)):
        adapter = inject_plp(tiny_sd().unet, PLPSpec(rank=4))
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in adapter.parameters("BD"):
                p.normal_(std=0.2)
        files[role] = save_plp(adapter, tmp_path / f"{role}.safetensors", role=role, dtype=torch.float16)
    cfg = Stage2Config(
        content=files["content"], style=files["style"], base="tiny", out=tmp_path / "fused", resolution=32,
        content_images=_folder(tmp_path / "ci", 0), content_prompt="a photo of snq teddy",
        style_images=_folder(tmp_path / "si", 1), style_prompt="a paper in w@z style",
        stage2_steps=3, stage2_lr=1e-2, stage2_max_grad_norm=1e-3, stage2_lr_scheduler="linear",
        stage2_lr_warmup_steps=1, stage2_weight_decay=1e-2, save_precision="fp16", checkpoint_every=0,
    )  # fmt: skip
    path = train_stage2(cfg, pipe=tiny_sd(), progress=False)
    dtypes, meta = _dtypes(path)
    assert dtypes == {"F16"} and meta["save_precision"] == "fp16" and meta["stage"] == 2
    row = json.loads((tmp_path / "fused" / "train_log.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 3 and row["lr"] == pytest.approx(1e-2 * (3 - 2) / (3 - 1))  # linear, warm-up 1
    assert row["grad_norm"] > 1e-3  # clipped to 1e-3 before the preconditioner


# ------------------------------------------------------------------------------------------ resume
def test_a_killed_run_with_a_schedule_resumes_bit_identical_on_the_builtin_base(tmp_path, monkeypatch):
    from b4m.diffusion.pipeline import load_pipeline
    from b4m.train.stage1 import train_stage1

    base = load_pipeline("builtin")
    images = _folder(tmp_path / "c", 0)

    def cfg(out):
        return Stage1Config(
            images=images, prompt="a photo of snq teddy", mcp=False, out=out, steps=3, checkpoint_every=2,
            lr_scheduler="cosine", lr_warmup_steps=1, max_grad_norm=1.0, rank=4,
        )  # fmt: skip

    full = train_stage1(cfg(tmp_path / "full"), "content", pipe=copy.deepcopy(base), progress=False)
    real = loop_mod.save_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the checkpoint of step 2

    monkeypatch.setattr(loop_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_stage1(cfg(tmp_path / "run"), "content", pipe=copy.deepcopy(base), progress=False)
    monkeypatch.undo()
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["lr_scheduler"]["last_epoch"] == 2  # the schedule's state is in the checkpoint
    resumed = train_stage1(cfg(tmp_path / "run"), "content", pipe=copy.deepcopy(base), progress=False)
    a, b = load_lora(full).factors, load_lora(resumed).factors
    assert a.keys() == b.keys()
    for m in a:
        assert torch.equal(a[m][0], b[m][0]) and torch.equal(a[m][1], b[m][1])
    logs = [
        json.loads(p.read_text().splitlines()[-1])
        for p in (tmp_path / "full" / "train_log.jsonl", tmp_path / "run" / "train_log.jsonl")
    ]
    assert logs[0]["lr"] == logs[1]["lr"] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 1 / 2)))


def test_flux_trains_with_logit_normal_timesteps_and_refuses_min_snr(tiny_flux, tmp_path, monkeypatch):
    from b4m.methods import fit_method

    seen = []
    real = Objective.timestep
    monkeypatch.setattr(Objective, "timestep", lambda self, *a: seen.append(real(self, *a)) or seen[-1])
    images = _folder(tmp_path / "c", 0)
    common = dict(
        base="tiny-flux", steps=2, lr=1e-2, rank=2, resolution=32, content_images=images,
        content_prompt="a photo of snq teddy", progress=False,
    )  # fmt: skip
    fitted = fit_method(
        "lora",
        pipe=tiny_flux(),
        out=tmp_path / "o",
        timestep_sampling="logit_normal",
        logit_mean=1.0,
        **common,
    )
    assert load_lora(fitted.path).meta["base_family"] == "flux" and len(seen) == 2
    with pytest.raises(B4MError, match=r"^--snr-gamma: .*flow matching"):
        fit_method("lora", pipe=tiny_flux(), out=tmp_path / "p", snr_gamma=5.0, **common)


def test_the_options_load_from_config_files_and_flags_alike(tmp_path):
    import argparse

    from b4m.config import add_config_args, config_from_args, load_config

    (tmp_path / "c.yaml").write_text(
        "lr-scheduler: cosine\nlr_warmup_steps: 10\nsnr_gamma: 5\ntrain_optimizer: prodigy\nsave_precision: bf16\n"
    )
    parser = argparse.ArgumentParser()
    add_config_args(parser, Stage1Config)
    args = parser.parse_args(
        ["--config", str(tmp_path / "c.yaml"), "--lr-warmup-steps", "20", "--max-grad-norm", "1"]
    )
    cfg = config_from_args(Stage1Config, args)
    assert (cfg.lr_scheduler, cfg.lr_warmup_steps, cfg.snr_gamma, cfg.max_grad_norm) == (
        "cosine",
        20,
        5.0,
        1.0,
    )
    assert (cfg.train_optimizer, cfg.save_precision) == ("prodigy", "bf16")
    with pytest.raises(
        B4MError, match="unknown option 'train_optimizer'"
    ):  # stage 2 keeps its own --optimizer
        load_config(Stage2Config, tmp_path / "c.yaml", {})
