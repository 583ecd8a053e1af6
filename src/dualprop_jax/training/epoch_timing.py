"""Whole-epoch timing: one training epoch per rule and feed, against the cost of its steps.

:func:`time_epoch` times whole training epochs with the training loop itself,
:func:`dualprop_jax.training.loop.train_epoch`,
fed from the host and from the device (CIFAR-10-shaped
random data: 45k images 32x32x3, batch 100, random crop + flip; or a real dataset such as
Fashion-MNIST), and relates each epoch to the cost of its steps. The command is
``dualprop bench --epoch``; this module measures and returns plain dicts, and prints nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dualprop_jax import models
from dualprop_jax.data import Dataset
from dualprop_jax.training.bench_setup import (
    MODELS,
    ModelSpec,
    _init,
    _interleaved,
    random_batch,
    train_config,
)
from dualprop_jax.training.config import FEEDS
from dualprop_jax.training.loop import train_epoch

FMNIST_MLP = ModelSpec(
    lambda rngs: models.mlp((784, 1000, 1000, 10), rngs=rngs),
    (28, 28, 1),
    "MLP 784-1000-1000-10 (the default of dualprop train)",
)
"""The model of :func:`time_epoch` on Fashion-MNIST: ``dualprop train``'s default MLP."""


EPOCH_STEPS = {"mlp": 100, "cnn": 40, "resnet8": 40}
"""Steps of one random-data epoch of ``dualprop bench --epoch-models`` per model (default 20):
a few seconds per epoch on a 2-core CPU."""


def time_epoch(
    *,
    images: int = 45_000,
    batch: int = 100,
    rule_labels: Sequence[str] = ("bp", "dp_top"),
    beta: float = 0.01,
    dtype: str = "float32",
    seed: int = 0,
    repeats: int = 3,
    warmup_epochs: int = 1,
    name: str = "vgg16",
    spec: ModelSpec | None = None,
    dataset: Dataset | None = None,
    feeds: Sequence[str] = ("host", "device"),
    step_samples: int = 30,
) -> list[dict]:
    """Wall time of one training epoch per rule and feed, against the cost of its steps.

    The loop is :func:`dualprop_jax.training.loop.train_epoch`, the one ``train_and_evaluate`` runs,
    with each feed of ``feeds``: ``"host"`` (batches gathered on the host and copied one by
    one), ``"device"`` (the set kept on the device, chunks of steps there) and ``"auto"``
    (the loop's default choice; the row's ``feed_ran`` says which ran). The data is
    ``dataset``'s training split, or CIFAR-10-shaped random images (``images`` of them, for
    ``name``/``spec``, VGG16 by default); image inputs get random crop + flip on the device.
    Each step is compiled and run once before any clock starts; then ``warmup_epochs``
    untimed rounds (the device feed copies the set and compiles its chunk program there) and
    ``repeats`` timed rounds run one epoch of every (rule, feed), interleaved (the first one
    rotating per round). A row reports the median timed epoch, the median of ``step_samples``
    train steps each timed alone on a batch already on the device (``step_ms_median``), and
    ``epoch_over_steps`` = epoch time / (steps × that median): 1 is an epoch at the cost of its
    steps; the host feed pays for gathering and copying batches on top.
    """
    spec = spec or MODELS[name]
    if dataset is None:
        dataset = _random_dataset(spec, images, batch, seed)
    _check_rounds(repeats, warmup_epochs, feeds)
    # crop + flip for images: CIFAR-like data, and the random CIFAR-shaped set
    augment = len(spec.input_shape) == 3 and (dataset.augment or dataset.name == "random")
    x0, y0 = dataset.images("train", np.arange(batch)), np.asarray(dataset.y_train[:batch])
    x0, y0 = jax.device_put(x0), jax.device_put(y0.astype(np.int32))
    key = jax.random.key(seed)
    steps, state, first_s = _first_steps(
        spec, rule_labels, feeds, x0, y0, key, beta=beta, dtype=dtype, seed=seed, augment=augment
    )
    epoch_times, warm_times, ran = _time_epochs(
        steps, state, dataset, batch=batch, seed=seed, warmup_epochs=warmup_epochs, rounds=repeats
    )
    step_ms = _step_medians(steps, state, x0, y0, key, step_samples)
    n_steps = len(dataset.x_train) // batch
    sizes = dict(name=name, n_steps=n_steps, batch=batch, dtype=dtype, repeats=repeats)
    return _epoch_rows(epoch_times, warm_times, first_s, step_ms, ran, **sizes)


def _random_dataset(spec: ModelSpec, images: int, batch: int, seed: int) -> Dataset:
    """``images`` random examples for ``spec`` (:func:`random_batch`) as the training split of
    a Dataset named "random", with empty validation and test splits."""
    if images < batch:
        raise ValueError(f"--epoch-images {images} is smaller than one batch of {batch}.")
    x_host, y_host = random_batch(spec, images, seed)
    empty_x, empty_y = x_host[:0], y_host[:0]
    return Dataset(
        "random", x_host, y_host, empty_x, empty_y, empty_x, empty_y, 10, False, "random"
    )


def _check_rounds(repeats: int, warmup_epochs: int, feeds: Sequence[str]) -> None:
    """At least one timed round, and a warm-up round before the device feed is timed."""
    if repeats < 1 or warmup_epochs < 0:
        raise ValueError(
            f"need repeats >= 1 and warmup_epochs >= 0, got {repeats} and {warmup_epochs}."
        )
    unknown = [f for f in feeds if f not in FEEDS]
    if unknown or not feeds:
        raise ValueError(f"feeds {list(feeds)}: each must be one of {FEEDS}.")
    if {"device", "auto"} & set(feeds) and warmup_epochs < 1:
        raise ValueError(
            "the device feed copies the set and compiles its chunk program in its first epoch: "
            "time it (and 'auto', which may choose it) with warmup_epochs >= 1."
        )


def _first_steps(spec, rule_labels, feeds, x0, y0, key, *, beta, dtype, seed, augment):
    """``(steps, state, first_s)``: one jitted step per rule, and per (rule, feed) a fresh
    state that has taken one step on ``(x0, y0)`` (compilation included) and that step's
    seconds."""
    steps, state, first_s = {}, {}, {}
    for label in rule_labels:
        steps[label], start = _init(spec, train_config(label, 0.5, beta, dtype, 0), seed,
                                    augment=augment)  # fmt: skip
        for feed in feeds:  # one step (one compilation) per rule; a fresh state per feed
            state[label, feed] = jax.tree.map(jnp.copy, start)
            t0 = time.perf_counter()
            state[label, feed], _ = steps[label](state[label, feed], x0, y0, key)
            jax.block_until_ready(state[label, feed])
            first_s[label, feed] = time.perf_counter() - t0
    return steps, state, first_s


def _time_epochs(
    steps: dict, state: dict, dataset: Dataset, *, batch, seed, warmup_epochs, rounds
) -> tuple[dict, dict]:
    """Run ``warmup_epochs`` untimed rounds, then ``rounds`` timed ones, of one epoch of
    every (rule, feed) of ``state``, interleaved; ``state`` is updated in place. Returns the
    timed and the warm-up epoch seconds per (rule, feed), and the feed each ran (what
    ``"auto"`` chose)."""
    epoch_times: dict = {k: [] for k in state}
    warm_times: dict = {k: [] for k in state}
    ran: dict = {}

    def run(entry: tuple[str, str], r: int) -> None:
        label, feed = entry
        result = train_epoch(
            steps[label], state[entry], dataset, batch_size=batch, epoch=r + 1, seed=seed,
            log_every=len(dataset.x_train), feed=feed,
        )  # fmt: skip
        state[entry] = result.state
        ran[entry] = result.feed
        (warm_times if r < warmup_epochs else epoch_times)[entry].append(result.time_s)

    _interleaved(list(state), warmup_epochs + rounds, run)
    return epoch_times, warm_times, ran


def _epoch_rows(
    epoch_times, warm_times, first_s, step_ms, ran, *, name, n_steps, batch, dtype, repeats
) -> list[dict]:
    """One row of :func:`time_epoch` per (rule, feed), with the feed that ran (``"auto"``'s
    choice) and its ratio to BP's epoch on the same feed (None without a BP row)."""
    rows = []
    for (label, feed), times in epoch_times.items():
        epoch_s = statistics.median(times)
        rows.append(
            {
                "model": name,
                "rule": label,
                "feed": feed,
                "feed_ran": ran[label, feed],
                "images": n_steps * batch,
                "batch": batch,
                "steps": n_steps,
                "dtype": dtype,
                "repeats": repeats,
                "epoch_s": epoch_s,
                "epoch_s_all": times,
                "warmup_epoch_s": warm_times[label, feed],
                "images_per_s": n_steps * batch / epoch_s,
                "first_step_s": first_s[label, feed],
                "step_ms_median": step_ms[label],
                "epoch_over_steps": epoch_s / (n_steps * step_ms[label] / 1e3),
            }
        )
    for r in rows:
        bp = next((b["epoch_s"] for b in rows if b["rule"] == "bp" and b["feed"] == r["feed"]), 0)
        r["ratio_to_bp"] = r["epoch_s"] / bp if bp else None
    return rows


def _step_medians(steps: dict, state: dict, x, y, key, samples: int) -> dict[str, float]:
    """Median ms of ``samples`` steps of each rule, each step timed alone (ended by
    ``block_until_ready``) on a batch already on the device, rules interleaved."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    current = {label: next(v for k, v in state.items() if k[0] == label) for label in steps}

    def run(label: str, r: int) -> None:
        t0 = time.perf_counter()
        current[label], metrics = steps[label](current[label], x, y, key)
        jax.block_until_ready((current[label], metrics))
        if r >= 2:
            times[label].append(time.perf_counter() - t0)

    _interleaved(list(steps), 2 + max(samples, 1), run)
    return {label: 1e3 * statistics.median(t) for label, t in times.items()}
