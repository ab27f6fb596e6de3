"""The harness on the command line: ``b4m base train/eval/grid/diagnose/ship/check`` and ``b4m judges
train/eval``, and the ``benchmarks/`` scripts that are thin shells over them (the command lines the docs
quote keep working)."""

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from b4m.cli import build_parser, main
from b4m.config import config_from_args
from b4m.eval.customize import CustomizeCheck
from b4m.harness.judges import JudgesTrainJob
from b4m.models.base.config import BaseModelConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("base_model", "customize", "judges")


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subparser(*names):
    parser = build_parser()
    for name in names:
        parser = parser._subparsers._group_actions[0].choices[name]
    return parser


class Called(Exception):
    """Raised by a stubbed job: the command line reached it with this config."""

    def __init__(self, job, config):
        super().__init__(job)
        self.job, self.config = job, config


@pytest.fixture
def stub_jobs(monkeypatch):
    """Replace every harness job by a stub that raises :class:`Called` with the config it was given."""
    import b4m.eval.customize
    import b4m.harness.base
    import b4m.harness.judges

    def stub(name):
        def job(cfg, *args, **kwargs):
            raise Called(name, cfg)

        return job

    for name in ("train_base", "evaluate_base", "sample_grid", "diagnose_base", "ship_base"):
        monkeypatch.setattr(b4m.harness.base, name, stub(name))
    monkeypatch.setattr(b4m.eval.customize, "check_customizability", stub("check"))
    monkeypatch.setattr(b4m.harness.judges, "train", stub("judges train"))
    monkeypatch.setattr(b4m.harness.judges, "evaluate", stub("judges eval"))


def documented_commands():
    """Every ``python benchmarks/{base_model,customize,judges}.py ...`` line in the README and the docs, with
    ``\\`` continuations joined and trailing ``# comments`` dropped."""
    pattern = re.compile(r"python benchmarks/(base_model|customize|judges)\.py((?:[^`\n\\]|\\\n)*)")
    found = []
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks").glob("*.md")]:
        for m in pattern.finditer(doc.read_text(encoding="utf-8")):
            args = re.sub(r"\s#\s.*$", "", m.group(2).replace("\\\n", " "))
            found.append((m.group(1), shlex.split(args)))
    return found


def test_the_docs_quote_each_script():
    assert {name for name, _ in documented_commands()} == set(SCRIPTS)


@pytest.mark.parametrize(
    ("name", "argv"), documented_commands(), ids=[f"{n} {' '.join(a)}"[:70] for n, a in documented_commands()]
)
def test_documented_script_lines_still_parse_and_reach_their_job(stub_jobs, name, argv):
    with pytest.raises(Called) as called:
        _script(name).main(argv)
    if name == "base_model":
        assert called.value.job.split("_")[0] in ("train", "evaluate", "sample", "diagnose", "ship")
    if name == "judges":
        assert "--report" in argv or called.value.config.report == ROOT / "benchmarks" / "judges.md"


def test_set_items_and_flags_give_the_same_base_config(tmp_path):
    """``--set key=value`` (JSON values), the generated flags and a config file are one engine."""
    sets = ["--set", "init_from=runs/base_ft/pipeline", "--set", "train_steps=1200", "--set", "lr=0.0004",
            "--set", "lift_weak_words=true", "--set", "vae_block_out_channels=[16, 32]", "--set", "extra={}"]  # fmt: skip
    flags = ["--init-from", "runs/base_ft/pipeline", "--train-steps", "1200", "--lr", "4e-4", "--lift-weak-words",
             "--vae-block-out-channels", "16", "32"]  # fmt: skip
    (tmp_path / "base.yaml").write_text(
        "init_from: runs/base_ft/pipeline\ntrain_steps: 1200\nlr: 4.0e-4\nlift_weak_words: true\n"
        "vae_block_out_channels: [16, 32]\n"
    )
    configs = [
        config_from_args(BaseModelConfig, build_parser().parse_args(["base", "train", *argv]))
        for argv in (sets, flags, ["--config", str(tmp_path / "base.yaml")])
    ]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].vae_block_out_channels == (16, 32) and configs[0].lift_weak_words is True
    assert configs[0] != BaseModelConfig()


def test_config_file_and_flags_give_the_same_check_and_judges_configs(tmp_path):
    (tmp_path / "check.toml").write_text('contents = ["teddy#3"]\nstyles = []\nsteps = 5\nmethod = "lora"\n')
    from_file = config_from_args(
        CustomizeCheck, build_parser().parse_args(["base", "check", "--config", str(tmp_path / "check.toml")])
    )
    argv = ["base", "check", "--contents", "teddy#3", "--styles", "--steps", "5", "--method", "lora"]
    from_flags = config_from_args(CustomizeCheck, build_parser().parse_args(argv))
    assert from_file == from_flags == CustomizeCheck(contents=("teddy#3",), styles=(), steps=5, method="lora")

    (tmp_path / "judges.yaml").write_text("steps: 7\nno_such: 1\n")
    with pytest.raises(Exception, match="unknown option 'no_such'"):
        config_from_args(JudgesTrainJob, build_parser().parse_args(["judges", "train", "--config",
                                                                    str(tmp_path / "judges.yaml")]))  # fmt: skip
    (tmp_path / "judges.yaml").write_text("steps: 7\nbalance_classes: false\nout: runs/j\n")
    from_file = config_from_args(
        JudgesTrainJob,
        build_parser().parse_args(["judges", "train", "--config", str(tmp_path / "judges.yaml")]),
    )
    argv = ["judges", "train", "--steps", "7", "--no-balance-classes", "--out", "runs/j"]
    assert from_file == config_from_args(JudgesTrainJob, build_parser().parse_args(argv))
    assert from_file == JudgesTrainJob(steps=7, balance_classes=False, out=Path("runs/j"))


@pytest.mark.parametrize(
    ("command", "teaches"),
    [
        (("base", "train"), ["--set KEY=VALUE", "--train-steps", "--restart", "examples:"]),
        (("base", "eval"), ["--guidance", "--n-per-concept", "(default: 16)", "examples:"]),
        (("base", "ship"), ["--eval-json", "--guidance-scale", "examples:"]),
        (
            ("base", "check"),
            [
                "--bar-instance",
                "(default: 1600)",
                "(default: flat dots gradient papercut)",
                "the flag alone: content half only",
                "examples:",
            ],
        ),  # fmt: skip
        (("judges", "train"), ["--no-balance-classes", "(default: 6000)", "--report", "examples:"]),
        (("judges", "eval"), ["--path", "--n-eval", "examples:"]),
    ],
)
def test_help_teaches_options_defaults_and_examples(command, teaches):
    text = " ".join(_subparser(*command).format_help().split())
    for phrase in teaches:
        assert phrase in text, (command, phrase)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["base", "train", "--set", "train_step=5"], "--set train_step=...: unknown key 'train_step'"),
        (["base", "train", "--set", "train_steps"], "--set train_steps: write key=value"),
        (["base", "train", "--set", "resolution=33", "--out", "{tmp}/b"], "resolution=33 is not divisible"),
        (["base", "train", "--set", "train_steps=5", "--train-steps", "6"], "contradicts --train-steps"),
        (["base", "ship"], "--path is required"),
        (["base", "ship", "--path", "{tmp}"], "not a trained base pipeline"),
        (["base", "check", "--contents", "teddy"], "'teddy' is a class; name a personal instance"),
        (["base", "check", "--styles", "papercut#99"], "personal instance number must be 0..7"),
        (["base", "eval", "--path", "{tmp}/none"], "--path {tmp}/none: no base pipeline there"),
        (["judges", "eval", "--path", "{tmp}/none"], "--path {tmp}/none: no judges there"),
        (["judges", "train", "--init-from", "{tmp}/none"], "--init-from {tmp}/none: no judges there"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    message = message.replace("{tmp}", str(tmp_path))
    assert len(err) == 1 and err[0].startswith("b4m: error: ") and message in err[0], err
    assert not (tmp_path / "b").exists()  # checked before any work


def test_bad_flag_value_exits_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "b4m.cli", "judges", "train", "--steps", "many"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("argument --steps: invalid int value: 'many'")


def test_judges_train_and_evaluate_from_the_cli_and_the_script(tmp_path, capsys):
    """A few steps of ``b4m judges train``, then ``benchmarks/judges.py --evaluate-only`` on its weights."""
    out = tmp_path / "judges"
    argv = ["judges", "train", "--steps", "2", "--batch-size", "16", "--pool-size", "32", "--refresh", "4",
            "--n-eval", "1", "--out", str(out), "--report", str(tmp_path / "train.md")]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    printed = json.loads(stdout[stdout.index("\n{") + 1 :])  # the summary after the progress lines
    assert set(printed) == {"clean", "perturbed", "features"} and 0 <= printed["clean"]["content"] <= 1
    saved = json.loads((out / "judges.json").read_text())["metrics"]["training"]
    assert (saved["steps"], saved["pool_size"], saved["unique_training_images"]) == (2, 32, 32 + 2 * 4)
    report = (tmp_path / "train.md").read_text()
    assert "Command: `b4m judges train --steps 2" in report and "- seed 0, 2 steps, batch 16" in report

    script = ["--evaluate-only", "--out", str(out), "--n-eval", "1", "--report", str(tmp_path / "eval.md")]
    assert _script("judges").main(script) == 0
    report = (tmp_path / "eval.md").read_text()
    assert "Command: `python benchmarks/judges.py --evaluate-only" in report
    assert "- seed 0, 2 steps, batch 16" in report  # the training record of the evaluated weights


def test_base_ship_copies_a_pipeline_with_its_measured_settings(tmp_path, capsys):
    """``ship_base`` into a scratch folder (the CLI's default target is the package's built-in model)."""
    from b4m.diffusion.builtin_base import INFO_FILE
    from b4m.harness.base import BaseShipConfig, ship_base

    src = tmp_path / "run" / "pipeline"
    src.mkdir(parents=True)
    (src / INFO_FILE).write_text(json.dumps({"guidance_scale": 5.0, "num_inference_steps": 25}))
    (src / "model_index.json").write_text("{}")
    (tmp_path / "run" / "train_log.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "eval.json").write_text('[{"content_acc": 0.9}]')
    dst = tmp_path / "shipped"
    (dst / "stale").mkdir(parents=True)
    cfg = BaseShipConfig(path=src, guidance_scale=3.0, eval_json=tmp_path / "eval.json")
    assert ship_base(cfg, dst) == dst
    info = json.loads((dst / INFO_FILE).read_text())
    assert info == {"guidance_scale": 3.0, "num_inference_steps": 25, "quality": [{"content_acc": 0.9}]}
    assert (dst / "train_log.jsonl").is_file() and (dst / "model_index.json").is_file()
    assert not (dst / "stale").exists()


def test_base_check_runs_one_half_from_the_cli(tmp_path, capsys):
    """``--styles`` alone: the content half only; a table on stdout and the full result in --json."""
    argv = ["base", "check", "--contents", "teddy#3", "--styles", "--content-styles", "flat", "--n-refs", "2",
            "-n", "2", "--steps", "2", "--work", str(tmp_path / "work"), "--json", str(tmp_path / "out" / "r.json")]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| teddy#3 | flat | yes |" in table and "| teddy#3 | flat | no (base) |" in table
    r = json.loads((tmp_path / "out" / "r.json").read_text())
    assert [x["kind"] for x in r["runs"]] == ["content", "content"] and r["config"]["styles"] == []
    assert (tmp_path / "work" / "lora-teddy#3" / "adapter.safetensors").is_file()
