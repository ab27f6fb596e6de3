"""The data options (issue 28, item 3): --repeats, loss masks (NAME.mask.png) and --buckets (with SDXL's size and
crop conditioning), each checked against an independent computation; defaults leave runs bit-identical."""

import hashlib
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from b4m.cli import main
from b4m.data.buckets import bucket_ladder, nearest_bucket, place
from b4m.data.folders import read_image_folder
from b4m.data.repeats import repeat_counts
from b4m.diffusion.pipeline import Conditioning, encode_images, per_sample_loss, predict, training_scheduler
from b4m.errors import B4MError
from b4m.options import Stage1Config
from b4m.train.datasets import cache_all
from b4m.train.identity import data_fingerprint, run_settings
from b4m.train.loop import CachedSet, cache_set, sample_batch

PROMPT = "a photo of teddy"
SCHED = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000))


def _img(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _folder(path, sizes, seed=0, caption=None):
    path.mkdir(parents=True)
    for i, (name, (w, h)) in enumerate(sizes.items()):
        _img(path / f"{name}.png", w, h, seed + i)
        if caption:
            (path / f"{name}.txt").write_text(caption)
    return path


def _cfg(**kw):
    return Stage1Config(**({"base": "tiny"} | kw))


# ---------------------------------------------------------------- repeats


def test_repeats_count_images_by_name_and_reject_bad_entries():
    paths = [Path(p) for p in ("/d/face1.png", "/d/face2.png", "/d/closeups/x.png", "/d/other.png")]
    assert repeat_counts(paths, []) == [1, 1, 1, 1]
    # a bare N for the unnamed images, the last matching pattern wins, a '/' pattern matches the path's tail
    assert repeat_counts(paths, ["2", "face*=3", "closeups/*=5", "face2*=1"]) == [3, 1, 5, 2]
    for bad in ("0", "x=", "=3", "face*=two", "-1"):
        with pytest.raises(B4MError, match="--repeats"):
            repeat_counts(paths, [bad])


def _toy_set(n, pool=None):
    latents = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)
    return CachedSet(Path("x"), latents, Conditioning(torch.zeros(n, 1, 1)), ["p"] * n, pool=pool)


def test_repeats_draw_each_image_as_often_as_it_counts():
    counts = [1, 2, 5]
    pool = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    gen, twin = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    drawn = []
    for _ in range(4000):
        latents, _, noise, t = sample_batch([_toy_set(3, pool)], [1], gen, SCHED)
        drawn.append(int(latents.item()))
        if len(drawn) <= 20:  # independently: pool[randint(len(pool))], then the noise, then the timestep
            i = pool[torch.randint(len(pool), (1,), generator=twin)]
            assert int(i) == drawn[-1]
            assert torch.equal(noise, torch.randn((1, 1, 1, 1), generator=twin))
            assert torch.equal(t, torch.randint(0, 1000, (1,), generator=twin))
        elif len(drawn) == 21:
            twin = None
    freq = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.abs(freq - np.array(counts) / sum(counts)).max() < 0.03
    # every count 1: the very draws of a set without repeats
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(10):
        a = sample_batch([_toy_set(3, torch.arange(3))], [1], g1, SCHED)
        b = sample_batch([_toy_set(3)], [1], g2, SCHED)
        assert all(torch.equal(x, y) for x, y in zip((a[0], a[2], a[3]), (b[0], b[2], b[3]), strict=True))


# ---------------------------------------------------------------- masks


def test_mask_files_are_listed_with_their_image_and_checked(tmp_path, capsys):
    d = _folder(tmp_path / "imgs", {"a": (32, 32), "b": (32, 32)})
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(d / "a.mask.png")
    images = read_image_folder(d)
    assert [p.name for p in images.paths] == ["a.png", "b.png"]  # the mask is no training image
    assert [m and m.name for m in images.masks] == ["a.mask.png", None]

    out = str(tmp_path / "run")
    args = ["train", "content", "--images", str(d), "--prompt", PROMPT, "--no-mcp", "--out", out]
    Image.fromarray(np.full((16, 32), 255, np.uint8)).save(d / "a.mask.png")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.mask.png: 32x16, but its image a.png is 32x32" in err[0]
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(d / "a.mask.png")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.mask.png: all black" in err[0]
    (d / "a.mask.png").rename(d / "c.mask.png")
    assert main(args) == 2
    assert "c.mask.png is a loss mask without its image" in capsys.readouterr().err
    assert main([*args, "--repeats", "face*=0"]) == 2
    assert "--repeats face*=0" in capsys.readouterr().err


class Pointwise(torch.nn.Module):
    """A denoiser whose output at a latent cell depends on that cell alone (a 1x1 convolution)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, sample, timestep, encoder_hidden_states=None, **_):
        return SimpleNamespace(sample=self.conv(sample))


def test_masked_loss_ignores_what_lies_outside_the_mask_exactly():
    torch.manual_seed(0)
    model, sched = Pointwise(), DDPMScheduler(num_train_timesteps=1000)
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t, cond = torch.tensor([500, 500]), Conditioning(torch.zeros(2, 1, 1))
    mask = torch.ones(2, 1, 8, 8)
    mask[0, :, :, :3] = 0  # sample 0: left columns ignored
    mask[1, :, 4:] = 0.25  # sample 1: bottom half counts a quarter
    mask[1, :, :2, :2] = 0

    def loss_and_grads(lat, eps):
        model.zero_grad()
        loss = per_sample_loss(model, sched, lat, cond, eps, t, mask=mask)
        loss.sum().backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    ref, ref_grads = loss_and_grads(latents, noise)
    outside = (mask == 0).expand_as(latents)
    other_lat, other_eps = latents.clone(), noise.clone()
    other_lat[outside] = torch.randn(int(outside.sum())) * 10
    other_eps[outside] = torch.randn(int(outside.sum()))
    got, got_grads = loss_and_grads(other_lat, other_eps)
    assert torch.equal(got, ref) and all(torch.equal(a, b) for a, b in zip(got_grads, ref_grads, strict=True))
    # independently: sum(w * err) / sum(w), w over the channels too
    with torch.no_grad():
        err = (model(sched.add_noise(latents, noise, t), t).sample - noise).double() ** 2
    w = mask.double().expand_as(err)
    torch.testing.assert_close(ref.double(), (w * err).sum((1, 2, 3)) / w.sum((1, 2, 3)), rtol=1e-6, atol=0)
    plain = per_sample_loss(model, sched, latents, cond, noise, t)
    ones = per_sample_loss(model, sched, latents, cond, noise, t, mask=torch.ones(2, 1, 8, 8))
    torch.testing.assert_close(ones, plain)


def test_masked_loss_on_a_pipeline_equals_an_independent_computation(tiny_sd, tmp_path):
    pipe = tiny_sd()
    d = _folder(tmp_path / "imgs", {"a": (48, 32), "b": (32, 32)})
    grey = np.random.default_rng(3).integers(0, 256, (32, 48)).astype(np.uint8)
    grey[:, :8] = 0  # outside the centre crop: whatever it holds
    Image.fromarray(grey).save(d / "a.mask.png")
    s = cache_all(pipe, [(d, PROMPT, "--images")], 32, _cfg())[0]
    plain = cache_set(pipe, d, PROMPT, 32, "--images")
    assert torch.equal(s.latents, plain.latents)  # a mask changes the loss, never the latents
    # the centre crop (columns 8..40) averaged over 2x2 pixels per latent cell (the VAE halves the size)
    expect = grey[:, 8:40].astype(np.float64).reshape(16, 2, 16, 2).mean(axis=(1, 3)) / 255
    np.testing.assert_allclose(s.masks[0, 0].numpy(), expect, atol=1e-6)
    assert torch.equal(s.masks[1], torch.ones(1, 16, 16))  # no mask: weight 1 everywhere

    sched = training_scheduler(pipe)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        batch = sample_batch([s], [1], gen, sched)
        if batch.mask is not None and not torch.equal(batch.mask, torch.ones_like(batch.mask)):
            break
    assert not torch.equal(batch.mask, torch.ones_like(batch.mask))  # image a, with its mask, was drawn
    with torch.no_grad():
        loss = per_sample_loss(pipe.unet, sched, *batch, mask=batch.mask)
        pred = predict(pipe.unet, sched, *batch)
    latents, _, noise, _ = batch
    err = (pred.double() - noise.double()).numpy() ** 2  # epsilon prediction: the target is the noise
    w = np.broadcast_to(expect, err.shape[1:])
    np.testing.assert_allclose(loss.item(), (w * err[0]).sum() / w.sum(), rtol=1e-5)


def test_identity_counts_mask_bytes_and_keeps_runs_without_options(tmp_path):
    d = _folder(tmp_path / "imgs", {"a": (32, 32)})
    paths, prompts = [d / "a.png"], [PROMPT]
    h = hashlib.sha256()
    h.update(b"set 0\n")
    h.update(hashlib.sha256((d / "a.png").read_bytes()).digest())
    h.update(PROMPT.encode() + b"\n")
    assert data_fingerprint([(paths, prompts)]) == h.hexdigest()[:16]  # as before masks existed
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(d / "a.mask.png")
    white = data_fingerprint([(paths, prompts)])
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(d / "a.mask.png")
    assert len({h.hexdigest()[:16], white, data_fingerprint([(paths, prompts)])}) == 3
    defaults = {"lr": 1.0, "repeats": [], "masks": True, "buckets": False}
    assert run_settings(defaults) == {"lr": 1.0}
    assert run_settings(defaults | {"buckets": True, "repeats": ["a*=2"]}) == {
        "buckets": True,
        "lr": 1.0,
        "repeats": ["a*=2"],
    }


# ---------------------------------------------------------------- buckets


def test_bucket_ladder_sizes_and_placement():
    for resolution, step in ((32, 8), (512, 64), (1024, 64), (1024, 16)):
        ladder = bucket_ladder(resolution, step)
        assert (resolution, resolution) in ladder and len(set(ladder)) == len(ladder)
        for h, w in ladder:
            assert h % step == 0 and w % step == 0 and (w, h) in ladder  # portrait and landscape
            assert 0.7 < h * w / resolution**2 < 1.3  # about R^2 (coarse steps round the short side)
    assert (24, 48) in bucket_ladder(32, 8) and (720, 1440) in bucket_ladder(1024, 16)  # 2:1 exactly
    assert nearest_bucket(100, 200, bucket_ladder(32, 8)) == (24, 48)
    assert nearest_bucket(200, 100, bucket_ladder(32, 8)) == (48, 24)
    fits = place(200, 100, (24, 48))  # 2:1 in a 2:1 bucket: resized, not cropped
    assert (fits.resized, fits.left, fits.top, fits.time_ids()) == ((48, 24), 0, 0, [100, 200, 0, 0, 24, 48])
    wide = place(300, 100, (24, 48))  # 3:1: covers the bucket at 72x24, the centre 48 columns kept
    assert (wide.resized, wide.left, wide.top) == ((72, 24), 12, 0)
    assert wide.box == pytest.approx((50, 0, 250, 100))


def _bucket_data(tmp_path):
    target = _folder(tmp_path / "target", {"sq": (40, 40), "wide": (64, 32)})
    aux = _folder(tmp_path / "aux", {"tall": (30, 50)}, seed=7, caption="a paper in style")
    return target, aux


def test_buckets_train_each_target_image_in_its_shape(tiny_sd, tmp_path):
    pipe = tiny_sd()
    target, aux = _bucket_data(tmp_path)
    cfg = _cfg(buckets=True)
    lead, follow = cache_all(pipe, [(target, PROMPT, "--images"), (aux, None, "--aux-styles")], 32, cfg)
    assert lead.bucket_of == [(32, 32), (24, 48)]  # the tiny SD's multiple is 4: a 2:1 bucket at 32 px
    wide = lead.views[(24, 48)]
    assert wide.latents.shape == (1, 4, 12, 24) and wide.rows.tolist() == [-1, 0]  # a 2:1 latent
    # independently: resized to 48x24 (no crop: it fits), then encoded
    im = Image.open(target / "wide.png").convert("RGB").resize((48, 24), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    assert torch.equal(wide.latents, encode_images(pipe, pixels))
    # the auxiliary image is cached at every bucket of the target, its own portrait shape cropped to each
    assert sorted(follow.views) == [(24, 48), (32, 32)]
    assert follow.views[(24, 48)].latents.shape == (1, 4, 12, 24) and follow.bucket_of is None

    sched = training_scheduler(pipe)
    gen, seen = torch.Generator().manual_seed(0), []
    for _ in range(300):
        latents, _, noise, t = sample_batch([lead, follow], [1, 1], gen, sched)
        seen.append(tuple(latents.shape[-2:]))
        assert latents.shape[0] == 2 and noise.shape == latents.shape and torch.equal(noise[0], noise[1])
    assert set(seen) == {(16, 16), (12, 24)} and abs(seen.count((12, 24)) / 300 - 0.5) < 0.1
    with torch.no_grad():
        batch = sample_batch([lead, follow], [1, 1], torch.Generator().manual_seed(3), sched)
        assert per_sample_loss(pipe.unet, sched, *batch, mask=batch.mask).shape == (2,)


def test_sdxl_time_ids_carry_each_images_size_and_crop(tiny_sdxl, tmp_path):
    pipe = tiny_sdxl()
    d = _folder(tmp_path / "imgs", {"fits": (64, 32), "off": (70, 30)})
    plain = cache_set(pipe, d, PROMPT, 32, "--images")
    assert plain.cond.added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2  # the default: unchanged
    s = cache_all(pipe, [(d, PROMPT, "--images")], 32, _cfg(buckets=True))[0]
    assert s.bucket_of == [(24, 48), (24, 48)]
    view = s.views[(24, 48)]
    # (original h, w, crop top, left, target h, w): 64x32 fits 48x24 (no crop); 70x30 covers it at 56x24 and
    # loses 4 columns on the left
    assert view.cond.added["time_ids"].tolist() == [[32, 64, 0, 0, 24, 48], [30, 70, 0, 4, 24, 48]]
    assert view.latents.shape == (2, 4, 12, 24)
    sched = training_scheduler(pipe)
    with torch.no_grad():
        batch = sample_batch([s], [1], torch.Generator().manual_seed(0), sched)
        assert predict(pipe.unet, sched, *batch).shape == (1, 4, 12, 24)


def test_flux_buckets_use_its_patch_times_vae_multiple(tiny_flux, tmp_path):
    pipe = tiny_flux()
    d = _folder(tmp_path / "imgs", {"wide": (64, 32)})
    s = cache_all(pipe, [(d, PROMPT, "--images")], 32, _cfg(buckets=True))[0]
    assert s.bucket_of == [(24, 48)]  # sides: multiples of VAE factor 2 x 2x2 packing = 4
    sched = training_scheduler(pipe)
    with torch.no_grad():
        batch = sample_batch([s], [1], torch.Generator().manual_seed(0), sched)
        assert per_sample_loss(pipe.transformer, sched, *batch).shape == (1,)
        assert batch[0].shape == (1, 4, 12, 24)


# ---------------------------------------------------------------- runs


def _adapter(path):
    from b4m.adapters import load_lora

    return load_lora(path).factors


def test_defaults_are_bit_identical_and_all_options_train(tiny_sd, tmp_path):
    from b4m.train.stage1 import train_stage1

    target, aux = _bucket_data(tmp_path)
    base = _cfg(
        images=target,
        prompt=PROMPT,
        aux=[str(aux)],
        steps=2,
        lr=1e-2,
        rank=4,
        resolution=32,
        checkpoint_every=0,
    )
    ref = _adapter(
        train_stage1(replace(base, out=tmp_path / "r0"), "content", pipe=tiny_sd(), progress=False)
    )
    # repeats of 1 take the data options' caching path: the same tensors as the original one
    ones = _adapter(
        train_stage1(
            replace(base, out=tmp_path / "r1", repeats=["1"]), "content", pipe=tiny_sd(), progress=False
        )
    )
    # a mask file ignored with --no-masks: the same run as without it
    Image.fromarray(np.full((32, 64), 255, np.uint8)).save(target / "wide.mask.png")
    off = _adapter(
        train_stage1(
            replace(base, out=tmp_path / "r2", masks=False), "content", pipe=tiny_sd(), progress=False
        )
    )
    for other in (ones, off):
        assert all(torch.equal(ref[n][k], other[n][k]) for n in ref for k in (0, 1))
    mask = np.zeros((32, 64), np.uint8)
    mask[:, 16:48] = 255
    Image.fromarray(mask).save(target / "wide.mask.png")
    every = replace(base, out=tmp_path / "r3", buckets=True, repeats=["wide*=3"])
    trained = _adapter(train_stage1(every, "content", pipe=tiny_sd(), progress=False))
    assert set(trained) == set(ref) and any(not torch.equal(ref[n][0], trained[n][0]) for n in ref)
