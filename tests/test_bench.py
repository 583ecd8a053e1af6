"""The benchmark harness: JSON schema, ratios, fairness (same model, batch and optimizer).

No timing is asserted: only what the harness reports and that it ran what it says.
"""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import cli, rules
from dualprop_jax.data import device as device_data
from dualprop_jax.training import benchmark
from dualprop_jax.training.config import MODELS

TINY = benchmark.ModelSpec(
    lambda rngs: dp.mlp((6, 8, 8, 4), rngs=rngs), (6,), "tiny MLP 6-8-8-4", num_classes=4
)
TINY_CONV = benchmark.ModelSpec(
    lambda rngs: dp.cnn((8, 8, 3), channels=(4,), dense=(8,), num_classes=10, rngs=rngs),
    (8, 8, 3),
    "tiny CNN",
)
ROW_KEYS = {"model", "rule", "batch", "step_ms_median", "ratio_to_bp", "compile_s", "peak_bytes"}


def _raw_loss(spec, batch, seed=0):
    """Softmax cross-entropy of the freshly built NNX module on the benchmark batch (raw jax)."""
    model = spec.build(nnx.Rngs(seed))
    x, y = benchmark.random_batch(spec, batch, seed)
    logits = model(jnp.asarray(x))
    t = jax.nn.one_hot(y, spec.num_classes)
    return float(jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.sum(t * logits, -1)))


def _check_schema(result, models, labels):
    assert {"backend", "device", "jax_version", "rows"} <= set(result)
    assert result["backend"] == jax.default_backend()
    assert result["jax_version"] == jax.__version__
    assert [(r["model"], r["rule"]) for r in result["rows"]] == [
        (m, a) for m in models for a in labels
    ]
    for r in result["rows"]:
        assert ROW_KEYS <= set(r), set(r)
        assert r["step_ms_median"] > 0 and r["compile_s"] > 0
        assert r["peak_bytes"] is None or r["peak_bytes"] > 0
        bp = next(b for b in result["rows"] if b["model"] == r["model"] and b["rule"] == "bp")
        assert r["ratio_to_bp"] == pytest.approx(r["step_ms_median"] / r["bp_step_ms"])
        if r["rule"].split("+")[0] not in benchmark.ENERGY_RULES:  # timed in BP's own group
            assert r["bp_step_ms"] == bp["step_ms_median"]
        else:  # EP / CHL: their own group, with BP timed again, and their T and K
            assert r["T"] >= 1 and r["K"] >= 1 and r["relaxation_steps"] >= r["T"] + r["K"]


def test_run_benchmark_reports_every_rule_on_the_same_model_and_batch():
    result = benchmark.run_benchmark(
        ["tiny"], batch=8, steps=3, warmup=1, specs={"tiny": TINY}, free_steps=10,
        nudged_steps=4, rule_labels=benchmark.RULES,
    )  # fmt: skip
    _check_schema(result, ["tiny"], benchmark.RULES)
    rows = result["rows"]
    assert all(r["batch"] == 8 and r["steps"] == 3 for r in rows)
    ep = next(r for r in rows if r["rule"] == "ep")
    assert (ep["T"], ep["K"], ep["relaxation_steps"]) == (10, 4, 18)  # symmetric: T + 2K
    assert next(r for r in rows if r["rule"] == "bp")["ratio_to_bp"] == 1.0
    # fairness: every rule's first step saw the same parameters and batch, so they all
    # report the loss that raw jax computes for the NNX module on that batch
    # (EP and CHL report the squared error of their free phase instead)
    expected = _raw_loss(TINY, 8)
    for r in rows:
        if r["rule"] not in benchmark.ENERGY_RULES:
            assert r["first_loss"] == pytest.approx(expected, rel=1e-5), r["rule"]


TINY_RESNET = benchmark.ModelSpec(
    lambda rngs: dp.resnet(widths=(4, 8), blocks=(1, 1), input_shape=(8, 8, 1), rngs=rngs),
    (8, 8, 1),
    "tiny ResNet",
    graph=True,
)


def test_graph_models_get_rows_for_the_rules_defined_on_graphs_only():
    result = benchmark.run_benchmark(
        ["tiny_resnet"], batch=8, steps=2, warmup=1, specs={"tiny_resnet": TINY_RESNET}
    )
    on_graphs = [label for label in benchmark.RULES if not benchmark.chain_only(label)]
    assert on_graphs == ["bp", "dp_top", "dp", "dp+fast"]
    _check_schema(result, ["tiny_resnet"], on_graphs)
    expected = _raw_loss(TINY_RESNET, 8)  # every row started from the same weights and batch
    for r in result["rows"]:
        assert r["first_loss"] == pytest.approx(expected, rel=1e-5), r["rule"]
    assert set(benchmark.MODELS) >= {"resnet8", "resnet18"}
    assert benchmark.MODELS["resnet8"].graph and benchmark.MODELS["resnet18"].graph


def _bench_args(*argv):
    """The namespace of ``dualprop bench *argv``, parsed by the CLI's own parser."""
    return cli.build_parser().parse_args(["bench", *argv])


def test_bench_leaves_out_the_slow_energy_rules_unless_asked_for():
    labels = _bench_args("--models", "mlp").rules.split(",")
    assert not [label for label in labels if label.split("+")[0] in ("ep", "chl")]
    assert labels == ["bp", "dp_top", "dp", "dp+fast", "dp_top+damped", "dp+kp"]
    # the library's own default is the same: run_benchmark / bench_model without rule_labels
    assert tuple(benchmark.BENCH_OPTIONS["rule_labels"]) == benchmark.DEFAULT_RULES
    assert {"ep", "chl"} <= set(benchmark.RULES)  # still there to ask for
    args = _bench_args("--models", "mlp", "--rules", "bp,ep,chl", "--energy-steps", "2")
    assert args.rules.split(",") == ["bp", "ep", "chl"] and args.energy_steps == 2


def test_bench_help_shows_every_flags_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    options = text[text.index("options:") :].splitlines()[1:]
    blocks, block = [], []
    for line in options:  # one block per flag: its line and the help's continuation lines
        if line.startswith("  -") and block:
            blocks.append(" ".join(block))
            block = []
        block.append(line.strip())
    blocks.append(" ".join(block))
    blocks = {b.split()[0]: " ".join(b.split()) for b in blocks if not b.startswith("-h")}
    assert {"--models", "--rules", "--batch", "--steps", "--warmup", "--out"} <= set(blocks)
    assert [b for b in blocks.values() if "(default" not in b] == []
    assert "(default: 128)" in blocks["--batch"] and "(default: 5)" in blocks["--warmup"]
    assert "(default: mlp,cnn,vgg16)" in blocks["--models"]
    assert f"(default: {','.join(benchmark.DEFAULT_RULES)})" in blocks["--rules"]
    assert f"mlp {benchmark.DEFAULT_STEPS['mlp']}," in blocks["--steps"]
    assert "(default: 0.01)" in blocks["--beta"] and "(default: 100)" in blocks["--free-steps"]


def test_bench_takes_every_model_of_train_resnet20_included():
    assert _bench_args("--models", "resnet20").models == "resnet20"
    assert set(MODELS) <= set(benchmark.MODELS)  # dualprop train --model's choices
    with pytest.raises(SystemExit):  # an unknown name stops at the parser, naming the choices
        _bench_args("--models", "mlp,resnet21")
    spec = benchmark.MODELS["resnet20"]
    assert spec.graph and spec.input_shape == (32, 32, 3)
    net, _ = dp.split(spec.build(nnx.Rngs(0)))  # built, not timed (a ResNet-20 step is slow)
    blocks = [name for name in net.graph.names if re.fullmatch(r"s\db\d", name)]
    assert blocks == [f"s{s}b{b}" for s in range(3) for b in range(3)]  # 3 stages x 3 blocks


def test_rule_configs():
    def rule(*args):
        return benchmark.train_config(*args).rule

    assert rule("dp_top", 0.5, 0.01, "float32", 0).variant == "dp_top"
    assert rule("dp", 0.5, 0.01, "float32", 0).variant == "dp"
    assert rule("bp", 0.5, 0.01, "float32", 0) == rules.backprop()
    fast = rule("dp+fast", 0.5, 0.02, "bfloat16", 0)
    assert fast.fast and fast.beta == 0.02 and fast.dtype == "bfloat16"
    assert fast.variant == "dp" and fast.label == "dp+fast"
    # EP keeps its own β (0.5), not DP's 0.01; T and K come from the bench settings
    ep = rule("ep", 0.5, 0.01, "float32", 0, 40, 7)
    assert (ep.beta, ep.free_steps, ep.nudged_steps, ep.nudging) == (0.5, 40, 7, "symmetric")
    assert rule("chl", 0.5, 0.01, "float32", 0, 40, 7) == rules.chl(free_steps=40, clamped_steps=7)
    assert rule("dp_top+damped", 0.3, 0.02, "float32", 2) == rules.dual_prop(
        "dp_top", alpha=0.3, beta=0.02, passes=2, damped=True
    )
    assert rule("dp+kp", 0.5, 0.01, "float32", 0).feedback == "kolen_pollack"
    with pytest.raises(ValueError, match="unknown"):
        benchmark.train_config("hebb", 0.5, 0.01, "float32", 0)
    with pytest.raises(ValueError, match="bp"):
        benchmark.bench_model("tiny", TINY, batch=4, steps=1, rule_labels=("dp_top",))


def test_vgg_batch_is_reduced_on_cpu_and_the_output_says_so():
    result = benchmark.run_benchmark(
        ["vgg16"],
        batch=32,
        steps=2,
        warmup=0,
        rule_labels=("bp", "dp_top"),
        specs={"vgg16": TINY_CONV},
    )
    if jax.default_backend() != "cpu":  # accelerators keep the asked batch, and say nothing
        assert {r["batch"] for r in result["rows"]} == {32} and not result["notes"]
        return
    assert {r["batch"] for r in result["rows"]} == {benchmark.CPU_VGG_BATCH}
    assert any(f"batch {benchmark.CPU_VGG_BATCH}" in n for n in result["notes"])
    assert f"batch {benchmark.CPU_VGG_BATCH}" in cli.format_table(result)


def test_cli_writes_the_json_it_prints(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "mlp", "--batch", "4", "--steps", "2", "--warmup", "1"]
    argv += ["--rules", "bp,dp_top,dp+fast", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    _check_schema(result, ["mlp"], ["bp", "dp_top", "dp+fast"])
    printed = capsys.readouterr().out
    for r in result["rows"]:
        assert f"| mlp | {r['rule']} | - | 4 | {r['step_ms_median']:.2f} |" in printed
    assert result["command"].startswith("dualprop bench --models mlp")


def test_python_m_dualprop_jax_cli_bench_is_dualprop_bench(tmp_path):
    """``python -m dualprop_jax.cli bench`` (experiments/gpu_check.sh) runs the same command."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "dualprop_jax.cli", "bench", "--models", "", "--out", str(out)],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["command"].startswith("dualprop bench --models") and result["rows"] == []


def test_epoch_timing_runs_whole_epochs_on_both_feeds_and_auto():
    rows = benchmark.time_epoch(
        images=50, batch=8, spec=TINY_CONV, name="tiny", repeats=3, warmup_epochs=1,
        step_samples=3, feeds=("host", "device", "auto"),
    )  # fmt: skip
    assert [(r["rule"], r["feed"]) for r in rows] == [
        (rule, feed) for rule in ("bp", "dp_top") for feed in ("host", "device", "auto")
    ]
    # auto runs the device feed when the set (float32 images, int32 labels) fits its budget
    stored = 50 * (4 * int(np.prod(TINY_CONV.input_shape)) + 4)
    auto = "device" if stored <= device_data.default_budget(None) else "host"
    assert [r["feed_ran"] for r in rows] == ["host", "device", auto] * 2
    for r in rows:
        assert len(r["epoch_s_all"]) == 3 and len(r["warmup_epoch_s"]) == 1
        assert r["epoch_s"] == sorted(r["epoch_s_all"])[1]  # the median of three
        assert r["images"] == 48 and r["steps"] == 6 and r["batch"] == 8  # last partial dropped
        assert r["epoch_s"] > 0 and r["step_ms_median"] > 0
        assert r["images_per_s"] == pytest.approx(48 / r["epoch_s"])
        assert r["epoch_over_steps"] == pytest.approx(
            r["epoch_s"] / (6 * r["step_ms_median"] / 1e3)
        )
        bp = next(b for b in rows if b["rule"] == "bp" and b["feed"] == r["feed"])
        assert r["ratio_to_bp"] == pytest.approx(r["epoch_s"] / bp["epoch_s"])
    with pytest.raises(ValueError, match="smaller than one batch"):
        benchmark.time_epoch(images=4, batch=8, spec=TINY_CONV)
    with pytest.raises(ValueError, match="repeats"):
        benchmark.time_epoch(images=50, batch=8, spec=TINY_CONV, repeats=0)
    with pytest.raises(ValueError, match="warmup_epochs >= 1"):
        benchmark.time_epoch(images=50, batch=8, spec=TINY_CONV, warmup_epochs=0)
    with pytest.raises(ValueError, match="warmup_epochs >= 1"):
        benchmark.time_epoch(images=50, batch=8, spec=TINY_CONV, warmup_epochs=0, feeds=["auto"])
    with pytest.raises(ValueError, match="each must be one of"):
        benchmark.time_epoch(images=50, batch=8, spec=TINY_CONV, feeds=["gpu"])


def test_cli_epoch_models_time_each_model_and_say_what_auto_ran(tmp_path, capsys):
    """``--epoch-models`` adds a model's epoch rows (random data of its input shape,
    ``--epoch-images`` of them); the table shows auto's choice next to it."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "", "--epoch-models", "mlp", "--epoch-images", "40"]
    argv += ["--epoch-batch", "8", "--epoch-feeds", "host,auto", "--epoch-repeats", "1"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["epoch_rows"]
    assert [(r["model"], r["rule"], r["feed"]) for r in rows] == [
        ("mlp", rule, feed) for rule in ("bp", "dp_top") for feed in ("host", "auto")
    ]
    assert {r["images"] for r in rows} == {40} and {r["steps"] for r in rows} == {5}
    printed = capsys.readouterr().out
    for r in rows:
        feed = "host" if r["feed"] == "host" else f"auto ({r['feed_ran']})"
        assert f"| mlp | {r['rule']} | {feed} | 40 | 8 |" in printed


def test_random_batch_is_fixed_by_the_seed():
    x1, y1 = benchmark.random_batch(TINY, 5, 3)
    x2, y2 = benchmark.random_batch(TINY, 5, 3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (5, 6) and x1.dtype == np.float32
    assert y1.dtype == np.int32 and y1.min() >= 0 and y1.max() < TINY.num_classes


def _op_counts(fn, net, params, x, y, cfg):
    hlo = jax.jit(lambda p: fn(net, p, x, y, cfg)[0]).lower(params).compile().as_text()
    return {op: len(re.findall(rf"\s{op}\(", hlo)) for op in ("dot", "convolution")}


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
def test_one_sweep_dp_compiles_to_the_matmuls_and_convolutions_of_bp(kind):
    """What the benchmark relies on: no recomputed forward pass survives in the compiled step.

    Oracle: BP via jax.value_and_grad (forward + backward). The one-sweep DP gradient must
    compile to the same number of dots and convolutions (the Hebbian vjp's primal is dead).
    """
    if kind == "mlp":
        net, params = dp.split(dp.mlp((32, 64, 64, 10), rngs=nnx.Rngs(0)))
        x = jnp.ones((16, 32))
    elif kind == "cnn":
        net, params = dp.split(dp.cnn((8, 8, 2), channels=(4, 8), dense=(16,), rngs=nnx.Rngs(0)))
        x = jnp.ones((16, 8, 8, 2))
    else:  # a graph: nodes with two in-edges (the joins) and two out-edges (the forks)
        net, params = dp.split(
            dp.resnet(widths=(4, 8), blocks=(1, 1), input_shape=(8, 8, 2), rngs=nnx.Rngs(0))
        )
        x = jnp.ones((16, 8, 8, 2))
    y = jnp.arange(16) % 10
    bp = _op_counts(dp.bp_grad, net, params, x, y, dp.rules.dual_prop())
    assert bp["dot"] > 0
    for fn, cfg in ((dp.contrastive_grad, dp.rules.dual_prop(variant="dp_top")),
                    (dp.fast_grad, dp.rules.dual_prop(fast=True))):  # fmt: skip
        assert _op_counts(fn, net, params, x, y, cfg) == bp, cfg


TINY_POOLED = benchmark.ModelSpec(
    lambda rngs, layout="unpooled": dp.cnn(
        (8, 8, 3), channels=(4,), dense=(8,), num_classes=10, layout=layout, rngs=rngs
    ),
    (8, 8, 3),
    "tiny CNN, both layouts",
    layouts=dp.models.LAYOUTS,
)


def test_multipass_rows_time_the_2024_schedule_on_each_layout_from_one_start():
    rows = benchmark.bench_multipass("tiny", TINY_POOLED, batch=8, steps=2, passes=4, warmup=1)
    assert [(r["layout"], r["rule"], r["schedule"]) for r in rows] == [
        (layout, rule, schedule)
        for layout in ("unpooled", "pooled")
        for rule, schedule in (("bp", "-"), ("dp_top", "one sweep"), ("dp_top", "fwK 4"))
    ]
    # the same network function and batch for every row: both layouts compute conv → pool → f
    # with the same parameters, so every first step reports raw jax's loss of the module
    expected = _raw_loss(TINY_POOLED, 8)
    for r in rows:
        assert r["first_loss"] == pytest.approx(expected, rel=1e-5), r
        same = [s for s in rows if s["layout"] == r["layout"]]
        bp, sweep = same[0], same[1]
        assert r["ratio_to_bp"] == pytest.approx(r["step_ms_median"] / bp["step_ms_median"])
        assert r["ratio_to_one_sweep"] == pytest.approx(
            r["step_ms_median"] / sweep["step_ms_median"]
        )
    # a model without pooling has one set of rows
    assert len(benchmark.bench_multipass("t", TINY, batch=8, steps=1, passes=2, warmup=0)) == 3
    with pytest.raises(ValueError, match="passes >= 2"):
        benchmark.bench_multipass("t", TINY, batch=8, steps=1, passes=1)
