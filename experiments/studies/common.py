"""What every study shares: its command line, provenance, data and output files.

A study is one script in ``experiments/studies/``. It writes three generated files into its
results folder (default ``experiments/studies/results/<study>/``, or ``--out``):

    <study>.md    the table, with a header naming the command, git commit, jax version,
                  backend and run time (generated; never edit by hand)
    <study>.png   the figure
    <study>.json  the raw numbers, under ``"results"``, with the same provenance under ``"meta"``

``--quick`` runs a tiny slice of the same code (minutes on a CPU, for CI) and writes the same
files, marked as quick; :func:`check_outputs` checks that they are well-formed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results"


_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)


def _role_text(match: re.Match) -> str:
    text = match.group(1)
    if text.endswith(">") and "<" in text:  # :role:`shown text <target>`
        return text[: text.index("<")].strip()
    return text[1:].rsplit(".", 1)[-1] if text.startswith("~") else text


def plain_text(doc: str) -> str:
    """``doc`` (a docstring in reStructuredText) as plain text for a terminal: a role
    (``:func:`a.b```, ``:mod:`~a.b```, ``:data:`text <a.b>```) as the name it shows (``a.b``,
    ``b``, ``text``), a literal (````--flag````) without its double backquotes, a paragraph's
    closing ``::`` as ``:``."""
    text = _LITERAL.sub(r"\1", _ROLE.sub(_role_text, doc))
    return re.sub(r"(?<=\S)::$", ":", text, flags=re.MULTILINE)


def parser(study: str, description: str) -> argparse.ArgumentParser:
    """The study's argument parser, with ``--quick`` and ``--out``; its help shows the
    ``description`` (the study's docstring) as :func:`plain_text`."""
    p = argparse.ArgumentParser(
        prog=f"python experiments/studies/{study}.py",
        description=plain_text(description),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny slice of the study (minutes on a CPU; CI runs it): checks the pipeline, "
        "not the finding",
    )
    p.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help=f"results folder (default: experiments/studies/results/{study}/, or "
        f"runs/studies-quick/{study}/ with --quick)",
    )
    return p


def out_dir(study: str, args: argparse.Namespace) -> pathlib.Path:
    if args.out is not None:
        return args.out
    return (ROOT / "runs" / "studies-quick" / study) if args.quick else RESULTS / study


def git(*cmd: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def device_description() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        import os

        return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return f"{dev.platform}: {dev.device_kind}"


class Provenance:
    """Command, commit, versions and run time of a study run: start it, then :meth:`finish`."""

    def __init__(self, study: str, quick: bool, argv: Sequence[str] | None = None) -> None:
        self.study = study
        self.quick = quick
        argv = list(sys.argv[1:] if argv is None else argv)
        self.command = shlex.join(["python", f"experiments/studies/{study}.py", *argv])
        self.start = time.perf_counter()
        self.started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")

    def finish(self) -> dict:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {
            "study": self.study,
            "quick": self.quick,
            "command": self.command,
            "git_commit": commit,
            "git_dirty": bool(dirty) if dirty is not None else None,
            "jax_version": jax.__version__,
            "python": platform.python_version(),
            "backend": jax.default_backend(),
            "device": device_description(),
            "devices": jax.device_count(),
            "x64": bool(jax.config.jax_enable_x64),
            "started": self.started,
            "run_time_s": round(time.perf_counter() - self.start, 1),
        }


def header(title: str, meta: dict) -> str:
    """The Markdown header every study's table starts with."""
    commit = meta["git_commit"] or "unknown"
    if meta.get("git_dirty"):
        commit += " (with uncommitted changes)"
    quick = (
        "\n**Quick mode**: a tiny slice that checks the pipeline; these numbers are not a "
        "finding.\n"
        if meta["quick"]
        else ""
    )
    return (
        f"# {title}\n\n"
        f"Generated by `experiments/studies/{meta['study']}.py`; do not edit by hand. Command:\n\n"
        f"    {meta['command']}\n\n"
        f"Run {meta['started']}, {meta['run_time_s'] / 60:.1f} min; git {commit}; jax "
        f"{meta['jax_version']} (Python {meta['python']}), backend `{meta['backend']}` "
        f"({meta['device']}).\n{quick}\n"
    )


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | jax.Array):
        return _jsonable(np.asarray(obj).tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def write_outputs(
    out: pathlib.Path, study: str, title: str, body: str, results: dict, fig, meta: dict
) -> dict[str, pathlib.Path]:
    """Write ``<study>.md`` (header + ``body``), ``<study>.png`` (``fig``) and ``<study>.json``."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{study}.{ext}" for ext in ("md", "png", "json")}
    paths["md"].write_text(header(title, meta) + body.rstrip() + "\n")
    fig.savefig(paths["png"], dpi=110, bbox_inches="tight")
    plt.close(fig)
    doc = {"meta": meta, "results": _jsonable(results)}
    paths["json"].write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    print(f"wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    return paths


META_KEYS = ("study", "command", "git_commit", "jax_version", "backend", "run_time_s")


def check_outputs(out: pathlib.Path, study: str) -> dict:
    """Check the three files of a study run; return its JSON. Raises ``ValueError`` naming the
    first problem: a missing or empty file, a PNG that is not one, a table without rows, or
    provenance missing from the JSON or the Markdown."""
    paths = {ext: out / f"{study}.{ext}" for ext in ("md", "png", "json")}
    for p in paths.values():
        if not p.is_file() or p.stat().st_size == 0:
            raise ValueError(f"{study}: {p} is missing or empty")
    if paths["png"].read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{study}: {paths['png']} is not a PNG file")
    doc = json.loads(paths["json"].read_text())
    missing = [k for k in META_KEYS if k not in doc.get("meta", {})]
    if missing:
        raise ValueError(f"{study}: {paths['json']} lacks meta fields {missing}")
    if not doc.get("results"):
        raise ValueError(f"{study}: {paths['json']} has no results")
    md = paths["md"].read_text()
    if doc["meta"]["command"] not in md or "git " not in md:
        raise ValueError(f"{study}: {paths['md']} does not record its command and commit")
    if not any(line.startswith("|---") for line in md.splitlines()):
        raise ValueError(f"{study}: {paths['md']} has no table")
    return doc


def md_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def load_fashion_mnist(train_images: int | None, seed: int = 0):
    """Fashion-MNIST as standardised float32 device arrays ``(x_train, y_train, x_test,
    y_test)``, images flattened to 784: ``train_images`` of the training set (a seeded random
    subset; None: all 60 000), and the 10 000 test images. No validation split: the studies
    report test accuracy at the end of a fixed training budget."""
    import jax.numpy as jnp

    from dualprop_jax.data import load_dataset

    ds = load_dataset("fashion_mnist", val_fraction=0.0, seed=seed, max_train=train_images)

    def flat(split):
        x, y = ds.split(split)
        return jnp.asarray(np.asarray(x[:], np.float32).reshape(len(y), -1)), jnp.asarray(y)

    return (*flat("train"), *flat("test"))


def progress(msg: str) -> None:
    print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)
