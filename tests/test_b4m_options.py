"""B4M's options are declared once (``b4m.options.B4MStage1Options``, ``B4MStage2Options``); the stage configs,
``b4m run b4m``'s options, the CLI flags, ``stage_configs`` and the bench's ``STAGE2_KNOBS`` all derive from them.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

from b4m.bench.catalogue import STAGE2_KNOBS
from b4m.cli import build_parser, main
from b4m.config import config_from_args
from b4m.demo import DemoConfig
from b4m.errors import B4MError
from b4m.methods.b4m import stage_configs
from b4m.methods.catalogue import B4MOfficialOptions, B4MOptions
from b4m.options import (
    OPERANDS,
    ORTH_CHOICES,
    ROUTINGS,
    STAGE1_OPTIONS,
    STAGE2_OPTIMIZERS,
    STAGE2_OPTIONS,
    B4MStage1Options,
    B4MStage2Options,
    Stage1Config,
    Stage2Config,
    option_names,
    split_deviations,
)

GROUPS = {
    B4MStage1Options: (Stage1Config, [["train", "content"], ["train", "style"]]),
    B4MStage2Options: (Stage2Config, [["fuse"]]),
}


def _other_value(f: dataclasses.Field, tp) -> object:
    """A value of field ``f`` (type ``tp``) other than its default, as a command line would give it."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if "choices" in f.metadata:
        return next(c for c in f.metadata["choices"] if c != default)
    optional = type(None) in typing.get_args(tp)  # X | None
    inner = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    if inner is bool:
        return not default
    if typing.get_origin(inner) is list:
        return ["x", "y"]
    if inner is int:
        return (default or 0) + 3
    if inner is float:
        return (default or 0.0) + 0.25
    raise AssertionError(f"no test value for {f.name}: {tp}")


def _non_default(group: type) -> dict[str, object]:
    hints = typing.get_type_hints(group)
    return {f.name: _other_value(f, hints[f.name]) for f in dataclasses.fields(group)}


def _argv(values: dict[str, object]) -> list[str]:
    argv = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *value]
        else:
            argv += [flag, str(value)]
    return argv


def test_each_group_is_declared_once_and_inherited():
    assert (
        option_names(B4MStage1Options) == STAGE1_OPTIONS and option_names(B4MStage2Options) == STAGE2_OPTIONS
    )
    assert not STAGE1_OPTIONS & STAGE2_OPTIONS
    for group, (stage, _) in GROUPS.items():
        for cls in (stage, B4MOptions, B4MOfficialOptions):
            assert issubclass(cls, group) and option_names(group) <= option_names(cls)
    assert STAGE2_KNOBS == STAGE2_OPTIONS  # the arms that stage 1 never reads
    # the official code's behaviours are options, at the paper's values by default
    assert (Stage1Config().routing, Stage1Config().aux_lr_scale, Stage2Config().reinit_every) == (
        "strict",
        1.0,
        0,
    )
    official = B4MOfficialOptions()
    assert (official.routing, official.aux_lr_scale, official.reinit_every) == ("leaky", 0.1, 2)
    assert (official.orth, official.optimizer) == ("approx", "adamw")


def test_stage_configs_pass_each_group_to_its_stage_only(tmp_path):
    """Every option of both groups, set off its default in ``b4m run b4m``, reaches its stage and only it."""
    s1, s2 = _non_default(B4MStage1Options), _non_default(B4MStage2Options)
    cfg = B4MOptions(aux_styles=["a"], aux_contents=["b"], seed=5, base="tiny", **s1, **s2)
    content, style, stage2 = stage_configs(cfg, tmp_path)
    for name, value in s1.items():
        assert getattr(content, name) == getattr(style, name) == value, name
    for name, value in s2.items():
        assert getattr(stage2, name) == value, name
    # b4m run b4m's --checkpoint-every is stage 1's: stage 2 keeps its own default
    assert stage2.checkpoint_every == Stage2Config().checkpoint_every != cfg.checkpoint_every
    assert content.seed == stage2.seed == 5 and content.base == stage2.base == "tiny"
    assert (
        content.out == tmp_path / "content" and stage2.content == tmp_path / "content" / "adapter.safetensors"
    )


@pytest.mark.parametrize("group", [B4MStage1Options, B4MStage2Options], ids=["stage1", "stage2"])
def test_every_group_option_is_a_flag_of_its_commands(group):
    values = _non_default(group)
    stage, commands = GROUPS[group]
    parser = build_parser()
    for command in commands:
        assert config_from_args(stage, parser.parse_args([*command, *_argv(values)])) == stage(**values)
    for method, cls in (("b4m", B4MOptions), ("b4m-official", B4MOfficialOptions)):
        args = parser.parse_args(["run", method, *_argv(values)])
        assert config_from_args(cls, args) == cls(**values)


def test_b4m_run_shows_the_run_help_the_stage_commands_their_own(capsys):
    def help_of(*argv):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        return " ".join(capsys.readouterr().out.split())

    fuse, run = help_of("fuse"), help_of("run", "b4m")
    assert "ridge relative to tr(G)/r; bounds the preconditioner's condition number" in fuse
    assert "--delta-rel DELTA_REL ridge relative to tr(G)/r (default: 0.01)" in run
    assert "--weight-decay WEIGHT_DECAY stage-1 AdamW weight decay" in run
    assert "AdamW weight decay (B and D only" in help_of("train", "content")
    assert "--reinit-every REINIT_EVERY stage 2: reset B and D of every k-th fused layer first" in help_of(
        "run", "b4m-official"
    )


def test_choices_are_the_registries_names():
    import torch

    from b4m.adapters.plp import ORTH_CONSTRUCTIONS
    from b4m.train.riemannian import make_stage2_optimizer

    assert tuple(ORTH_CONSTRUCTIONS) == ORTH_CHOICES
    b, d = torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2, 3))
    for name in STAGE2_OPTIMIZERS:  # each name builds (an unknown one raises)
        for operands in OPERANDS:
            make_stage2_optimizer([(b, d, torch.ones(1, 2), torch.ones(2, 1))], name, operands=operands)
    want = {"orth": ORTH_CHOICES, "optimizer": STAGE2_OPTIMIZERS, "operands": OPERANDS, "routing": ROUTINGS}
    for cls in (Stage1Config, Stage2Config, B4MOptions, B4MOfficialOptions, DemoConfig):
        for f in dataclasses.fields(cls):
            if f.name in want:
                assert f.metadata["choices"] == want[f.name], (cls.__name__, f.name)


def test_headers_name_the_official_behaviours_only_when_used():
    settings, deviations = split_deviations(Stage1Config())
    assert deviations == {} and not {"routing", "aux_lr_scale"} & set(settings) and "rho" in settings
    assert split_deviations(Stage1Config(routing="leaky"))[1] == {"routing": "leaky", "aux_lr_scale": 1.0}
    settings, deviations = split_deviations(Stage2Config(reinit_every=2))
    assert deviations == {"reinit_every": 2} and "reinit_every" not in settings
    assert split_deviations(Stage2Config())[1] == {}


def test_official_options_are_checked_before_any_model_loads(tmp_path, capsys):
    from b4m.train.stage1 import train_stage1

    images = tmp_path / "img"
    images.mkdir()
    cfg = Stage1Config(images=images, aux=["a"], routing="sideways", aux_lr_scale=float("nan"))
    with pytest.raises(B4MError, match=r"--routing sideways: give strict .* --aux-lr-scale nan"):
        train_stage1(cfg, "content", pipe=object())
    argv = ["fuse", "--content", "c.safetensors", "--style", "s.safetensors", "--reinit-every", "-1"]
    assert main(argv) == 2
    assert "--reinit-every -1: give 0 or more" in capsys.readouterr().err


_PROBE = """
import argparse, ast, dataclasses, json, sys, types
from pathlib import Path

import b4m  # loads b4m.options; the consumers below are not loaded yet
import b4m.options as original

path = Path(original.__file__)
source = path.read_text().splitlines()
tree = ast.parse("\\n".join(source))
ends = {n.name: n.end_lineno for n in tree.body if isinstance(n, ast.ClassDef)}
added = {"B4MStage1Options": "    new_s1: int = opt(7, 'a new stage-1 option')",
         "B4MStage2Options": "    new_s2: float = opt(0.5, 'a new stage-2 option', run_help='stage 2: a new option')"}
for name in sorted(added, key=lambda n: -ends[n]):  # from the bottom, so line numbers stay valid
    source.insert(ends[name], added[name])
patched = types.ModuleType("b4m.options")
patched.__file__ = str(path)
sys.modules["b4m.options"] = patched
b4m.options = patched
exec(compile("\\n".join(source), str(path), "exec"), patched.__dict__)

from b4m.bench.catalogue import STAGE2_KNOBS
from b4m.cli import build_parser
from b4m.config import add_config_args, config_from_args
from b4m.options import Stage1Config, Stage2Config
from b4m.methods.b4m import stage_configs
from b4m.methods.catalogue import B4MOfficialOptions, B4MOptions

names = lambda cls: {f.name for f in dataclasses.fields(cls)}
parser = build_parser()
run = config_from_args(B4MOptions, parser.parse_args(["run", "b4m", "--new-s1", "9", "--new-s2", "0.75"]))
content, style, stage2 = stage_configs(run, Path("out"))

def help_of(cls):
    p = argparse.ArgumentParser(prog="b4m")
    add_config_args(p, cls)
    return " ".join(p.format_help().split())

print(json.dumps({
    "stage1": "new_s1" in names(Stage1Config) and "new_s1" not in names(Stage2Config),
    "stage2": "new_s2" in names(Stage2Config) and "new_s2" not in names(Stage1Config),
    "b4m": {"new_s1", "new_s2"} <= names(B4MOptions) & names(B4MOfficialOptions),
    "knobs": "new_s2" in STAGE2_KNOBS and "new_s1" not in STAGE2_KNOBS,
    "train_flag": config_from_args(Stage1Config, parser.parse_args(["train", "style", "--new-s1", "8"])).new_s1,
    "fuse_flag": config_from_args(Stage2Config, parser.parse_args(["fuse", "--new-s2", "0.25"])).new_s2,
    "help": ["--new-s2 NEW_S2 a new stage-2 option (default: 0.5)" in help_of(Stage2Config),
             "--new-s2 NEW_S2 stage 2: a new option (default: 0.5)" in help_of(B4MOptions)],
    "stage_configs": [content.new_s1, style.new_s1, stage2.new_s2, hasattr(stage2, "new_s1")],
}))
"""


def test_a_new_option_is_one_field_in_its_group():
    """Add a field to each group of ``b4m/options.py`` (in a fresh interpreter, from the source text) and it is a
    field of its stage config and of ``b4m run b4m``'s options, a flag of their commands, passed on by
    ``stage_configs`` to its stage, and (stage 2) a bench knob."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "B4M_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PROBE)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["stage1"] and got["stage2"] and got["b4m"] and got["knobs"]
    assert (got["train_flag"], got["fuse_flag"]) == (8, 0.25)
    assert got["help"] == [True, True]  # b4m run shows the run_help
    assert got["stage_configs"] == [9, 9, 0.75, False]
