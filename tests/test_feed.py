"""The device feed (training set on the device, epochs in chunks) against the host feed.

Oracles: the host feed (batches taken, standardised and augmented by the code the device feed
replaces) for the parameters, losses and diagnostics; JAX's transfer guard for "nothing is
copied to the device per step"; the jit cache for "compiled once"; the stated budget for
"auto". Cases and the 4-device worker are in ``_feed_worker.py``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys

import _feed_worker as cases
import jax
import numpy as np
import pytest

from dualprop_jax import cli, rules
from dualprop_jax.data import device as device_data
from dualprop_jax.errors import DataError
from dualprop_jax.training import checkpoints, parallel, train
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.loop import train_epoch
from dualprop_jax.training.progress import ConsoleProgress
from dualprop_jax.training.steps import TrainState, TrainStep, make_train_step

# Both feeds run the same jitted step on bit-identical batches (same order, same float32
# standardisation, same keys); only the program around the step differs (a while loop on the
# device), which XLA may compile to other roundings. Measured: 0 for the MLP, <= 2e-6 for the
# CNN after 2 epochs of SGD. 1e-5 is 10x that and 1000x below how far the parameters move.
ATOL = 1e-5


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _assert_same_params(got, want, init, atol: float = ATOL) -> None:
    for g, w, i in zip(_leaves(got), _leaves(want), _leaves(init), strict=True):
        assert np.abs(w - i).max() > 100 * atol, "training barely moved this leaf"
        np.testing.assert_allclose(g, w, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def one_device():
    """``{case: {feed: (params, losses)}}``: 2 epochs of each case on one device, both feeds."""
    mesh = parallel.make_mesh(1)
    return {
        case: {feed: cases.train(case, mesh, feed)[:2] for feed in ("host", "device")}
        for case in cases.CASES
    }


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory, request):
    """The cases on a 4-device mesh, both feeds, in a fresh process (``_feed_worker.py``)
    while this process computes the one-device results on the other core."""
    out = tmp_path_factory.mktemp("feed_four_devices")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    script = pathlib.Path(cases.__file__)
    with (out / "worker.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out / "four.npz")], stdout=log, stderr=log, env=env
        )
        try:
            request.getfixturevalue("one_device")
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, (out / "worker.log").read_text()[-3000:]
    return dict(np.load(out / "four.npz"))


@pytest.mark.parametrize("case", cases.CASES)
def test_four_devices_device_feed_equals_host_feed_and_one_device(four_devices, one_device, case):
    """On 4 devices the device feed splits each batch over the devices and gives the 4-device
    host feed's parameters within ATOL; both give the one-device parameters up to 1% of how
    far training moved them (the 4-way all-reduce sums in another order, and DP⊤'s 1/β
    amplifies that rounding: 1.5e-3 at most on the MLP, with either feed)."""
    assert four_devices[f"{case}/batch_split"]
    init = cases.problem(case)[2]
    one = one_device[case]["host"][0]
    got = {}
    for feed in ("host", "device"):
        prefix = f"{case}/4-{feed}/"
        got[feed] = [four_devices[prefix + jax.tree_util.keystr(p)] for p, _ in _paths(one)]
        np.testing.assert_allclose(four_devices[prefix + "loss"], one_device[case]["host"][1],
                                   rtol=1e-3)  # fmt: skip
    _assert_same_params(got["device"], got["host"], init)
    for g, r, i in zip(got["device"], _leaves(one), _leaves(init), strict=True):
        assert np.linalg.norm(g - r) <= 1e-2 * np.linalg.norm(r - i)


def _paths(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


@pytest.mark.parametrize("case", cases.CASES)
def test_device_feed_equals_host_feed(one_device, case):
    """Two epochs (chunks of 1, 3 and 4 steps; the second epoch's keys offset by its first
    global step): the same parameters within ATOL and the same epoch losses. ``cnn_augment``
    takes generated uint8 NHWC images through standardisation and random crop + flip."""
    (host, host_loss), (dev, dev_loss) = one_device[case]["host"], one_device[case]["device"]
    _assert_same_params(dev, host, cases.problem(case)[2])
    np.testing.assert_allclose(dev_loss, host_loss, rtol=1e-6)


def test_augmentation_reaches_the_device_feed(one_device):
    """The augmenting case is not decided by its data alone: without augmentation the same
    epochs end 100x ATOL or more away from the augmented ones."""
    ds, net, params, rule, optimizer, _ = cases.problem("cnn_augment")
    mesh = parallel.make_mesh(1)
    step = make_train_step(net, rule, optimizer, mesh=mesh, donate=True)
    state = TrainState.create(net, params, rule, optimizer, mesh)
    for epoch in (1, 2):
        state = train_epoch(step, state, ds, batch_size=24, epoch=epoch, seed=5, mesh=mesh,
                            log_every=cases.LOG_EVERY, feed="device").state  # fmt: skip
    augmented = one_device["cnn_augment"]["device"][0]
    gap = max(
        np.abs(a - b).max() for a, b in zip(_leaves(state.params), _leaves(augmented), strict=True)
    )
    assert gap > 100 * ATOL, gap


def _warm_step(case: str, mesh, **kwargs):
    """``(dataset, step, state)`` after one device-fed epoch (compiled, data resident)."""
    ds, net, params, rule, optimizer, augment = cases.problem(case)
    step = make_train_step(net, rule, optimizer, mesh=mesh, donate=True, augment=augment)
    state = TrainState.create(net, params, rule, optimizer, mesh)
    batch = cases.BATCH[case]
    state = train_epoch(step, state, ds, batch_size=batch, epoch=1, mesh=mesh, feed="device").state
    return ds, step, state


def test_device_epoch_copies_nothing_to_the_device_per_step(capfd):
    """An augmenting device-fed epoch with a chunk per step runs under
    ``transfer_guard_host_to_device("disallow")``: no implicit copy (a NumPy batch or index, a
    Python number, a host-made key) reaches a jitted call. Explicit copies, logged by the
    guard's "log_explicit" level, are the per-epoch plan only: as many for 8 chunks as for 2,
    while the host feed makes several per step (the counter sees them)."""
    mesh = parallel.make_mesh(1)
    ds, step, state = _warm_step("cnn_augment", mesh)
    kw = dict(batch_size=24, mesh=mesh)
    with jax.transfer_guard_host_to_device("disallow"):
        state = train_epoch(step, state, ds, epoch=2, log_every=1, feed="device", **kw).state
    copies = {}
    for epoch, feed, log_every in ((3, "device", 1), (4, "device", 100), (5, "host", 100)):
        capfd.readouterr()
        with jax.transfer_guard_host_to_device("log_explicit"):
            result = train_epoch(step, state, ds, epoch=epoch, log_every=log_every, feed=feed, **kw)
        state = result.state
        copies[feed, log_every] = capfd.readouterr().err.count("host-to-device transfer")
    steps = len(ds.x_train) // 24
    assert copies["device", 1] == copies["device", 100] <= 8, copies
    assert copies["host", 100] >= 2 * steps, copies


def test_chunk_program_is_traced_and_compiled_once():
    """Chunks of lengths 1, 2, 3, 5, 7 and more, over three epochs with other chunk ends and
    diagnostics: the step is traced once (inside the one chunk program) and the chunk
    program's jit cache holds one entry."""
    mesh = parallel.make_mesh(1)
    ds, net, params, rule, optimizer, _ = cases.problem("cnn_augment")
    base = make_train_step(net, rule, optimizer, mesh=mesh, donate=True, augment=True)
    traces = []

    def counted(rule, state, x, y, key):
        traces.append(x.shape)  # runs only while JAX traces
        return base.jitted(rule, state, x, y, key)

    step = TrainStep(jax.jit(counted, donate_argnums=1), base.rule, augment=True)
    step.donate = True  # as make_train_step(donate=True) says; else the feed traces to ask
    state = TrainState.create(net, params, rule, optimizer, mesh)
    records = 0
    for epoch, log_every, diag in ((1, 3, None), (2, 5, (lambda p, x, y: {"n": x.sum()}, 3)),
                                   (3, 100, None)):  # fmt: skip
        result = train_epoch(step, state, ds, batch_size=24, epoch=epoch, mesh=mesh,
                             log_every=log_every, diagnostics=diag, feed="device")  # fmt: skip
        state, records = result.state, records + len(result.diagnostics)
    run = device_data.runner(step, mesh)
    assert len(traces) == 1, traces
    assert run.chunk._cache_size() == 1
    assert records == 3  # global steps 9, 12, 15 of epoch 2 (steps 8..15)


def test_diagnostics_see_the_same_batches(tmp_path):
    """``train_and_evaluate`` fed from the host for epoch 1, resumed on the device feed for
    epoch 2, equals a host-fed run of 2 epochs: parameters, alignment records (diagnostics on
    the batch of each diagnostics step) and epoch losses; the console says which feed ran."""
    full = cases.fmnist()
    ds = dataclasses.replace(full, x_val=full.x_val[:500], y_val=full.y_val[:500],
                             x_test=full.x_test[:500], y_test=full.y_test[:500])  # fmt: skip
    cfg = TrainConfig(widths=(32,), rule=rules.dual_prop(variant="dp_top"), optimizer="sgd",
                      learning_rate=0.05, batch_size=40, epochs=2, diagnostics_every=7,
                      feed="host")  # fmt: skip
    train.train_and_evaluate(cfg, tmp_path / "host", dataset=ds, plots=False)
    train.train_and_evaluate(cfg.replace(epochs=1), tmp_path / "mixed", dataset=ds, plots=False)
    out = io.StringIO()
    results = train.train_and_evaluate(
        cfg.replace(feed="device"), tmp_path / "mixed", resume=True, dataset=ds, plots=False,
        hook=ConsoleProgress(out, bar=False),
    )  # fmt: skip
    assert results["feed"] == "device"
    assert "data: device-resident (0.5 MB of training data as stored)" in out.getvalue()
    want, got = (checkpoints.load_checkpoint(tmp_path / n)[1] for n in ("host", "mixed"))
    for g, w in zip(_leaves(got["params"]), _leaves(want["params"]), strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=ATOL)
    align = [json.loads((tmp_path / n / "alignment.json").read_text()) for n in ("host", "mixed")]
    assert [r["step"] for r in align[1]] == [0, 7, 14, 21, 28] == [r["step"] for r in align[0]]
    for a, b in zip(*align, strict=True):
        assert a["cosine"].keys() == b["cosine"].keys()
        np.testing.assert_allclose(
            list(a["cosine"].values()), list(b["cosine"].values()), atol=ATOL
        )
    metrics = [(tmp_path / n / "metrics.csv").read_text().splitlines() for n in ("host", "mixed")]
    losses = [[float(row.split(",")[1]) for row in m[1:]] for m in metrics]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)


def test_a_step_that_does_not_donate_leaves_the_input_state_usable():
    """As on the host feed: with ``make_train_step(donate=False)`` the state passed to
    ``train_epoch`` stays valid after a device-fed epoch."""
    ds, net, params, rule, optimizer, _ = cases.problem("mlp")
    mesh = parallel.make_mesh(1)
    step = make_train_step(net, rule, optimizer, mesh=mesh)
    state = TrainState.create(net, params, rule, optimizer, mesh)
    result = train_epoch(step, state, ds, batch_size=40, epoch=1, mesh=mesh, feed="device")
    for before, after in zip(_leaves(state.params), _leaves(result.state.params), strict=True):
        assert np.abs(after - before).max() > 0  # readable, and training moved it


def test_auto_feed_follows_the_size_budget(monkeypatch):
    """ "auto": the device while the stored training set fits the budget (by default 2 GiB on
    CPU, which reports no memory limit), the host above it; an explicit "device" for a set
    larger than the device's memory is refused with the fix."""
    ds = cases.fmnist()
    size = device_data.stored_bytes(ds)
    assert size == 600 * 784 + 600 * 4  # uint8 pixels + int32 labels
    assert device_data.choose_feed("auto", ds, budget=size) == "device"
    assert device_data.choose_feed("auto", ds, budget=size - 1) == "host"
    assert device_data.device_memory(None) is None  # CPU
    assert device_data.default_budget(None) == device_data.DEFAULT_BUDGET_BYTES == 2 * 2**30
    assert device_data.choose_feed("host", ds) == "host"
    with pytest.raises(ValueError, match=r"feed='gpu' is invalid: .* \('auto', 'device', 'host'\)"):
        device_data.choose_feed("gpu", ds)

    mesh = parallel.make_mesh(1)
    ds, step, state = _warm_step("mlp", mesh)
    result = train_epoch(step, state, ds, batch_size=40, epoch=2, mesh=mesh)
    assert result.feed == "device"
    monkeypatch.setattr(device_data, "DEFAULT_BUDGET_BYTES", size - 1)
    result = train_epoch(step, result.state, ds, batch_size=40, epoch=3, mesh=mesh)
    assert result.feed == "host"
    monkeypatch.setattr(device_data, "device_memory", lambda mesh: 100_000)
    with pytest.raises(DataError, match=r"takes 0\.5 MB .* than the 0\.1 MB .* use --feed host"):
        device_data.choose_feed("device", ds)


def test_feed_setting_in_config_and_command_line():
    assert TrainConfig().feed == "auto"
    with pytest.raises(ValueError, match=r"TrainConfig\.feed='gpu' is invalid: feed must be one"):
        TrainConfig(feed="gpu")
    old = TrainConfig().to_dict()
    del old["feed"]  # a config.json written before the setting existed
    assert TrainConfig.from_dict(old).feed == "auto"
    assert TrainConfig.from_dict(TrainConfig(feed="host").to_dict()).feed == "host"
    args = cli._parser().parse_args(["train", "--feed", "device"])
    assert cli.config_from_args(args).feed == "device"
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["train", "--feed", "gpu"])
