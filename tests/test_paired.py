"""The bench's paired analysis (b4m.eval.paired), checked against closed forms and hand computations."""

import itertools
import math

import numpy as np
import pytest

from b4m.eval.paired import holm, paired_difference, ratio_of_means, sign_flip_p, verdict, wilson
from b4m.eval.stats import aggregate


def _per(rng, n, content=0.6, inst=0.5):
    return {
        "content": np.clip(content + 0.05 * rng.standard_normal(n), 0, 1),
        "style": np.clip(0.7 + 0.05 * rng.standard_normal(n), 0, 1),
        "content_inst": (rng.random(n) < inst).astype(float),
        "prompt_hit": rng.integers(0, 3, n).astype(float),
        "prompt_asked": np.full(n, 2.0),
    }


def test_wilson_matches_the_closed_forms():
    # 0 of n: the upper bound is z^2 / (n + z^2); k = n mirrors it
    z = 1.959963984540054
    assert wilson(0, 20) == pytest.approx([0.0, z * z / (20 + z * z)], abs=1e-9)
    assert wilson(20, 20) == pytest.approx([20 / (20 + z * z), 1.0], abs=1e-9)
    lo, hi = wilson(12, 40)
    p, n = 0.3, 40
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-9)


def test_sign_flip_p_is_exact_and_two_sided():
    assert sign_flip_p([0.1] * 5) == pytest.approx(2 / 32)  # only all-plus and all-minus reach |mean|
    assert sign_flip_p([0.1, -0.1]) == 1.0
    d = [0.3, 0.1, -0.05, 0.2]
    count = sum(abs(np.dot(s, d)) >= abs(sum(d)) - 1e-12 for s in itertools.product((1, -1), repeat=4))
    assert sign_flip_p(d) == pytest.approx(count / 16)
    assert sign_flip_p([0.1] * 20, n_random=5000) < 0.002  # Monte Carlo above 16 pairs


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_paired_difference_equals_per_pair_means_and_uses_common_draws():
    rng = np.random.default_rng(0)
    b = [_per(rng, 20, content=c) for c in (0.2, 0.5, 0.8, 0.4)]  # pairs differ a lot
    a = [dict(x, content=x["content"] + 0.05) for x in b]  # A = B + 0.05 on every image
    out = paired_difference(a, b, n_boot=500, seed=1)
    assert out["content"]["diff"] == pytest.approx(0.05)
    # common draws: every replicate of the difference is exactly 0.05, whatever the pairs' spread
    assert out["content"]["ci95"] == pytest.approx([0.05, 0.05])
    assert out["content"]["p"] == pytest.approx(2 / 16)
    every = np.arange(20)[None]
    want = np.mean(
        [aggregate(x, every)["hmean"][0] - aggregate(y, every)["hmean"][0] for x, y in zip(a, b, strict=True)]
    )
    assert out["hmean"]["diff"] == pytest.approx(want)
    same = paired_difference(b, b, n_boot=200)
    assert same["content_inst"]["diff"] == 0 and same["content_inst"]["ci95"] == [0.0, 0.0]
    assert same["content_inst"]["p"] == 1.0
    with pytest.raises(ValueError, match="same cells"):
        paired_difference([a[0]], [_per(rng, 10)])


def test_verdicts():
    d = {"diff": 0.1, "ci95": [0.05, 0.15], "ci90": [0.06, 0.14]}
    assert verdict(d, 0.01, 0.05) == "better"
    assert verdict({**d, "diff": -0.1, "ci95": [-0.15, -0.05]}, 0.01, 0.05) == "worse"
    assert verdict(d, 0.2, 0.05) == "undecided at this size"  # an interval alone is no verdict
    assert verdict({"diff": 0.0, "ci95": [-0.04, 0.04], "ci90": [-0.03, 0.03]}, 0.9, 0.05) == "equivalent"
    assert verdict({"diff": 0.0, "ci95": [-0.1, 0.1], "ci90": [-0.08, 0.08]}, 0.9, 0.05) == (
        "undecided at this size"
    )


def test_identity_retention_is_a_ratio_of_sums():
    out = ratio_of_means([0.2, 0.4, 0.0], [0.4, 0.8, 0.0], n_boot=300)
    assert out["ratio"] == pytest.approx(0.5)
    assert out["per_pair"] == [0.5, 0.5, None]
    assert ratio_of_means([0.1], [0.0])["ratio"] is None


def test_suites_are_fixed_in_the_docs_and_keep_dev_and_test_apart():
    from collections import Counter
    from pathlib import Path

    from b4m.bench.suites import DEV_INSTANCES, SUITES
    from b4m.world.instances import learnable_concept_problem

    docs = (Path(__file__).resolve().parents[1] / "docs" / "suites.md").read_text()
    for name, pairs in SUITES.items():
        section = docs.split(f"({'`b4m bench --suite ' + name + '`'})")[1].split("\n## ")[0]
        assert [line[3:-1] for line in section.splitlines() if line.startswith("- `")] == list(pairs), name
    test = [p for p in SUITES["test"] if "#" in p]
    assert len(test) >= 16 and len(set(SUITES["test"])) == len(SUITES["test"])
    used = Counter(x for p in test for x in p.split(":"))
    assert max(used.values()) <= 2 and not set(used) & set(DEV_INSTANCES)
    new_class = [p for p in SUITES["test"] if "#" not in p]
    assert len(new_class) >= 4 and not {x for p in new_class for x in p.split(":")} & {"mushroom", "glass"}
    from b4m.bench.suites import REPLICATES

    rep = REPLICATES["test"]  # the replicates the docs declare
    words = {2: "two", 3: "three", 4: "four"}
    assert f"the first {words[rep.pairs]} test pairs trained again at" in docs
    assert "training seeds " + " and ".join(map(str, rep.seeds)) in docs
    assert all(f"`{m}`" in docs.split("Training-seed replicates")[1].split("\n\n")[0] for m in rep.methods)
    for pair in (*SUITES["dev"], *SUITES["test"]):
        content, style = pair.split(":")
        assert learnable_concept_problem(content, "content") is None
        assert learnable_concept_problem(style, "style") is None
