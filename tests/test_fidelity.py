"""Fidelity options of issue 27: MCP's auxiliary folders as the official scripts make them."""

from b4m.data.folders import read_image_folder
from b4m.world.refs import PairRefs, export_world_data


def test_official_aux_data_has_distinct_contents_and_reuses_the_identifiers(tmp_path):
    plain = export_world_data(PairRefs(), tmp_path / "plain")
    official = export_world_data(PairRefs(aux_data="official"), tmp_path / "official")

    def captions(folders):
        return [read_image_folder(f).prompts(None, "--aux")[0] for f in folders]

    # plain: with one image per folder and one seed, every auxiliary style shows the same content
    assert len({c.split(" in ")[0] for c in captions(plain["aux_styles"])}) == 1
    styles = captions(official["aux_styles"])
    assert styles == ["a cup in wzk stripes style", "a tree in wzk dots style", "a star in wzk checker style"]
    assert captions(official["aux_contents"]) == [f"a photo of a snq {c}" for c in ("car", "house", "fish")]
    # the target folders are the same either way
    for key in ("content", "style"):
        a = sorted(p.read_bytes() for p in plain[key].glob("*.png"))
        assert a == sorted(p.read_bytes() for p in official[key].glob("*.png"))


def test_the_literal_preconditioner_is_an_option_and_an_arm():
    import torch

    from b4m.bench.catalogue import ARMS, SGD_LR_GRID, arm_options
    from b4m.train.riemannian import make_stage2_optimizer

    b, d = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2, 3))
    pairs = [(b, d, torch.ones(1, 2), torch.ones(2, 1))]
    literal = make_stage2_optimizer(pairs, "riemannian-sgd", lr=0.1, delta_rel=0.0, normalize=False)
    b.grad, d.grad = torch.ones_like(b), torch.ones_like(d)
    before_b, before_d = b.detach().clone(), d.detach().clone()
    literal.step()
    # Eq. 13-14 with delta = 1e-6, computed independently in float64
    bb, dd = before_b.double(), before_d.double()
    eye = torch.eye(2, dtype=torch.float64)
    want_d = dd - 0.1 * torch.linalg.solve(bb.T @ bb + 1e-6 * eye, torch.ones(2, 3, dtype=torch.float64))
    want_b = bb - 0.1 * torch.ones(3, 2, dtype=torch.float64) @ torch.linalg.inv(dd @ dd.T + 1e-6 * eye)
    torch.testing.assert_close(d.detach().double(), want_d, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.detach().double(), want_b, rtol=1e-4, atol=1e-5)
    assert arm_options("rp-literal", None) == {
        "optimizer": "riemannian-sgd",
        "stage2_lr": "tuned",
        "sgd_lr_grid": list(SGD_LR_GRID),
        "delta_rel": 0.0,
        "normalize": False,
    }
    assert "literally" in ARMS["rp-literal"][0] and "literally" not in ARMS["rp-sgd"][0]


def test_option_arms_run_any_b4m_option_and_bad_ones_are_one_line(tmp_path, capsys):
    from b4m.bench.catalogue import ARMS, SGD_LR_GRID, TUNED, BenchConfig, arm_options, plan
    from b4m.cli import main

    p = plan(
        BenchConfig(
            pairs=["teddy#3:papercut#5"],
            methods=["b4m"],
            arms=["aux_lr_scale=0.1,stage2-lr=1e-3+normalize=false"],
        )
    )
    assert p.arms == ("full", "aux_lr_scale=0.1", "stage2-lr=1e-3+normalize=false")
    assert arm_options(p.arms[2], None) == {"stage2_lr": 1e-3, "normalize": False}
    assert arm_options("content-block+aux_lr_scale=0.1", None) == {
        "part": "content", "part_style_scale": 0.0, "aux_lr_scale": 0.1}  # fmt: skip
    assert arm_options("paper+aux_lr_scale=0.1", None) == {**ARMS["paper"][1], "aux_lr_scale": 0.1}
    assert arm_options("rho=0.25+optimizer=adamw", None) == {"rho": 0.25, "optimizer": "adamw"}
    assert arm_options("rho=3/8", None) == {"rho": 0.375}
    literal = arm_options("aux_lr_scale=0.1+rp-literal", None)  # the named arm keeps its tuned rate
    assert literal == {"aux_lr_scale": 0.1, **ARMS["rp-literal"][1], "stage2_lr": TUNED,
                       "sgd_lr_grid": list(SGD_LR_GRID)}  # fmt: skip
    assert main(["bench", "--out", str(tmp_path / "b"), "--arms", "foo=1,rank=x,paper+bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "--arms foo=1: foo is not a B4M training option" in err and "--arms rank=x: rank=x:" in err
    assert "--arms paper+bogus: write 'bogus' as key=value" in err
    assert not (tmp_path / "b").exists()


def test_row_fusion_keeps_each_stage1_adapters_own_rows():
    import pytest
    import torch

    from b4m.adapters.plp import assemble, delta_blocks, row_fusion

    g = torch.Generator().manual_seed(0)
    m, n, r, d_out, d_in = 10, 12, 4, 5, 6
    a, c = torch.randn(d_out, r, generator=g), torch.randn(r, d_in, generator=g)
    b_c, d_aux = torch.randn(m - d_out, r, generator=g), torch.randn(r, n - d_in, generator=g)
    b_aux, d_s = torch.randn(m - d_out, r, generator=g), torch.randn(r, n - d_in, generator=g)
    content, style = assemble(a, b_c, c, d_aux), assemble(a, b_aux, c, d_s)
    up, down = row_fusion(content, style, d_out, d_in)
    assert up.shape == (m, 2 * r) and down.shape == (2 * r, n)
    dw = up @ down
    want = torch.cat([torch.cat([a @ c, a @ d_s], 1), torch.cat([b_c @ c, b_c @ d_aux], 1)], 0)
    torch.testing.assert_close(dw, want)
    blocks_c, blocks_s = delta_blocks(*content, d_out, d_in), delta_blocks(*style, d_out, d_in)
    torch.testing.assert_close(dw[d_out:, d_in:], blocks_c["BD"])  # the content's interaction block kept
    torch.testing.assert_close(dw[:d_out, d_in:], blocks_s["AD"])  # the style block from the style adapter
    with pytest.raises(ValueError, match="same basis"):
        row_fusion(content, assemble(a + 1, b_aux, c, d_s), d_out, d_in)


def test_the_paper_arm_runs_stage2_at_stage1s_rate_with_the_official_clipping_and_decay():
    import dataclasses

    from b4m.bench.arms import ARMS, arm_options
    from b4m.methods.catalogue import B4MOptions
    from b4m.options import PRESETS

    over = arm_options("paper", None)
    assert over == {"stage2_lr": PRESETS["builtin"]["lr"], "stage2_steps": 40, "stage2_max_grad_norm": 1.0,
                    "stage2_weight_decay": 1e-2}  # fmt: skip
    assert set(over) <= {f.name for f in dataclasses.fields(B4MOptions)}
    assert "paper" in ARMS
