"""Oracles for what the other tests left open: multi-pass inference through conv + max-pool in
numpy, best-validation test evaluation, the learning-rate schedule's formula, and augmentation
on 4 devices. Every expectation comes from the math, numpy, or JAX / optax driven directly."""

from __future__ import annotations

import csv
import math
import pathlib

import _augment_worker as augment_worker
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _workers import run_cpu_worker
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import rules
from dualprop_jax.data import Dataset
from dualprop_jax.data.pipeline import augment_batch
from dualprop_jax.training import steps
from dualprop_jax.training.checkpoints import load_checkpoint
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.steps import TrainState

HERE = pathlib.Path(__file__).parent

# ---------------------------------------------------------------- conv + max-pool in numpy


def _np_conv_same(s, K, b):
    """Stride-1 'SAME' cross-correlation a = K ⋆ s + b of an NHWC batch (K: kh, kw, cin, cout)."""
    n, h, w, _ = s.shape
    kh, kw, _, cout = K.shape
    ph, pw = kh // 2, kw // 2
    padded = np.pad(s, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    out = np.zeros((n, h, w, cout)) + b
    for di in range(kh):
        for dj in range(kw):
            out += padded[:, di : di + h, dj : dj + w, :] @ K[di, dj]
    return out


def _np_conv_same_transpose(d, K):
    """Adjoint of :func:`_np_conv_same` in s: every tap scatters d back to where it read."""
    n, h, w, _ = d.shape
    kh, kw, cin, _ = K.shape
    ph, pw = kh // 2, kw // 2
    padded = np.zeros((n, h + kh - 1, w + kw - 1, cin))
    for di in range(kh):
        for dj in range(kw):
            padded[:, di : di + h, dj : dj + w, :] += d @ K[di, dj].T
    return padded[:, ph : ph + h, pw : pw + w, :]


def _np_windows(s):
    """The 2x2/2 pooling windows of an NHWC batch: (n, h/2, w/2, c, 4), row-major in the window."""
    n, h, w, c = s.shape
    win = s.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return win.reshape(n, h // 2, w // 2, c, 4)


def _np_pool(s):
    return _np_windows(s).max(-1)


def _np_pool_transpose(s, c):
    """vjp of the max-pool at s: each window's cotangent goes to its (first) maximum."""
    n, h, w, ch = s.shape
    arg = _np_windows(s).argmax(-1)
    routed = (np.arange(4) == arg[..., None]) * c[..., None]
    return routed.reshape(n, h // 2, w // 2, ch, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(s.shape)


def _np_map(m, s):
    """a = W(s): optional 2x2 max-pool of the input, optional flatten, then conv or dense."""
    if m["pool"]:
        s = _np_pool(s)
    if m["flatten"]:
        s = s.reshape(len(s), -1)
    return _np_conv_same(s, m["K"], m["b"]) if m["conv"] else s @ m["K"] + m["b"]


def _np_map_transpose(m, s, d):
    """J(s)ᵀ d for the map m linearised at its input s (only the max-pool depends on s)."""
    g = _np_conv_same_transpose(d, m["K"]) if m["conv"] else d @ m["K"].T
    if not m["pool"]:
        return g.reshape(s.shape)
    n, h, w, c = s.shape
    return _np_pool_transpose(s, g.reshape(n, h // 2, w // 2, c))


def _np_dyads(maps, x, t, variant, alpha, beta, passes, schedule, linearise_at="mean"):
    """The dyad table of docs/method.md for a ReLU net with softmax CE, written out in numpy.

    Forward pass; output nudge; one top-down sweep at the forward activities; then ``passes``
    passes of ``schedule`` that re-solve each layer k from s̄_{k-1} (bottom-up input) and
    δ_{k+1} (feedback J_kᵀ δ_{k+1} taken at s̄_k, or at s⁺_k with ``linearise_at="plus"``).
    """
    L = len(maps)
    c_plus, c_minus = (alpha, 1 - alpha) if variant == "dp" else (1 - alpha, alpha)
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731

    def softmax(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def output(a):
        # DP nudges by g at the current output; DP⊤ by g at the forward prediction ŷ
        g = softmax(a) - t if variant == "dp" else g_hat
        return a - c_plus * beta * g, a + c_minus * beta * g

    def hidden(a, fb):
        return relu(a + c_plus * fb), relu(a - c_minus * fb)

    s, a = [x], [None]
    for k in range(L):
        a.append(_np_map(maps[k], s[k]))
        s.append(a[-1] if k == L - 1 else relu(a[-1]))
    g_hat = softmax(a[L]) - t
    sp, sm = list(s), list(s)
    sp[L], sm[L] = output(a[L])
    for k in range(L - 1, 0, -1):
        sp[k], sm[k] = hidden(a[k], _np_map_transpose(maps[k], s[k], sp[k + 1] - sm[k + 1]))

    def solve(k):
        a_k = _np_map(maps[k - 1], alpha * sp[k - 1] + (1 - alpha) * sm[k - 1])
        if k == L:
            sp[k], sm[k] = output(a_k)
            return
        at = alpha * sp[k] + (1 - alpha) * sm[k] if linearise_at == "mean" else sp[k]
        sp[k], sm[k] = hidden(a_k, _np_map_transpose(maps[k], at, sp[k + 1] - sm[k + 1]))

    order = [*range(1, L + 1)]
    if schedule == "alternating":
        order += [*range(L - 1, 0, -1)]
    for _ in range(passes):
        for k in order:
            solve(k)
    return sp, sm


@pytest.fixture(scope="module")
def conv_pool_problem():
    """conv 2→3 (8x8) | pool, conv 3→2 (4x4) | pool, flatten, dense 8→4, ReLU, float64.

    The max-pool sits at the input of the map that follows it, so the feedback into both
    hidden layers passes a pool routing that depends on the linearisation point (into layer 1
    after a transposed convolution). Parameters: He-scaled normals drawn by numpy, in the
    model's parameter tree (the model itself is built abstractly, which is much cheaper).
    """
    with jax.enable_x64(True):
        model = nnx.eval_shape(
            lambda: dp.cnn(
                (8, 8, 2),
                channels=(3, 2),
                dense=(),
                num_classes=4,
                rngs=nnx.Rngs(0),
                param_dtype=jnp.float64,
            )
        )
    net, shapes = dp.split(model)
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['bias']"):
            return 0.1 * rng.normal(size=leaf.shape)
        return rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    layer = lambda k: params["layers"][k]  # noqa: E731
    kinds = [(True, False, False), (True, True, False), (False, True, True)]
    maps = [
        dict(conv=conv, pool=pool, flatten=flat, K=layer(k)["kernel"], b=layer(k)["bias"])
        for k, (conv, pool, flat) in enumerate(kinds)
    ]
    x = rng.normal(size=(6, 8, 8, 2))
    y = rng.integers(0, 4, size=6)
    return net, params, maps, x, y


def test_numpy_conv_pool_network_is_the_model(conv_pool_problem):
    """The numpy maps reproduce the model's forward pass (so the oracle below is its network)."""
    net, params, maps, x, _ = conv_pool_problem
    s = x
    for k, m in enumerate(maps):
        s = _np_map(m, s)
        s = s if k == len(maps) - 1 else np.maximum(s, 0.0)
    with jax.enable_x64(True):
        got = jax.jit(net.forward)(params, jnp.asarray(x))
    np.testing.assert_allclose(got, s, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["dp", "dp_top"])
@pytest.mark.parametrize("schedule", ["alternating", "bottom_up"])
@pytest.mark.parametrize("passes", [1, 3])
def test_multi_pass_dyads_of_conv_pool_net_equal_numpy_closed_form(
    conv_pool_problem, variant, schedule, passes
):
    """infer_dyads = the numpy dyad table, with the feedback of the multi-pass loop taken at s̄.

    α = 0.25 and β = 1 put s̄ far from s⁺, so the max-pool routes differently at the two points:
    the test asserts that linearising at s⁺ would change the dyads by > 1e-3 (its power against
    that bug), and that the library matches the s̄ oracle to 1e-12.
    """
    net, params, maps, x, y = conv_pool_problem
    alpha, beta = 0.25, 1.0
    t = np.eye(4)[y]
    want = _np_dyads(maps, x, t, variant, alpha, beta, passes, schedule)
    wrong = _np_dyads(maps, x, t, variant, alpha, beta, passes, schedule, linearise_at="plus")
    power = max(
        np.abs(w - v).max()
        for states, others in zip(want, wrong, strict=True)  # s+, then s-
        for w, v in zip(states, others, strict=True)
    )
    assert power > 1e-3, f"the linearisation point does not matter in this problem ({power})"
    rule = rules.dual_prop(
        variant=variant,
        alpha=alpha,
        beta=beta,
        passes=passes,
        schedule=schedule,
        dtype="float64",
    )
    with jax.enable_x64(True):
        dyads = dp.infer_dyads(net, params, jnp.asarray(x), jnp.asarray(y), rule)
    for k in range(len(maps) + 1):
        for got, ref, name in ((dyads.s_plus, want[0], "s+"), (dyads.s_minus, want[1], "s-")):
            np.testing.assert_allclose(
                got[k], ref[k], rtol=1e-12, atol=1e-12, err_msg=f"{name} of layer {k}"
            )


# ---------------------------------------------------------------- best-validation parameters


def _generated_dataset(seed: int) -> Dataset:
    """3 noisy linear classes in 8 dimensions: 64 train, 40 validation, 60 test examples."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 3))

    def split(n):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        y = np.argmax(x @ w + rng.standard_normal((n, 3)), -1).astype(np.int32)
        return x, y

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split(64), split(40), split(60)
    return Dataset(
        name="toy",
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        num_classes=3,
        augment=False,
        source="generated",
    )


def test_test_accuracy_is_that_of_the_best_validation_epoch_not_the_last(tmp_path):
    """3 epochs of SGD at a high rate; validation accuracy peaks at epoch 2 (checked from
    metrics.csv). Checkpoints keep the last 2 epochs, so epoch 2's own parameters are on disk:
    the reported test accuracy is theirs (dp.evaluate), and differs from the last epoch's."""
    ds = _generated_dataset(3)
    cfg = TrainConfig(
        model="mlp",
        widths=(16,),
        rule=rules.dual_prop(beta=0.1),
        optimizer="sgd",
        momentum=0.9,
        learning_rate=0.5,
        batch_size=16,
        epochs=3,
        seed=3,
    )
    workdir = tmp_path / "run"
    results = dp.train_and_evaluate(cfg, workdir, dataset=ds)

    with (workdir / "metrics.csv").open() as fh:
        val = [float(row["val_accuracy"]) for row in csv.DictReader(fh)]
    best = int(np.argmax(val)) + 1
    # the construction: a unique peak at epoch 2 of 3 (its checkpoint is still kept)
    assert len(val) == 3 and best == 2 and val.count(max(val)) == 1, val
    assert results["best_epoch"] == best
    assert results["best_val_accuracy"] == max(val)

    net, at_best, _ = load_checkpoint(workdir, epoch=best)
    _, at_last, _ = load_checkpoint(workdir)
    best_params, last_params = at_best["params"], at_last["params"]
    # epoch 2's parameters reproduce epoch 2's validation accuracy of metrics.csv
    rule = cfg.rule
    assert dp.evaluate(net, best_params, ds, rule, split="val")["accuracy"] == val[best - 1]
    test_best = dp.evaluate(net, best_params, ds, rule, split="test")["accuracy"]
    test_last = dp.evaluate(net, last_params, ds, rule, split="test")["accuracy"]
    assert test_best != test_last, "the construction needs epochs 2 and 3 to differ on test"
    assert results["test_accuracy"] == test_best
    for got, want in zip(
        jax.tree.leaves(at_last["best_params"]), jax.tree.leaves(best_params), strict=True
    ):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- learning-rate schedule


def _closed_form_lr(t: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up 0 → peak over ``warmup`` steps, then cosine decay to 0 at ``total``
    (the decay spans total - warmup steps: optax's decay_steps counts the warm-up)."""
    if t < warmup:
        return peak * t / warmup
    if t >= total:
        return 0.0
    return peak * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


def _learning_rates(optimizer, num_steps: int) -> np.ndarray:
    """-update at steps 0..num_steps-1 for the gradient 1 (params 0): the learning rate η_t."""
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.ones(3)}
    state = optimizer.init(params)
    lrs = []
    for _ in range(num_steps):
        updates, state = optimizer.update(grads, state, params)
        u = np.asarray(updates["w"])
        assert np.all(u == u[0])
        lrs.append(-float(u[0]))
    return np.asarray(lrs)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cosine_schedule_follows_its_formula_with_warmup(optimizer):
    """SGD (momentum 0, no weight decay): update = -η_t g, so g = 1 reads η_t. Adam with a
    constant gradient: m̂ = v̂ = 1, update = -η_t / (1 + ε). 4 epochs of 5 steps, warm-up
    1.2 epochs = 6 steps, peak 0.3: η_0 = 0, η_6 = peak, η_20 = 0."""
    spe, epochs, peak = 5, 4, 0.3
    warmup, total = 6, 20
    cfg = TrainConfig(
        optimizer=optimizer,
        momentum=0.0,
        weight_decay=0.0,
        lr_schedule="cosine",
        warmup_epochs=1.2,
        epochs=epochs,
        learning_rate=peak,
    )
    got = _learning_rates(steps.make_optimizer(cfg, spe), total + 3)
    want = np.asarray([_closed_form_lr(t, peak, warmup, total) for t in range(total + 3)])
    if optimizer == "adam":
        want = want / (1 + 1e-8)
    rtol = 1e-6 if optimizer == "sgd" else 2e-5  # float32 bias corrections in Adam
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-7)
    # the landmarks, spelled out: from 0, the peak after warm-up, half-way, 0 at the end
    landmarks = [0, 3, warmup, 13, total, total + 2]
    np.testing.assert_allclose(
        got[landmarks], [0, peak / 2, peak, peak / 2, 0, 0], rtol=rtol, atol=1e-7
    )


def test_constant_schedule_is_constant():
    cfg = TrainConfig(optimizer="sgd", momentum=0.0, learning_rate=0.07, epochs=2)
    np.testing.assert_allclose(_learning_rates(steps.make_optimizer(cfg, 3), 8), 0.07, rtol=1e-7)
    assert isinstance(steps.make_optimizer(cfg, 3), optax.GradientTransformation)


# ---------------------------------------------------------------- augmentation on 4 devices


SEED = 5
_augment = jax.jit(augment_batch)  # the one-device oracle (compiled: quicker than eager)


@pytest.fixture(scope="module")
def four_device_augment(tmp_path_factory):
    """What ``_augment_worker.py`` saves from a process with 4 CPU devices, seed ``SEED``."""
    out = tmp_path_factory.mktemp("augment") / "augment.npz"
    return run_cpu_worker("_augment_worker.py", out, str(SEED))


def test_augmentation_differs_per_device_and_equals_the_one_device_batch(four_device_augment):
    """All 4 shards hold the same images, yet each device's crops and flips differ: the global
    batch is augmented as one batch, exactly as augment_batch does it on one device."""
    got = four_device_augment
    x = got["x"]
    shards = [got[f"shard/{i}"] for i in range(4)]
    for i in range(1, 4):  # the premise: identical inputs on every device
        np.testing.assert_array_equal(x[2 * i : 2 * i + 2], x[:2])
    for i in range(4):
        np.testing.assert_array_equal(shards[i], got["sharded"][2 * i : 2 * i + 2])
        for j in range(i):
            assert not np.array_equal(shards[i], shards[j]), (i, j)
    # oracle: the one-device augmentation of the global batch, in the worker and in this process
    np.testing.assert_array_equal(got["sharded"], got["one_device"])
    np.testing.assert_array_equal(got["sharded"], _augment(jax.random.key(SEED), x))


def test_augmentation_is_deterministic_given_its_key(four_device_augment):
    """Same key: the same bits, in the worker twice and in this process (another process, one
    device: previous test). Another key: other crops and flips, again as on one device."""
    got = four_device_augment
    np.testing.assert_array_equal(got["sharded_again"], got["sharded"])
    assert not np.array_equal(got["other_key"], got["sharded"])
    np.testing.assert_array_equal(got["other_key"], _augment(jax.random.key(SEED + 1), got["x"]))
    steps_done = [name for name in got if name.startswith("step/")]
    assert steps_done
    for name in steps_done:
        np.testing.assert_array_equal(got[name.replace("step/", "step_again/")], got[name])


def test_four_device_augmenting_step_equals_one_device_step_on_the_augmented_batch(
    four_device_augment,
):
    """Oracle: one step on one device, no augmentation inside, fed augment_batch(key, x)."""
    got = four_device_augment
    net, params, rule, optimizer, x, y = augment_worker.problem()
    np.testing.assert_array_equal(got["x"], x)
    x, y = jnp.asarray(x), jnp.asarray(y)
    step = dp.make_train_step(net, rule, optimizer)
    start = TrainState.create(net, params, rule, optimizer)
    state, _ = step(start, _augment(jax.random.key(SEED), x), y)
    # and the step on the un-augmented batch is different: augmentation changed the update
    plain, _ = step(start, x, y)
    for path, want in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        name = f"step/{jax.tree_util.keystr(path)}"
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    moved = [
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params), strict=True)
    ]
    assert max(moved) > 1e-3, moved
