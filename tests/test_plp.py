"""PLP adapter math (paper Sec. 4.1, Eq. 4-11), checked against independent float64 computations."""

import pytest
import torch
from torch import nn

from b4m.adapters import PLPSpec, delta_blocks, inject_plp, mcp_routing, scale_parts, split_dims
from b4m.adapters.plp import frozen_parts
from b4m.errors import B4MError

SHAPES = [
    (64, 64),
    (1280, 2048),
    (40, 24),
    (24, 40),
]  # square, SDXL attn2.to_k (2048 -> 1280), small both ways


@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("rank", [8, 64])
def test_exact_frozen_parts_are_orthogonal(m, n, rank):
    a, c = frozen_parts(PLPSpec(rank=rank, orth="exact", basis_seed=3), "layer", m, n)
    d_out, d_in = split_dims(m, n, 0.5)
    assert a.shape == (d_out, rank) and c.shape == (rank, d_in)
    assert (a.double() @ c.double()).abs().max() < 1e-6  # Eq. 10, to float32 precision
    assert a.abs().max() > 0.01 and c.abs().max() > 0.01


def test_approx_is_the_official_construction():
    a, c = frozen_parts(PLPSpec(rank=16, orth="approx"), "layer", 64, 64)
    gram = a.double().T @ a.double() + c.double() @ c.double().T
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=1e-6)
    assert (a @ c).abs().max() > 1e-3  # A C != 0: the top-left block is not zero


def test_frozen_parts_deterministic_and_seeded():
    spec = PLPSpec(rank=8, basis_seed=1)
    a1, c1 = frozen_parts(spec, "x", 32, 32)
    a2, c2 = frozen_parts(spec, "x", 32, 32)
    assert torch.equal(a1, a2) and torch.equal(c1, c2)
    a3, _ = frozen_parts(PLPSpec(rank=8, basis_seed=2), "x", 32, 32)
    a4, _ = frozen_parts(spec, "y", 32, 32)
    assert not torch.equal(a1, a3) and not torch.equal(a1, a4)


def test_spec_rejects_bad_values_with_reasons():
    with pytest.raises(ValueError, match="rho must lie strictly between 0 and 1"):
        PLPSpec(rho=1.0)
    with pytest.raises(ValueError, match="orth must be one of"):
        PLPSpec(orth="qr")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(24, 40)
        self.act = nn.GELU()
        self.to_k = nn.Linear(40, 16)

    def forward(self, x):
        return self.to_k(self.act(self.to_q(x)))


def _model(seed=0):
    torch.manual_seed(seed)
    return MLP()


def test_zero_delta_at_init_and_gradients_reach_b_and_d():
    base, model = _model(), _model()
    adapter = inject_plp(model, PLPSpec(rank=8), target_modules=["to_q", "to_k"])
    x = torch.randn(5, 24)
    # B = D = 0: the adapted model is the base model, up to A C, which is zero to float32 precision (~1e-8).
    assert torch.allclose(model(x), base(x), atol=1e-6, rtol=0)
    model(x).pow(2).sum().backward()
    for p in adapter.parameters("BD"):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # The only trainable adapter tensors are B and D; A and C are buffers.
    names = {n for n, p in model.named_parameters() if "lora" in n}
    assert names and all(n.endswith("learnable") for n in names)


def test_frozen_parts_bit_exact_through_adamw_with_weight_decay():
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    adapter = inject_plp(model, PLPSpec(rank=8), target_modules=["to_q", "to_k"])
    before = {k: (a.clone(), c.clone()) for k, (a, c) in adapter.frozen().items()}
    b_before = [p.clone() for p in adapter.parameters("BD")]
    opt = torch.optim.AdamW(adapter.parameters("BD"), lr=1e-2, weight_decay=0.1)
    for _ in range(20):
        opt.zero_grad()
        model(torch.randn(8, 24)).sub(1).pow(2).mean().backward()
        opt.step()
    for k, (a, c) in adapter.frozen().items():
        assert torch.equal(a, before[k][0]) and torch.equal(c, before[k][1])
    assert all(not torch.equal(p, q) for p, q in zip(adapter.parameters("BD"), b_before, strict=True))


def _layer_delta(layer: nn.Module, n: int) -> torch.Tensor:
    """Independent dW of an adapted linear layer: run it and its base on the identity."""
    eye = torch.eye(n)
    with torch.no_grad():
        return (layer(eye) - layer.get_base_layer()(eye)).T.double()


def test_block_structure_against_independent_computation():
    torch.manual_seed(0)
    model = _model()
    adapter = inject_plp(model, PLPSpec(rank=8), target_modules=["to_q"])
    layer = adapter.layers["to_q"]
    m, n, d_out, d_in = adapter.dims["to_q"]
    up, down = adapter.up("to_q"), adapter.down("to_q")
    with torch.no_grad():
        up.learnable.normal_()
        down.learnable.normal_()
    a, b, c, d = (t.double() for t in (up.frozen, up.learnable, down.frozen, down.learnable))
    dw = _layer_delta(layer, n)
    assert dw.shape == (m, n)
    assert dw[:d_out, :d_in].abs().max() < 1e-5  # top-left A C = 0
    assert torch.allclose(dw[:d_out, d_in:], a @ d, atol=1e-5)  # top-right: D only
    assert torch.allclose(dw[d_out:, :d_in], b @ c, atol=1e-5)  # bottom-left: B only
    assert torch.allclose(dw[d_out:, d_in:], b @ d, atol=1e-5)
    # Changing B leaves the top-right block alone; changing D leaves the bottom-left block alone.
    with torch.no_grad():
        up.learnable.mul_(3.0)
    dw_b = _layer_delta(layer, n)
    assert torch.allclose(dw_b[:d_out, d_in:], dw[:d_out, d_in:], atol=1e-6)
    assert not torch.allclose(dw_b[d_out:, :d_in], dw[d_out:, :d_in])
    with torch.no_grad():
        down.learnable.mul_(-2.0)
    dw_d = _layer_delta(layer, n)
    assert torch.allclose(dw_d[d_out:, :d_in], dw_b[d_out:, :d_in], atol=1e-6)
    # The helper agrees with the layer.
    blocks = delta_blocks(up.weight.detach(), down.weight.detach(), d_out, d_in)
    assert torch.allclose(blocks["AD"].double(), dw_d[:d_out, d_in:], atol=1e-5)
    assert torch.allclose(blocks["BC"].double(), dw_d[d_out:, :d_in], atol=1e-5)


def test_scale_parts_scales_content_and_style_blocks_separately():
    torch.manual_seed(1)
    u, v = torch.randn(40, 8).double(), torch.randn(8, 24).double()
    d_out, d_in = split_dims(40, 24, 0.5)
    ref = delta_blocks(u, v, d_out, d_in)
    got = delta_blocks(*scale_parts(u, v, d_out, d_in, content_scale=0.5, style_scale=2.0), d_out, d_in)
    assert torch.allclose(got["AC"], ref["AC"])
    assert torch.allclose(got["AD"], 2.0 * ref["AD"])
    assert torch.allclose(got["BC"], 0.5 * ref["BC"])
    assert torch.allclose(got["BD"], 1.0 * ref["BD"])


@pytest.mark.parametrize("target_part", ["B", "D"])
def test_mcp_routing_is_strict(target_part):
    """In one batched forward, the target rows' loss reaches only `target_part`, the auxiliary rows' only the other."""
    model = _model()
    adapter = inject_plp(model, PLPSpec(rank=8), target_modules=["to_q", "to_k"])
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.normal_(std=0.1)
    other = "D" if target_part == "B" else "B"
    x = torch.randn(4, 24)

    def grads(loss_rows):
        for p in adapter.parameters("BD"):
            p.grad = None
        with mcp_routing(1, target_part):
            out = model(x)
        out[loss_rows].pow(2).sum().backward()
        return {part: [p.grad for p in adapter.parameters(part)] for part in "BD"}

    g_target = grads(slice(0, 1))
    assert all(g is None or g.abs().max() == 0 for g in g_target[other])
    assert all(g.abs().max() > 0 for g in g_target[target_part])
    g_aux = grads(slice(1, 4))
    assert all(g is None or g.abs().max() == 0 for g in g_aux[target_part])
    assert all(g.abs().max() > 0 for g in g_aux[other])
    # Outputs are the same as without routing (detach changes gradients only).
    with torch.no_grad():
        plain = model(x)
    with mcp_routing(1, target_part):
        routed = model(x)
    assert torch.allclose(plain, routed, atol=1e-6, rtol=0)


def test_no_target_matched_is_a_clear_error():
    with pytest.raises(B4MError, match="no layer of the model matches target modules"):
        inject_plp(_model(), PLPSpec(rank=4), target_modules=["to_nothing"])
