"""World metrics against an independent computation, and the HTML report built from results.json alone."""

import json

import numpy as np
import pytest
import torch

from b4m.eval.metrics import score_world
from b4m.eval.report import write_report


class FakeJudges:
    """Features are fixed functions of the image, so the expected cosines can be computed by hand."""

    def content_features(self, images):
        return torch.nn.functional.normalize(images.mean(dim=(2, 3)), dim=-1)

    def style_features(self, images):
        return torch.nn.functional.normalize(images.std(dim=(2, 3)) + 1e-3, dim=-1)

    def predict(self, images):
        n = images.shape[0]
        return {
            "content": ["teddy"] * (n - 1) + ["cup"],
            "style": ["knit"] * n,
            "position": ["left"] * n,
            "size": ["small"] * n,
            "background": ["white"] * n,
        }


def test_scores_match_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    images, c_refs, s_refs = (torch.rand(k, 3, 8, 8, generator=g) for k in (4, 3, 2))
    j = FakeJudges()
    attrs = [{"position": "left"}, {"size": "large"}, {}, {"position": "left", "background": "blue"}]
    s = score_world(j, images, c_refs, s_refs, "teddy", "knit", attrs)

    def cos_to_centroid(f, refs):
        c = refs.mean(0)
        c = c / np.linalg.norm(c)
        return float((f @ c).mean())

    cf = j.content_features(images).numpy().astype(np.float64)
    sf = j.style_features(images).numpy().astype(np.float64)
    assert s.content == pytest.approx(cos_to_centroid(cf, j.content_features(c_refs).numpy()), abs=1e-6)
    assert s.style == pytest.approx(cos_to_centroid(sf, j.style_features(s_refs).numpy()), abs=1e-6)
    assert s.prompt == pytest.approx(2 / 4)  # left yes, large no, left yes, blue no
    assert s.content_acc == pytest.approx(3 / 4) and s.style_acc == 1.0
    assert s.mean == pytest.approx((s.content + s.style + s.prompt) / 3)
    assert s.hmean == pytest.approx(3 / (1 / s.content + 1 / s.style + 1 / s.prompt))


def test_report_is_built_from_results_json_alone(tmp_path):
    results = {
        "title": "t",
        "prompts": ["a snq teddy in w@z style"],
        "scores": {
            "base": {
                "content": 0.1,
                "style": 0.2,
                "prompt": 0.3,
                "mean": 0.2,
                "hmean": 0.16,
                "content_acc": 0.0,
                "style_acc": 0.0,
            },
            "B4M": {
                "content": 0.7,
                "style": 0.8,
                "prompt": 0.9,
                "mean": 0.8,
                "hmean": 0.79,
                "content_acc": 1.0,
                "style_acc": 0.75,
            },
        },
        "grids": {"B4M": "grid_1.png"},
        "timings": {"stage 1": 12.0},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    html = write_report(tmp_path / "results.json").read_text()
    assert "<td>0.700</td>" in html and "<td>0.750</td>" in html and "grid_1.png" in html
    assert "a snq teddy in w@z style" in html and "12.0 s" in html
