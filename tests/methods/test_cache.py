"""The one cached sub-fit (:mod:`b4m.methods.cache`): per-concept parts are shared across pairs, keyed by the
data's bytes (not its folder), and the harnesses hold no method-id special cases."""

import ast
import copy
import shutil
from pathlib import Path

import pytest

import b4m
from b4m.methods.catalogue import CATALOGUE

from .conftest import image_folder

SRC = Path(b4m.__file__).resolve().parent


@pytest.fixture
def trainings(monkeypatch):
    """Every training that really runs (the step loop of stage 1, stage 2 and the baselines), by name."""
    import b4m.methods.common as common
    import b4m.train.stage1 as stage1
    import b4m.train.stage2 as stage2

    names: list[str] = []
    for module in (stage1, stage2, common):
        real = module.run_steps

        def counted(*args, _real=real, **kwargs):
            names.append(kwargs["name"])
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "run_steps", counted)
    return names


def _pair_data(root: Path, style_seed: int, aux: bool = True) -> dict:
    images = {
        "content_images": image_folder(root / "content", 0, n=2),
        "content_prompt": "a photo of snq teddy",
        "style_images": image_folder(root / "style", style_seed, n=2),
        "style_prompt": "a paper in wzk style",
    }
    if aux:
        images["aux_styles"] = [str(image_folder(root / "as0", 10, n=1, caption="a photo in style 0"))]
        images["aux_contents"] = [str(image_folder(root / "ac0", 20, n=1, caption="a teddy number 0"))]
    return images


def test_a_content_stage1_is_reused_by_a_second_pair_that_shares_the_content(tiny_sdxl, tmp_path, trainings):
    from b4m.methods import fit_cached

    pipe = tiny_sdxl()
    opts = {"base": "tiny", "steps": 1, "stage2_steps": 1, "resolution": 32, "checkpoint_every": 0}
    cache = tmp_path / "cache"
    first = fit_cached("b4m", cache, pipe=copy.deepcopy(pipe), **_pair_data(tmp_path / "pair1", 1), **opts)
    assert len(trainings) == 3 and sum("content" in n for n in trainings) == 1, trainings
    assert set(first.parts) == {"content", "style"}
    trainings.clear()
    # the second pair: the same content images (in another folder), another style
    second = fit_cached("b4m", cache, pipe=copy.deepcopy(pipe), **_pair_data(tmp_path / "pair2", 2), **opts)
    assert not any("content" in n for n in trainings) and len(trainings) == 2, trainings
    assert second.parts["content"] == first.parts["content"]
    assert second.parts["style"] != first.parts["style"]
    trainings.clear()
    # the first pair again: everything reused
    again = fit_cached("b4m", cache, pipe=copy.deepcopy(pipe), **_pair_data(tmp_path / "pair3", 1), **opts)
    assert trainings == [] and again.path == first.path


def test_a_one_concept_source_is_keyed_by_its_concept_only(tiny_sdxl, tmp_path, trainings):
    from b4m.methods import fit_cached

    pipe = tiny_sdxl()
    opts = {"base": "tiny", "steps": 1, "resolution": 32, "checkpoint_every": 0, "concept": "content"}
    a = fit_cached(
        "lora", tmp_path / "c", pipe=copy.deepcopy(pipe), **_pair_data(tmp_path / "p1", 1, aux=False), **opts
    )
    assert len(trainings) == 1
    shutil.copytree(tmp_path / "p1", tmp_path / "moved")
    b = fit_cached(
        "lora", tmp_path / "c", pipe=copy.deepcopy(pipe), **_pair_data(tmp_path / "p2", 2, aux=False), **opts
    )
    assert len(trainings) == 1 and b.path == a.path  # another style, the same content: reused
    style = fit_cached("lora", tmp_path / "c", pipe=copy.deepcopy(pipe), **_pair_data(tmp_path / "p3", 2, aux=False),
                       **{**opts, "concept": "style"})  # fmt: skip
    assert len(trainings) == 2 and style.path != a.path


# ------------------------------------------------------------------ the harnesses are clients of the registry

HARNESSES = [*sorted((SRC / "bench").glob("*.py")), SRC / "demo.py", SRC / "eval" / "customize.py"]


def _method_id_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Registered method ids in comparisons (``x == "lora"``, ``m in ("b4m", ...)``), in ``match`` cases and in
    set literals that name several ids (the hard-coded id sets a membership test would use)."""
    ids = set(CATALOGUE)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and sub.value in ids:
                    found.append((node.lineno, f"comparison with {sub.value!r}"))
        elif isinstance(node, ast.Set):  # an id set (a plan's list of methods to run is data, not a case)
            named = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in ids]
            if len(named) >= 2:
                found.append((node.lineno, f"a set of method ids {named}"))
        elif isinstance(node, ast.Match):
            for sub in ast.walk(node):
                if isinstance(sub, ast.MatchValue) and getattr(sub.value, "value", None) in ids:
                    found.append((sub.lineno, f"case {sub.value.value!r}"))
    return found


@pytest.mark.parametrize("path", HARNESSES, ids=lambda p: str(p.relative_to(SRC)))
def test_harnesses_hold_no_method_id_special_cases(path):
    found = _method_id_literals(ast.parse(path.read_text(), str(path)))
    assert not found, f"{path.relative_to(SRC)}: " + "; ".join(f"line {n}: {what}" for n, what in found)


def test_the_id_check_finds_what_it_looks_for():
    code = 'if run.method == "lora": pass\nSOURCES = frozenset({"ziplora", "klora"})\nok = x in ("stage1",)\n'
    assert [n for n, _ in _method_id_literals(ast.parse(code))] == [1, 2]
