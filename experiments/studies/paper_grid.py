r"""The 2024 paper's α × β grid at paper scale: VGG16 on CIFAR-10, DP and DP⊤.

Høier & Zach (ICML 2024) trained VGG16 on CIFAR-10 with DP (``--rule dp``) and DP⊤
(``--rule dp_top``) for α ∈ {0, ½, 1} × β ∈ {0.01, 0.1, 1}: 18 cells, each a full 130-epoch run
of ``experiments/configs/cifar10_vgg16.json`` (SGD momentum 0.9, weight decay 5e-4, cosine with
warm-up, batch 100, lr 0.025). The paper's finding: DP needs α = ½ to stay stable, DP⊤ does not.

This needs a GPU and the CIFAR-10 data, so the study is in three steps:

    python experiments/studies/paper_grid.py [commands]      # one `dualprop train` per cell
    python experiments/studies/paper_grid.py \
        --write-script experiments/studies/paper_grid_cifar10.sh   # the same, as a bash script
    bash experiments/studies/paper_grid_cifar10.sh  # on the GPU machine; run it again to resume
    python experiments/studies/paper_grid.py collect          # table, heatmaps, JSON of what ran
    python experiments/studies/paper_grid.py check [--quick]  # every cell's command, tiny, on a CPU

``experiments/studies/paper_grid_cifar10.sh`` is that script with the defaults (committed).

Schedules (``--schedule``): ``fw16``, the 2024 scripts' 16 bottom-up passes (``--schedule
bottom_up --passes 15 --no-sweep``), on the pooled VGG16 layout the official code used
(``--layout pooled``); ``sweep``, one top-down sweep (``--passes 0``).

At α = ½ the DP and DP⊤ layer updates coincide. With one sweep the two cells are the same rule;
with ``fw16`` they still differ in the output nudge (DP takes g at the current output in every
pass, DP⊤ keeps it at the forward prediction). Both cells are kept, as a check on each other.

Each cell runs in ``runs/paper_grid/<variant>-a<α>-b<β>-<schedule>``. A finished cell holds
``results.json``. A diverged one (NaN/Inf loss) writes no ``results.json``; ``dualprop`` says so
on stderr and exits with status 1, so the generated script (and ``check``) keep the output in
``train.log`` and the divergence line in ``diverged.txt``, which ``collect`` reads.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence

import common
import numpy as np

STUDY = "paper_grid"
CHECK_STUDY = "paper_grid_check"
CONFIG = "experiments/configs/cifar10_vgg16.json"  # relative to the repository root
RUNS = "runs/paper_grid"
VARIANTS = ("dp", "dp_top")
VARIANT_NAMES = {"dp": "DP", "dp_top": "DP⊤"}
ALPHAS = (0.0, 0.5, 1.0)
BETAS = (0.01, 0.1, 1.0)
# the rule flags of each inference schedule
SCHEDULES = {
    "fw16": ("--schedule", "bottom_up", "--passes", "15", "--no-sweep"),
    "sweep": ("--passes", "0"),
}
SCHEDULE_NAMES = {
    "fw16": "16 bottom-up passes (the 2024 scripts' fw16)",
    "sweep": "one top-down sweep",
}
QUICK_CELLS = ("dp-a1-b1", "dp_top-a0-b0.01")
# half the grid: in each variant every α and every β, DP's unstable corners, and the α = ½ pair
HALF_CELLS = (
    *("dp-a0-b0.01", "dp-a0.5-b0.1", "dp-a1-b1", "dp-a0-b1"),
    *("dp_top-a0-b1", "dp_top-a0.5-b0.01", "dp_top-a1-b0.1", "dp_top-a0.5-b0.1", "dp_top-a1-b1"),
)
# what a finished `dualprop train` leaves in its workdir (checkpoints/<epoch> checked apart)
RUN_FILES = ("config.json", "metrics.csv", "curves.png", "results.json")
DIVERGED_FILE = "diverged.txt"
LOG_FILE = "train.log"
DIVERGED_LINE = "training diverged"


@dataclasses.dataclass(frozen=True)
class Cell:
    variant: str
    alpha: float
    beta: float
    schedule: str

    @property
    def key(self) -> str:
        """``<variant>-a<α>-b<β>``, e.g. ``dp_top-a0.5-b0.01``."""
        return f"{self.variant}-a{self.alpha:g}-b{self.beta:g}"

    @property
    def name(self) -> str:
        """The workdir's name, e.g. ``dp_top-a0.5-b0.01-fw16``."""
        return f"{self.key}-{self.schedule}"


def cells(schedule: str) -> list[Cell]:
    """The 18 cells, DP first, then by α and β."""
    return [Cell(v, a, b, schedule) for v in VARIANTS for a in ALPHAS for b in BETAS]


def config_values() -> dict:
    return json.loads((common.ROOT / CONFIG).read_text())


def train_args(
    cell: Cell,
    workdir: str | pathlib.Path,
    *,
    layout: str = "pooled",
    dataset: str | None = None,
    data_dir: str | None = None,
    epochs: int | None = None,
    max_train: int | None = None,
    batch_size: int | None = None,
    eval_batch_size: int | None = None,
) -> list[str]:
    """The arguments of ``dualprop`` for one cell (starting with ``train``).

    ``epochs`` other than the config's also scales its warm-up (10 of 130 epochs) in proportion,
    as ``dualprop`` refuses a warm-up longer than the run."""
    config = config_values()
    args = ["train", "--config", CONFIG, "--rule", cell.variant]
    args += ["--alpha", f"{cell.alpha:g}", "--beta", f"{cell.beta:g}", *SCHEDULES[cell.schedule]]
    args += ["--layout", layout]
    if dataset is not None and dataset != config["dataset"]:
        args += ["--dataset", str(dataset)]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    if epochs is not None and epochs != config["epochs"]:
        warmup = config.get("warmup_epochs", 0) * epochs / config["epochs"]
        args += ["--epochs", str(epochs), "--warmup-epochs", f"{warmup:.4g}"]
    if max_train is not None:
        args += ["--max-train", str(max_train)]
    if batch_size is not None and batch_size != config["batch_size"]:
        args += ["--batch-size", str(batch_size)]
    if eval_batch_size is not None:
        args += ["--eval-batch-size", str(eval_batch_size)]
    return [*args, "--workdir", str(workdir)]


def _train_kwargs(args) -> dict:
    return dict(
        layout=args.layout, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs
    )


def _notes(schedule: str) -> list[str]:
    same = (
        "the same rule (one sweep)"
        if schedule == "sweep"
        else "the same layer updates; with fw16 they differ in the output nudge (DP: g at the "
        "current output each pass, DP⊤: g at the forward prediction)"
    )
    return [
        f"Høier & Zach 2024 grid: VGG16 on CIFAR-10, {SCHEDULE_NAMES[schedule]}, config {CONFIG}.",
        f"18 cells: {{dp, dp_top}} × α ∈ {{0, 0.5, 1}} × β ∈ {{0.01, 0.1, 1}}; at α = 0.5 "
        f"DP and DP⊤ have {same}: both cells are kept.",
        "Run from the repository root. A cell that stopped continues with the same command plus "
        "--resume (the script of --write-script adds it by itself).",
    ]


def command_lines(args) -> list[str]:
    """One ``dualprop train ...`` line per cell, after ``#`` comment lines."""
    lines = [f"# {n}" for n in _notes(args.schedule)]
    for cell in cells(args.schedule):
        workdir = f"{args.runs}/{cell.name}"
        lines.append(shlex.join(["dualprop", *train_args(cell, workdir, **_train_kwargs(args))]))
    return lines


SCRIPT_HEAD = r"""#!/usr/bin/env bash
# Generated by `{command}`;
# do not edit by hand (regenerate it).
#
{notes}
#
# Runs the cells one after another; run it again to continue where it stopped: a finished cell
# (results.json) is skipped, a started one continues from its checkpoint (--resume), a diverged
# one (diverged.txt, NaN/Inf loss) is skipped; delete its folder to run it again. Each cell's
# output is kept in <workdir>/{log}. Then: python experiments/studies/paper_grid.py collect{collect}
#
# DUALPROP=/path/to/dualprop bash {script}
# runs another dualprop (default: the one on PATH, else .venv/bin/dualprop).
set -uo pipefail
cd "$(dirname "${{BASH_SOURCE[0]}}")/../.."  # the repository root
DUALPROP="${{DUALPROP:-dualprop}}"
if ! command -v "$DUALPROP" >/dev/null 2>&1 && [ -x .venv/bin/dualprop ]; then
  DUALPROP=.venv/bin/dualprop
fi

run_cell() {{  # run_cell WORKDIR ARGS...: one cell, resumed if it has a checkpoint
  local wd="$1"
  shift
  if [ -f "$wd/results.json" ]; then
    echo "== $wd: finished, skipped"
    return 0
  fi
  if [ -f "$wd/{diverged}" ]; then
    echo "== $wd: diverged before ($(cat "$wd/{diverged}")); skipped"
    return 0
  fi
  local resume=()
  local saved
  for saved in "$wd"/checkpoints/*/; do  # checkpoints/<epoch>/: continue that run
    saved="${{saved%/}}"
    if [[ "${{saved##*/}}" =~ ^[0-9]+$ ]]; then
      resume=(--resume)
      break
    fi
  done
  mkdir -p "$wd"
  echo "== $wd ${{resume[*]:-}}"
  "$DUALPROP" "$@" --workdir "$wd" "${{resume[@]}}" 2>&1 | tee -ai "$wd/{log}"
  local status="${{PIPESTATUS[0]}}"
  if [ "$status" = 0 ]; then
    return 0
  elif [ "$status" = 1 ] && grep -q '{diverged_line}' "$wd/{log}"; then
    grep '{diverged_line}' "$wd/{log}" | tail -n 1 >"$wd/{diverged}"
    echo "== $wd diverged; on to the next cell"
  elif [ "$status" = 130 ]; then
    echo "== interrupted; run $0 again to continue"
    exit 130
  else
    echo "== $wd failed (exit status $status; see $wd/{log}); stopping"
    exit "$status"
  fi
}}

"""


def script_text(args, argv: Sequence[str]) -> str:
    command = shlex.join(["python", "experiments/studies/paper_grid.py", *argv])
    collect = "" if args.schedule == "fw16" else f" --schedule {args.schedule}"
    if args.runs != RUNS:
        collect += f" --runs {args.runs}"
    text = SCRIPT_HEAD.format(
        command=command,
        notes="\n".join(
            "# " + line for n in _notes(args.schedule) for line in textwrap.wrap(n, 96)
        ),
        log=LOG_FILE,
        diverged=DIVERGED_FILE,
        diverged_line=DIVERGED_LINE,
        collect=collect,
        script=args.write_script,
    )
    for variant in VARIANTS:
        text += f"# {VARIANT_NAMES[variant]} (--rule {variant})\n"
        for cell in cells(args.schedule):
            if cell.variant != variant:
                continue
            wd = f"{args.runs}/{cell.name}"
            rest = train_args(cell, wd, **_train_kwargs(args))[:-2]  # run_cell adds --workdir
            text += f"run_cell {shlex.quote(wd)} {shlex.join(rest)}\n"
        text += "\n"
    return text + 'echo "== all cells done"\n'


# ----------------------------------------------------------------------------- collect


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _epochs_done(workdir: pathlib.Path) -> int:
    try:
        with (workdir / "metrics.csv").open() as fh:
            return sum(1 for _ in csv.DictReader(fh))
    except OSError:
        return 0


def _diverged_line(workdir: pathlib.Path) -> str | None:
    for path in (workdir / DIVERGED_FILE, workdir / LOG_FILE):
        try:
            lines = [ln for ln in path.read_text().splitlines() if DIVERGED_LINE in ln]
        except OSError:
            continue
        if lines and (path.name == DIVERGED_FILE or not (workdir / "results.json").exists()):
            return lines[-1].strip()
    return None


def _rule_matches(cell: Cell, rule: dict) -> bool:
    passes, sweep = (15, False) if cell.schedule == "fw16" else (0, True)
    return (
        rule.get("name") == cell.variant
        and math.isclose(rule.get("alpha", math.nan), cell.alpha)
        and math.isclose(rule.get("beta", math.nan), cell.beta)
        and rule.get("passes") == passes
        and rule.get("sweep") == sweep
        and (passes == 0 or rule.get("schedule") == "bottom_up")
    )


def cell_result(cell: Cell, runs: pathlib.Path) -> dict:
    """What the cell's workdir says: status ``done``, ``diverged``, ``stopped`` or ``not run``."""
    wd = runs / cell.name
    out = dict(dataclasses.asdict(cell), name=cell.name, workdir=str(wd))
    out.update(status="not run", diverged=None, test_accuracy=None, epochs_done=0)
    if not wd.is_dir():
        return out
    out["epochs_done"] = _epochs_done(wd)
    results = _read_json(wd / "results.json")
    if results is not None:
        out.update(
            status="done",
            diverged=False,
            test_accuracy=results.get("test_accuracy"),
            best_val_accuracy=results.get("best_val_accuracy"),
            tested_epoch=results.get("tested_epoch"),
            epochs=results.get("epochs"),
            train_time_s=results.get("train_time_s"),
            backend=results.get("backend"),
            device_kind=results.get("device_kind"),
            rule=results.get("rule"),
            rule_matches_cell=_rule_matches(cell, results.get("rule") or {}),
        )
        return out
    line = _diverged_line(wd)
    if line is not None:
        where = re.search(r"became (\S+) at epoch (\d+), step (\d+)", line)
        out.update(status="diverged", diverged=True, message=line)
        if where:
            out.update(loss=where[1], diverged_epoch=int(where[2]), diverged_step=int(where[3]))
        return out
    saved = _read_json(wd / "config.json") or {}
    out.update(status="stopped", epochs=saved.get("epochs"))
    return out


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _status_text(r: dict) -> str:
    if r["status"] == "done":
        mismatch = "" if r.get("rule_matches_cell", True) else " (rule differs from the cell!)"
        epochs = r.get("epochs")
        return f"done, {epochs} epoch{'' if epochs == 1 else 's'}{mismatch}"
    if r["status"] == "stopped":
        return f"stopped after epoch {r['epochs_done']} of {r.get('epochs') or '?'}"
    return r["status"]


def _diverged_text(r: dict) -> str:
    if r["diverged"] is None:
        return "–"
    if not r["diverged"]:
        return "no"
    if "diverged_epoch" in r:
        return f"yes: loss {r['loss']} at epoch {r['diverged_epoch']}, step {r['diverged_step']}"
    return "yes"


def _short(r: dict) -> str:
    """A grid entry: the accuracy, or what happened instead."""
    if r["status"] == "done":
        return _pct(r["test_accuracy"])
    if r["status"] == "diverged":
        return f"diverged (epoch {r.get('diverged_epoch', '?')})"
    if r["status"] == "stopped":
        return f"stopped (epoch {r['epochs_done']})"
    return "not run"


def results_table(rows: list[dict]) -> str:
    table = common.md_table(
        ["variant", "α", "β", "test accuracy", "diverged", "status", "tested epoch"],
        [
            [
                VARIANT_NAMES[r["variant"]],
                f"{r['alpha']:g}",
                f"{r['beta']:g}",
                _pct(r["test_accuracy"]),
                _diverged_text(r),
                _status_text(r),
                r.get("tested_epoch") or "–",
            ]
            for r in rows
        ],
    )
    grids = []
    for variant in VARIANTS:
        mine = {(r["alpha"], r["beta"]): r for r in rows if r["variant"] == variant}
        grid = [
            [f"α = {a:g}", *(_short(mine[(a, b)]) for b in BETAS)]
            for a in ALPHAS
            if any((a, b) in mine for b in BETAS)
        ]
        if grid:
            head = [VARIANT_NAMES[variant], *(f"β = {b:g}" for b in BETAS)]
            grids.append(common.md_table(head, grid))
    return table + "\n" + "\n".join(grids)


def heatmap(rows: list[dict], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    for ax, variant in zip(axes, VARIANTS, strict=True):
        acc = np.full((len(ALPHAS), len(BETAS)), np.nan)
        for r in rows:
            if r["variant"] != variant:
                continue
            i, j = ALPHAS.index(r["alpha"]), BETAS.index(r["beta"])
            if r["status"] == "done" and r["test_accuracy"] is not None:
                acc[i, j] = 100 * r["test_accuracy"]
            dark = bool(np.isfinite(acc[i, j]) and acc[i, j] < 60)  # viridis is dark below ~60
            ax.text(
                j,
                i,
                _short(r).replace(" (", "\n("),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "black",
            )
        image = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, vmin=0, vmax=100)
        ax.set_xticks(range(len(BETAS)), [f"{b:g}" for b in BETAS])
        ax.set_yticks(range(len(ALPHAS)), [f"{a:g}" for a in ALPHAS])
        ax.set_xlabel("β")
        ax.set_ylabel("α")
        ax.set_title(VARIANT_NAMES[variant])
    fig.colorbar(image, ax=axes, label="test accuracy (%)", shrink=0.9)
    fig.suptitle(title)
    return fig


def collect(args, argv: Sequence[str]) -> tuple[dict, str]:
    """Read every cell under ``--runs`` and write the table, the heatmaps and the JSON;
    return the results and the table."""
    study = _collect_study(args)
    prov = common.Provenance(STUDY, args.quick, argv)  # the script's name: paper_grid.py
    runs = pathlib.Path(args.runs)
    rows = [cell_result(c, runs) for c in cells(args.schedule)]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "diverged", "stopped")}
    counts["not run"] = len(rows) - sum(counts.values())
    title = f"VGG16 / CIFAR-10 α × β grid, DP and DP⊤, {args.schedule}"
    body = (
        f"Høier & Zach 2024's grid with {SCHEDULE_NAMES[args.schedule]}, config `{CONFIG}`; "
        f"cells read from `{runs}`: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + ". Test accuracy of the best-validation epoch (`results.json`). A diverged cell "
        "(NaN/Inf training loss) writes no `results.json`: its epoch and step come from "
        f"`{DIVERGED_FILE}` or `{LOG_FILE}`. At α = 0.5 DP and DP⊤ coincide "
        + ("exactly (one sweep)." if args.schedule == "sweep" else "except for the output nudge.")
        + "\n\n"
        + results_table(rows)
    )
    results = {"schedule": args.schedule, "runs": str(runs), "counts": counts, "cells": rows}
    meta = prov.finish()
    out = common.out_dir(study, args)
    common.write_outputs(out, study, title, body, results, heatmap(rows, title), meta)
    return results, body


def _collect_study(args) -> str:
    return STUDY if args.schedule == "fw16" else f"{STUDY}_{args.schedule}"


# ----------------------------------------------------------------------------- check


def synthetic_npz(path: pathlib.Path, train: int, test: int, seed: int = 0) -> pathlib.Path:
    """CIFAR-shaped random data: uint8 (N, 32, 32, 3) images, labels 0..9, every class seen."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (train, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(train) % 10,
        x_test=rng.integers(0, 256, (test, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(test) % 10,
    )
    return path


def dualprop_command() -> list[str]:
    """The ``dualprop`` next to this Python (what a user of this venv runs), else ``-m``."""
    exe = pathlib.Path(sys.executable).with_name("dualprop")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "dualprop_jax.cli"]


def run_one(cell: Cell, argv: list[str], workdir: pathlib.Path) -> dict:
    """Run one cell's command; keep its output in ``train.log`` (and a divergence in
    ``diverged.txt``), as the generated script does; say what it left."""
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with (workdir / LOG_FILE).open("w") as log:
        proc = subprocess.run(
            [*dualprop_command(), *argv], cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    seconds = time.perf_counter() - t0
    text = (workdir / LOG_FILE).read_text()
    if proc.returncode == 1 and DIVERGED_LINE in text:
        lines = [ln for ln in text.splitlines() if DIVERGED_LINE in ln]
        (workdir / DIVERGED_FILE).write_text(lines[-1] + "\n")
    missing = [f for f in RUN_FILES if not (workdir / f).is_file()]
    if not (workdir / "checkpoints" / "1").is_dir():
        missing.append("checkpoints/1")
    started = (workdir / "config.json").is_file()
    return {
        "cell": cell.name,
        "exit_status": proc.returncode,
        "started": started,
        "wrote_outputs": not missing,
        "missing": missing,
        "seconds": round(seconds, 1),
        "log_tail": text.splitlines()[-3:],
    }


def check(args, argv: Sequence[str]) -> int:
    """Every cell's command (``--quick``: two), tiny, on synthetic data; then ``collect``."""
    prov = common.Provenance(STUDY, args.quick, argv)
    chosen = cells(args.schedule)
    names = args.cells.split(",") if args.cells else (QUICK_CELLS if args.quick else None)
    if args.cells == "half":
        names = HALF_CELLS
    if names is not None:
        known = {c.key: c for c in chosen}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"unknown cells {unknown}; the cells are {sorted(known)}")
        chosen = [known[n] for n in names]
    out = common.out_dir(CHECK_STUDY, args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="paper_grid_check-") as tmp:
        tmp = pathlib.Path(tmp)
        n_val = (args.train_images + 10) // 10  # dualprop holds out int(10%) of train
        npz = synthetic_npz(tmp / "cifar_shaped.npz", args.train_images + 10, args.test_images)
        runs = tmp / "runs"
        overrides = dict(layout=args.layout, dataset=str(npz), epochs=1)
        # evaluation pads each batch to --eval-batch-size (1000): one small batch instead
        overrides.update(max_train=args.train_images, batch_size=args.batch_size,
                         eval_batch_size=max(n_val, args.test_images))  # fmt: skip
        for i, cell in enumerate(chosen, 1):
            argv_cell = train_args(cell, runs / cell.name, **overrides)
            common.progress(f"cell {i}/{len(chosen)}: dualprop {shlex.join(argv_cell)}")
            row = run_one(cell, argv_cell, runs / cell.name)
            common.progress(
                f"  exit {row['exit_status']}, {row['seconds']} s, "
                f"missing {row['missing'] or 'nothing'}"
            )
            rows.append(row)
        collect_args = _CollectArgs(str(runs), args.schedule, args.quick, tmp / "collect")
        collect_argv = ["collect", "--schedule", args.schedule, "--runs", "<check's runs>"]
        collected, collected_md = collect(collect_args, collect_argv)
        collect_doc = common.check_outputs(tmp / "collect", _collect_study(collect_args))
        # the temporary folder is gone once this is read: name it <tmp> in what is kept
        collected = json.loads(json.dumps(collected).replace(str(tmp), "<tmp>"))
        collected_md = collected_md.replace(str(tmp), "<tmp>")
        for row in rows:
            row["log_tail"] = [ln.replace(str(tmp), "<tmp>") for ln in row["log_tail"]]
    by_name = {r["name"]: r for r in collected["cells"]}
    for row in rows:
        seen = by_name[row["cell"]]
        row["collected_status"] = seen["status"]
        row["collected_test_accuracy"] = seen["test_accuracy"]
        row["collected_rule_matches_cell"] = seen.get("rule_matches_cell")
        row["ok"] = (
            row["exit_status"] == 0
            and row["started"]
            and row["wrote_outputs"]
            and seen["status"] == "done"
            and seen.get("rule_matches_cell") is True
        )
    ran = {r["cell"] for r in rows}
    not_run_ok = all(r["status"] == "not run" for r in collected["cells"] if r["name"] not in ran)
    ok = all(r["ok"] for r in rows) and not_run_ok and bool(collect_doc["results"])
    shown = dict(overrides, dataset="<tmp>/cifar_shaped.npz")
    example = shlex.join(
        ["dualprop", *train_args(chosen[0], f"<tmp>/runs/{chosen[0].name}", **shown)]
    )
    body = (
        f"Each cell's `dualprop train` command ({SCHEDULE_NAMES[args.schedule]}, "
        f"`--layout {args.layout}`), run as a user would (a subprocess of "
        f"`{pathlib.Path(dualprop_command()[0]).name}` from this venv) with the paper config "
        f"and only these overrides: synthetic CIFAR-shaped data (`--dataset` an `.npz` of "
        f"random uint8 32x32x3 images, 10 classes), `--epochs 1` (with the warm-up scaled to "
        f"it), `--max-train {args.train_images}`, `--eval-batch-size` the size of the test "
        "set (evaluation pads every batch to it; the default 1000 would run 1000 images), "
        + (
            "batch 100 as in the paper"
            if args.batch_size == 100
            else f"`--batch-size {args.batch_size}` (the paper's is 100)"
        )
        + f": {args.train_images // args.batch_size} step(s). Outputs checked in each "
        f"workdir: {', '.join(RUN_FILES)}, checkpoints/1. {len(chosen)} of 18 cells"
        + (f" ({', '.join(c.key for c in chosen)})" if len(chosen) < 18 else "")
        + (
            ": a representative half (each variant's every α and β, DP's α = 0 and 1 corners "
            "at β = 1, the α = ½ DP/DP⊤ pair at β = 0.1)"
            if args.cells == "half"
            else ""
        )
        + ". Accuracies are on random data: they check the pipeline, not the finding. "
        "No CIFAR-10 run was made here (no GPU).\n\nFor example:\n\n    "
        + example
        + "\n\n"
        + common.md_table(
            ["cell", "exit", "started", "wrote outputs", "seconds", "collect reads", "ok"],
            [
                [
                    r["cell"],
                    r["exit_status"],
                    "yes" if r["started"] else "no",
                    "yes" if r["wrote_outputs"] else f"no (missing {', '.join(r['missing'])})",
                    r["seconds"],
                    f"{r['collected_status']}, {_pct(r['collected_test_accuracy'])}",
                    "yes" if r["ok"] else "**no**",
                ]
                for r in rows
            ],
        )
        + f"\nAll cells ok: **{'yes' if ok else 'no'}**; total "
        f"{sum(r['seconds'] for r in rows) / 60:.1f} min of runs. "
        "Then `collect` on those runs (passes `common.check_outputs`; cells not run "
        'show as "not run"):\n\n' + collected_md
    )
    results = {
        "schedule": args.schedule,
        "layout": args.layout,
        "train_images": args.train_images,
        "test_images": args.test_images,
        "ok": ok,
        "cells": rows,
        "collect": collected,
    }
    meta = prov.finish()
    common.write_outputs(
        out,
        CHECK_STUDY,
        "paper_grid check: every cell's command, tiny",
        body,
        results,
        _check_figure(rows),
        meta,
    )
    common.check_outputs(out, CHECK_STUDY)
    return 0 if ok else 1


@dataclasses.dataclass
class _CollectArgs:
    runs: str = RUNS
    schedule: str = "fw16"
    quick: bool = False
    out: pathlib.Path | None = None


def _check_figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2), constrained_layout=True)
    colors = ["tab:green" if r["ok"] else "tab:red" for r in rows]
    ax.barh(range(len(rows)), [r["seconds"] for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), [r["cell"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds (start, compile, 1 tiny epoch, test, write; green: ok)")
    ax.set_title("paper_grid check: each cell's dualprop train command")
    return fig


# ----------------------------------------------------------------------------- main


def _parser():
    p = common.parser(STUDY, __doc__)
    p.add_argument(
        "action",
        nargs="?",
        default="commands",
        choices=("commands", "collect", "check"),
        help="commands: print one dualprop train command per cell (default); collect: the "
        "table, heatmaps and JSON of the runs under --runs; check: run each cell's command, "
        "tiny, on synthetic data (--quick: 2 cells)",
    )
    p.add_argument(
        "--schedule",
        choices=tuple(SCHEDULES),
        default="fw16",
        help="fw16: 16 bottom-up passes, as the 2024 scripts (default); sweep: one "
        "top-down sweep (--passes 0)",
    )
    p.add_argument(
        "--layout",
        choices=("pooled", "unpooled"),
        default="pooled",
        help="VGG16 layout (default: pooled, as the official code)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="cifar10 (the config's, default), a TFDS name or prepared folder, or an .npz",
    )
    p.add_argument("--data-dir", default=None, help="passed on to dualprop train")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="instead of the config's 130 (the warm-up is scaled in proportion)",
    )
    p.add_argument(
        "--runs",
        default=RUNS,
        help=f"folder of the cells' workdirs (default: {RUNS}, from the repository root)",
    )
    p.add_argument(
        "--write-script",
        type=pathlib.Path,
        default=None,
        metavar="PATH",
        help="commands: also write them as a resumable bash script",
    )
    p.add_argument(
        "--cells",
        default=None,
        help="check: these cells only, e.g. dp-a1-b1,dp_top-a0-b0.01, or 'half': "
        + ",".join(HALF_CELLS),
    )
    p.add_argument(
        "--train-images",
        type=int,
        default=10,
        help="check: training images per cell (default: 10: one step of --batch-size 10)",
    )
    p.add_argument("--test-images", type=int, default=20, help="check: test images (default: 20)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=10,
        help="check: batch size (default: 10, as one fw16 VGG16 step at the paper's 100 takes "
        "minutes on a CPU; --batch-size 100 --train-images 100 checks the paper's batch)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.action != "commands" and args.write_script is not None:
        raise SystemExit("--write-script goes with the commands action")
    if args.action == "commands":
        lines = command_lines(args)
        print("\n".join(lines))
        if args.write_script is not None:
            args.write_script.write_text(script_text(args, argv))
            args.write_script.chmod(0o755)
            print(f"# wrote {args.write_script}", file=sys.stderr)
        return 0
    if args.action == "collect":
        if not pathlib.Path(args.runs).is_absolute() and not pathlib.Path(args.runs).exists():
            args.runs = str(common.ROOT / args.runs)
        collect(args, argv)
        return 0
    return check(args, argv)


if __name__ == "__main__":
    sys.exit(main())
