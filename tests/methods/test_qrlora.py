"""QR-LoRA: Q from the base weights (checked with an independent SVD), exported dW = s Q (dR_s + dR_c)."""

import torch

from b4m.adapters.codec import load_lora
from b4m.adapters.deltas import target_linears
from b4m.adapters.inject import DEFAULT_TARGETS
from b4m.methods import fit_method
from b4m.methods.qrlora import qr_basis


def test_qr_basis_spans_the_top_r_singular_space_and_reconstructs_it():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 9, generator=g, dtype=torch.float64)
    q, r = qr_basis(w, 4)
    assert q.shape == (12, 4) and r.shape == (4, 9)
    torch.testing.assert_close(q.T @ q, torch.eye(4, dtype=torch.float64))
    u, s, vh = torch.linalg.svd(w)
    torch.testing.assert_close(q @ r, u[:, :4] @ torch.diag(s[:4]) @ vh[:4])  # s Q R = W0 - W_res
    torch.testing.assert_close(q @ q.T, u[:, :4] @ u[:, :4].T)


def test_exported_lora_is_q_times_the_sum_of_the_two_dr(world, tiny_sdxl, tmp_path):
    data = world(tiny_sdxl().unet)
    keys = ("content_images", "content_prompt", "style_images", "style_prompt")
    fitted = fit_method(
        "qrlora",
        pipe=tiny_sdxl(),
        progress=False,
        base="tiny",
        out=tmp_path / "q",
        steps=2,
        lr=1e-2,
        rank=4,
        resolution=32,
        lambda_c=0.9,
        lambda_s=0.95,
        **{k: data[k] for k in keys},
    )
    base = target_linears(tiny_sdxl().unet, DEFAULT_TARGETS)
    got = load_lora(fitted.path).factors
    content = load_lora(tmp_path / "q" / "content.safetensors").factors
    style = load_lora(tmp_path / "q" / "style.safetensors").factors
    d_r = fitted.info["d_r"]
    for name, (u, v) in got.items():
        w0 = base[name].weight.detach().double()
        uu, _, _ = torch.linalg.svd(w0, full_matrices=False)
        proj = uu[:, :4] @ uu[:, :4].T
        torch.testing.assert_close(
            u.double().T @ u.double(), torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0
        )
        torch.testing.assert_close(proj @ u.double(), u.double(), atol=1e-5, rtol=0)  # U = Q in span(U_r)
        assert torch.equal(content[name][0], u) and torch.equal(style[name][0], u)  # one shared basis
        want = u @ (0.95 * d_r["style"][name] + 0.9 * d_r["content"][name])
        torch.testing.assert_close(u @ v, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(content[name][1], d_r["content"][name])
        assert d_r["content"][name].abs().sum() > 0 and d_r["style"][name].abs().sum() > 0
