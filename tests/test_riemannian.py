"""Stage-2 Riemannian preconditioner (Eq. 13-14) against an independent float64 computation."""

import numpy as np
import pytest
import torch
from torch import nn

from b4m.train.riemannian import RiemannianPreconditioner, make_stage2_optimizer


def _pair(seed, m_rows=12, r=4, n_cols=10, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    n = nn.Parameter(torch.randn(m_rows, r, generator=g) * scale)  # B
    m = nn.Parameter(torch.randn(r, n_cols, generator=g) * scale)  # D
    a = torch.randn(6, r, generator=g)
    c = torch.randn(r, 5, generator=g)
    n.grad = torch.randn(n.shape, generator=g)
    m.grad = torch.randn(m.shape, generator=g)
    return n, m, a, c


def test_sgd_form_is_eq_13_14_exactly():
    pairs = [_pair(0), _pair(1, m_rows=7, n_cols=9)]
    ref = []
    for n, m, _, _ in pairs:
        N, M = n.detach().double().numpy(), m.detach().double().numpy()
        gN, gM = n.grad.double().numpy(), m.grad.double().numpy()
        delta, lr = 1e-6, 0.1
        M_new = M - lr * np.linalg.inv(N.T @ N + delta * np.eye(4)) @ gM  # Eq. 13
        N_new = N - lr * gN @ np.linalg.inv(M @ M.T + delta * np.eye(4))  # Eq. 14
        ref.append((N_new, M_new))
    opt = make_stage2_optimizer(pairs, name="riemannian-sgd", lr=0.1, delta=1e-6, delta_rel=0.0)
    opt.preconditioner.normalize = False
    opt.step()
    for (n, m, _, _), (N_new, M_new) in zip(pairs, ref, strict=True):
        np.testing.assert_allclose(n.detach().double().numpy(), N_new, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(m.detach().double().numpy(), M_new, rtol=1e-4, atol=1e-5)


def test_full_operands_use_whole_factors():
    n, m, a, c = _pair(2)
    gN, gM = n.grad.double().numpy(), m.grad.double().numpy()
    U = np.concatenate([a.double().numpy(), n.detach().double().numpy()])
    V = np.concatenate([c.double().numpy(), m.detach().double().numpy()], axis=1)
    pre = RiemannianPreconditioner(
        [(n, m, a, c)], operands="full", delta=1e-6, delta_rel=0.0, normalize=False
    )
    pre.apply()
    np.testing.assert_allclose(
        m.grad.double().numpy(), np.linalg.inv(U.T @ U + 1e-6 * np.eye(4)) @ gM, rtol=1e-4
    )
    np.testing.assert_allclose(
        n.grad.double().numpy(), gN @ np.linalg.inv(V @ V.T + 1e-6 * np.eye(4)), rtol=1e-4
    )


def test_guard_keeps_near_zero_parts_finite_and_bounded():
    """With B, D ~ 0 (start of training), a fixed delta=1e-6 would blow the gradient up 1e6-fold."""
    n, m, a, c = _pair(3, scale=1e-8)
    g_before = m.grad.clone()
    RiemannianPreconditioner([(n, m, a, c)]).apply()
    assert torch.isfinite(m.grad).all()
    # Normalised: at B ~ 0 the preconditioner is the identity, so the step keeps its size.
    assert torch.allclose(m.grad, g_before, rtol=1e-3)
    # On well-scaled parts the normalised preconditioner changes direction, not overall size (within 1 + 1/delta_rel).
    n, m, a, c = _pair(4)
    g_norm = m.grad.norm()
    RiemannianPreconditioner([(n, m, a, c)], delta_rel=1e-2).apply()
    assert 0.01 < (m.grad.norm() / g_norm) < 101


def test_adamw_form_preconditions_before_the_moments():
    n, m, a, c = _pair(5)
    n2, m2 = nn.Parameter(n.detach().clone()), nn.Parameter(m.detach().clone())
    n2.grad, m2.grad = n.grad.clone(), m.grad.clone()
    RiemannianPreconditioner([(n2, m2, a, c)]).apply()  # preconditioned gradients, then plain AdamW
    ref = torch.optim.AdamW([n2, m2], lr=1e-2, weight_decay=0.0)
    ref.step()
    opt = make_stage2_optimizer([(n, m, a, c)], name="riemannian-adamw", lr=1e-2)
    opt.step()
    assert torch.allclose(n, n2) and torch.allclose(m, m2)


def test_refuses_closures_and_unknown_names():
    opt = make_stage2_optimizer([_pair(6)], name="adamw")
    with pytest.raises(ValueError, match="closure-based"):
        opt.step(lambda: 0.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_stage2_optimizer([_pair(7)], name="lbfgs")
