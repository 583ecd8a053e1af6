"""experiments/cost_table.py on a quick slice of real Fashion-MNIST: the chosen learning rate is
the sweep's best on validation, Δ is each seed's difference to BP's run, the counted sweeps equal
those seen in the compiled step, and the time to the target accuracy follows the run's curve.

Oracles: the runs' own results.json and metrics.csv, read here without the script's code; the
sweep counts of the rules' definitions (BP and DP⊤ 3, PC 2T + 3)."""

from __future__ import annotations

import csv
import json
import pathlib
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import cost_table  # noqa: E402


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cost")
    out, runs = tmp / "COST.md", tmp / "runs"
    cost_table.main([
        "--rules", "bp,dp_top,pc", "--seeds", "0,1", "--epochs", "2", "--lrs", "1e-3,3e-3",
        "--sweep-train", "1000", "--timed-steps", "2", "--target", "0.7", "--out", str(out),
        "--runs", str(runs), "--override", "max_train=1500", "--override", "max_eval=1000",
        "--override", 'widths=[64, 64]',
    ])  # fmt: skip
    return json.loads(out.with_suffix(".json").read_text()), out.read_text(), runs


def _results(runs: pathlib.Path, name: str) -> dict:
    return json.loads((runs / name / "results.json").read_text())


def test_learning_rate_is_the_sweeps_best_on_validation(table):
    payload, _, runs = table
    for label, info in payload["learning_rates"].items():
        val = {lr: _results(runs, f"sweep-lr{lr}/{label}-seed0")["best_val_accuracy"]
               for lr in ("0.001", "0.003")}  # fmt: skip
        assert info["lr"] == float(max(val, key=val.get))
        row = next(r for r in payload["rows"] if r["rule"] == label)
        assert _results(runs, f"{label}-seed0")["config"]["learning_rate"] == row["lr"]


def test_delta_is_paired_by_seed_and_sweeps_match(table):
    payload, text, runs = table
    for row in payload["rows"]:
        want = [_results(runs, f"{row['rule']}-seed{s}")["test_accuracy"]
                - _results(runs, f"bp-seed{s}")["test_accuracy"] for s in (0, 1)]  # fmt: skip
        assert row["delta_vs_bp"] == pytest.approx(want, abs=1e-12)
        assert row["sweeps_seen"] == pytest.approx(row["sweeps"]["total"], abs=1e-9)
    totals = {r["rule"]: r["sweeps"]["total"] for r in payload["rows"]}
    assert totals == {"bp": 3, "dp_top": 3, "pc": 2 * 20 + 3}
    assert "| bp |" in text and "Learning rates" in text
    assert (runs.parent / "COST.png").stat().st_size > 10_000  # the figure is written


def test_time_to_target_is_first_epoch_reaching_it_times_epoch_time(table):
    payload, _, runs = table
    for row in payload["rows"]:
        for seed, got in zip(row["seeds"], row["time_to_target_s"], strict=True):
            with (runs / f"{row['rule']}-seed{seed}" / "metrics.csv").open() as fh:
                curve = [float(r["val_accuracy"]) for r in csv.DictReader(fh)]
            first = next((i + 1 for i, v in enumerate(curve) if v >= 0.7), None)
            assert got == (None if first is None else pytest.approx(first * row["epoch_s"]))
