"""experiments/studies/paper_grid.py: the 2024 paper's α × β grid of VGG16 / CIFAR-10 runs.

Oracles: each printed command, parsed by ``dualprop``'s own parser and config builder, builds
the rule its cell names (written out here with ``rules.dual_prop``) and the paper's setup
(docs/method.md, "Reference training setups"); ``collect`` puts each fake result in its cell; the
generated script, driven with a stand-in ``dualprop``, starts, resumes, skips and stops as it
says. The ``check`` action itself (a real VGG16 run per cell) takes minutes per cell on a CPU,
so it is not run here; its committed outputs are in experiments/studies/results/.
"""

import importlib.util
import itertools
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from dualprop_jax import cli, rules

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDIES = ROOT / "experiments" / "studies"
GRID = list(itertools.product(("dp", "dp_top"), (0.0, 0.5, 1.0), (0.01, 0.1, 1.0)))
SCHEDULE_RULES = {
    "fw16": dict(schedule="bottom_up", passes=15, sweep=False),
    "sweep": dict(passes=0),
}


@pytest.fixture
def grid(monkeypatch):
    """The study module (it imports its sibling ``common`` as a script does)."""
    monkeypatch.syspath_prepend(str(STUDIES))
    spec = importlib.util.spec_from_file_location("paper_grid", STUDIES / "paper_grid.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "paper_grid", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def _commands(grid, capsys, *argv) -> list[list[str]]:
    assert grid.main(["commands", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    return [shlex.split(ln) for ln in lines if ln and not ln.startswith("#")]


def _config(argv: list[str]):
    assert argv[:2] == ["dualprop", "train"]
    return cli.config_from_args(cli._parser().parse_args(argv[1:]))


@pytest.mark.parametrize("schedule", ["fw16", "sweep"])
def test_each_command_builds_its_cells_rule_and_the_paper_setup(
    grid, capsys, monkeypatch, schedule
):
    monkeypatch.chdir(ROOT)  # the commands name the config relative to the repository root
    commands = _commands(grid, capsys, "--schedule", schedule)
    assert len(commands) == 18
    seen = set()
    for argv in commands:
        workdir = argv[argv.index("--workdir") + 1]
        m = re.fullmatch(rf"runs/paper_grid/(dp|dp_top)-a([0-9.]+)-b([0-9.]+)-{schedule}", workdir)
        assert m, workdir
        variant, alpha, beta = m[1], float(m[2]), float(m[3])
        cfg = _config(argv)
        expected = rules.dual_prop(variant, alpha, beta, **SCHEDULE_RULES[schedule])
        assert cfg.rule == expected, workdir
        # the paper's VGG16 / CIFAR-10 setup, as docs/method.md states it
        assert (cfg.dataset, cfg.model, cfg.layout) == ("cifar10", "vgg16", "pooled")
        assert (cfg.optimizer, cfg.learning_rate, cfg.momentum) == ("sgd", 0.025, 0.9)
        assert (cfg.weight_decay, cfg.lr_schedule, cfg.batch_size) == (5e-4, "cosine", 100)
        assert (cfg.epochs, cfg.val_fraction, cfg.augment) == (130, 0.1, True)
        assert 0 < cfg.warmup_epochs < cfg.epochs
        seen.add((variant, alpha, beta))
    assert seen == set(GRID)


def test_overrides_reach_the_config_and_the_warmup_scales(grid, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    npz = tmp_path / "mine.npz"
    argv = _commands(
        grid, capsys, "--epochs", "13", "--dataset", str(npz), "--data-dir", str(tmp_path)
    )[0]
    cfg = _config(argv)
    assert (cfg.epochs, cfg.warmup_epochs) == (13, pytest.approx(1.0))  # 10 of 130 → 1 of 13
    assert (cfg.dataset, cfg.data_dir) == (str(npz), str(tmp_path))
    assert cfg.rule == rules.dual_prop("dp", 0.0, 0.01, **SCHEDULE_RULES["fw16"])


def _fake_run(runs: pathlib.Path, name: str, variant, alpha, beta, accuracy) -> None:
    wd = runs / name
    wd.mkdir(parents=True)
    rule = rules.dual_prop(variant, alpha, beta, **SCHEDULE_RULES["fw16"]).to_dict()
    results = {"rule": rule, "test_accuracy": accuracy, "best_val_accuracy": accuracy + 0.01,
               "tested_epoch": 120, "epochs": 130, "train_time_s": 1.0}  # fmt: skip
    (wd / "results.json").write_text(json.dumps(results))
    (wd / "metrics.csv").write_text(
        "epoch,train_loss\n" + "".join(f"{e},1.0\n" for e in range(130))
    )


def test_collect_puts_each_result_in_its_cell(grid, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    done = {}
    for i, (variant, alpha, beta) in enumerate(GRID):
        if (variant, alpha) == ("dp", 0.0) or (variant, alpha, beta) == ("dp_top", 1.0, 1.0):
            continue  # left for the divergence, the stopped run and "not run"
        done[(variant, alpha, beta)] = 0.5 + i / 100  # a distinct accuracy per cell
        name = f"{variant}-a{alpha:g}-b{beta:g}-fw16"
        _fake_run(runs, name, variant, alpha, beta, done[(variant, alpha, beta)])
    diverged = runs / "dp-a0-b1-fw16"
    diverged.mkdir()
    (diverged / "train.log").write_text(
        "data: device-resident\ndualprop: training diverged: the training loss became nan at "
        "epoch 3, step 120. The last good checkpoint (epoch 2) is kept in ... Try ...\n"
    )
    stopped = runs / "dp-a0-b0.1-fw16"
    stopped.mkdir()
    (stopped / "metrics.csv").write_text("epoch,train_loss\n1,2.0\n2,1.5\n")
    (stopped / "config.json").write_text(json.dumps({"epochs": 130}))

    assert grid.main(["collect", "--runs", str(runs), "--out", str(out)]) == 0
    doc = grid.common.check_outputs(out, "paper_grid")
    md = (out / "paper_grid.md").read_text()
    names = {"DP": "dp", "DP⊤": "dp_top"}
    rows = {}
    for line in md.splitlines():
        cols = [c.strip() for c in line.strip("|").split("|")]
        if len(cols) == 7 and cols[0] in names:
            rows[(names[cols[0]], float(cols[1]), float(cols[2]))] = cols
    assert set(rows) == set(GRID)
    for key, cols in rows.items():
        if key in done:
            assert cols[3] == f"{100 * done[key]:.2f}%", key
            assert cols[4] == "no"
        else:
            assert cols[3] == "–"
    assert rows[("dp", 0.0, 1.0)][4] == "yes: loss nan at epoch 3, step 120"
    assert rows[("dp", 0.0, 0.1)][5] == "stopped after epoch 2 of 130"
    assert rows[("dp", 0.0, 0.01)][5] == "not run"
    assert rows[("dp_top", 1.0, 1.0)][5] == "not run"
    # the compact grid of each variant: row α, column β
    dp_top_grid = md.split("| DP⊤ | β = 0.01")[1]
    alpha_half = next(ln for ln in dp_top_grid.splitlines() if ln.startswith("| α = 0.5 |"))
    expected = [f"{100 * done[('dp_top', 0.5, b)]:.2f}%" for b in (0.01, 0.1, 1.0)]
    assert alpha_half.strip("|").split("|")[1:] == [f" {e} " for e in expected]
    by_name = {c["name"]: c for c in doc["results"]["cells"]}
    assert by_name["dp-a0-b1-fw16"]["diverged_epoch"] == 3
    assert by_name["dp_top-a0.5-b0.1-fw16"]["rule_matches_cell"] is True
    assert doc["results"]["counts"] == {"done": 14, "diverged": 1, "stopped": 1, "not run": 2}


STUB = """#!/usr/bin/env bash
# a stand-in for dualprop: records its arguments, then behaves as STUB_<cell> says
echo "$*" >> "$STUB_LOG"
wd=""; prev=""
for a in "$@"; do [ "$prev" = --workdir ] && wd="$a"; prev="$a"; done
case "$(basename "$wd")" in
  "$STUB_DIVERGE") echo "dualprop: training diverged: the training loss became nan at epoch 2, \
step 7. No checkpoint was written." >&2; exit 1 ;;
  "$STUB_FAIL") echo "dualprop: error: no such dataset" >&2; exit 2 ;;
esac
mkdir -p "$wd/checkpoints/1" && echo '{}' > "$wd/results.json"
"""


def test_the_script_runs_resumes_skips_and_stops(grid, capsys, tmp_path):
    # the script finds the repository root two levels above itself: give it one in tmp_path
    script = tmp_path / "experiments" / "studies" / "grid.sh"
    script.parent.mkdir(parents=True)
    assert grid.main(["commands", "--write-script", str(script)]) == 0
    text = script.read_text()
    assert "Generated by" in text and "do not edit by hand" in text
    stub = tmp_path / "stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls"
    runs = tmp_path / "runs" / "paper_grid"
    (runs / "dp_top-a1-b0.1-fw16" / "checkpoints" / "3").mkdir(parents=True)  # a stopped run
    env = dict(os.environ, DUALPROP=str(stub), STUB_LOG=str(log),
               STUB_DIVERGE="dp-a0-b1-fw16", STUB_FAIL="none")  # fmt: skip

    def run(**extra):
        log.unlink(missing_ok=True)
        proc = subprocess.run(["bash", str(script)], env=dict(env, **extra), capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        calls = log.read_text().splitlines() if log.exists() else []
        return proc, calls

    proc, calls = run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(calls) == 18
    resumed = [c for c in calls if "--resume" in c.split()]
    assert len(resumed) == 1 and "runs/paper_grid/dp_top-a1-b0.1-fw16" in resumed[0]
    for call in calls:  # the script runs the printed commands, plus --resume where it resumes
        argv = shlex.split(call)
        assert argv[:3] == ["train", "--config", "experiments/configs/cifar10_vgg16.json"]
    diverged = runs / "dp-a0-b1-fw16"
    assert "epoch 2, step 7" in (diverged / "diverged.txt").read_text()
    assert "training diverged" in (diverged / "train.log").read_text()
    assert not (diverged / "results.json").exists()

    proc, calls = run()  # everything finished or diverged: nothing to do
    assert proc.returncode == 0 and calls == []
    assert "diverged before" in proc.stdout

    (runs / "dp-a0.5-b0.1-fw16" / "results.json").unlink()
    (runs / "dp_top-a0-b0.01-fw16" / "results.json").unlink()
    proc, calls = run(STUB_FAIL="dp-a0.5-b0.1-fw16")  # an error stops the script there
    assert proc.returncode == 2
    assert len(calls) == 1 and "dp-a0.5-b0.1-fw16" in calls[0]
    assert "stopping" in proc.stdout


def test_the_committed_script_is_the_generated_one(grid, capsys):
    committed = STUDIES / "paper_grid_cifar10.sh"
    argv = ["--write-script", "experiments/studies/paper_grid_cifar10.sh"]
    args = grid._parser().parse_args(argv)
    assert committed.read_text() == grid.script_text(args, argv)
