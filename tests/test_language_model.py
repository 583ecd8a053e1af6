"""The byte-level language model: labels at every position, the fortunes corpus, and training
and evaluation that score every position.

Oracles: optax's integer-label cross-entropy summed over positions and averaged over the batch,
differentiated by raw ``jax.grad``; argmax counts written out with numpy; the windows and the
document split written out from their definitions; a generated corpus directory; Debian's
fortunes files read directly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dualprop_jax import models, rules
from dualprop_jax.data import text
from dualprop_jax.errors import DataError
from dualprop_jax.losses import labels_per_example
from dualprop_jax.training import loop, steps


def _lm(length=5, vocab=11, seed=0):
    module = models.causal_lm(length, vocab, width=8, depth=1, heads=2, mlp_ratio=2,
                              rngs=nnx.Rngs(seed))  # fmt: skip
    return models.split(module)


def _ids(batch, length, vocab, seed=1):
    ids = jax.random.randint(jax.random.key(seed), (batch, length + 1), 0, vocab)
    return ids[:, :-1], ids[:, 1:]


def test_bp_differentiates_the_positions_summed_and_the_batch_averaged():
    """Oracle: L(θ) = (1/B) Σ_b Σ_t CE(ŷ_bt, y_bt) with optax's integer-label cross-entropy,
    and jax.grad of it, in float64. The rule's loss and gradient equal them to 1e-10 of the
    gradient's scale (a mean over positions instead of the sum is off by T = 5; a mean over
    B·T by the same; attention's softmax left in float32 is off by 4e-8)."""
    net, params = _lm()
    x, y = _ids(4, 5, 11)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)

        def loss(p):
            logits = net.forward(p, x, jnp.float64)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum(-1).mean()

        want_loss, want = jax.value_and_grad(loss)(p64)
        got, aux, _ = rules.backprop(dtype="float64").grad(net, p64, (), x, y)
        assert aux.logits.shape == (4, 5, 11)
        np.testing.assert_allclose(float(aux.loss), float(want_loss), rtol=1e-12)
        scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-10 * scale)


def test_labels_that_miss_the_outputs_positions_are_refused_by_name():
    net, params = _lm()
    x, y = _ids(4, 5, 11)
    with pytest.raises(ValueError, match=r"shape \(batch, \*positions\) = \(4, 5\)"):
        rules.backprop().grad(net, params, (), x, y[:, :3])
    bad = np.asarray(y).copy()
    bad[1, 3] = 300
    with pytest.raises(ValueError, match=r"300 at index \(1, 3\)"):
        steps.check_labels(bad, 11)
    rule, optimizer = rules.backprop(), optax.sgd(0.1)
    step = steps.make_train_step(net, rule, optimizer)
    with pytest.raises(ValueError, match=r"300 at index \(1, 3\)"):
        step(steps.TrainState.create(net, params, rule, optimizer), np.asarray(x), bad)
    assert labels_per_example(y) == 5 and labels_per_example(jnp.zeros((4, 5, 11))) == 5
    assert labels_per_example(jnp.zeros(4, jnp.int32)) == 1


@pytest.mark.parametrize("feed", ["host", "device"])
def test_evaluation_scores_every_position_of_every_window(feed):
    """Oracle: numpy. 10 windows in batches of 4 (the last one partial): the loss is the mean
    over windows of the positions' summed cross-entropy, the accuracy the fraction of all
    10 x 5 positions whose argmax is the next id."""
    net, params = _lm()
    x, y = _ids(10, 5, 11, seed=3)
    logits = np.asarray(net.forward(params, x), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, np.asarray(y)[..., None], -1)[..., 0]
    got = steps.evaluate(
        net, params, (np.asarray(x), np.asarray(y)), rules.backprop(), batch_size=4, feed=feed
    )
    assert got["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == np.asarray(y)), abs=1e-9)
    assert got["loss"] == pytest.approx(ce.sum(-1).mean(), rel=1e-5)


def test_an_epoch_reports_accuracy_per_position_on_either_feed():
    """Oracle: a replay. The same batches (``epoch_order``) stepped by hand from the same state,
    each batch's predictions counted with the parameters it was trained from; the epoch's
    accuracy is that count over steps x batch x positions, on the host and the device feed."""
    ds = text.text_dataset([bytes(range(32, 120)) * 3] * 40, length=6)
    net, params = _lm(length=6, vocab=256)
    rule, optimizer = rules.backprop(), optax.sgd(0.05)
    step = steps.make_train_step(net, rule, optimizer)
    order = loop.epoch_order(len(ds.x_train), 8, 0, 1)
    state, hits = steps.TrainState.create(net, params, rule, optimizer), 0
    for idx in order:
        x, y = ds.x_train[idx], ds.y_train[idx]
        hits += int(np.sum(np.asarray(net.forward(state.params, x)).argmax(-1) == y))
        state = step(state, x, y)[0]
    want = hits / (len(order) * 8 * 6)
    for feed in ("host", "device"):
        start = steps.TrainState.create(net, params, rule, optimizer)
        result = loop.train_epoch(step, start, ds, batch_size=8, epoch=1, feed=feed)
        assert result.feed == feed and result.accuracy == pytest.approx(want, abs=1e-12)


def test_windows_cover_each_byte_once_as_a_target():
    """x = w[:-1], y = w[1:] for windows of L + 1 starting every L bytes: y read in order is
    the stream from its second byte up to the last whole window; consecutive windows share
    their boundary byte."""
    stream = (np.arange(23) * 7 % 256).astype(np.uint8)
    x, y = text.windows(stream, 4)
    n = (23 - 1) // 4
    assert x.shape == y.shape == (n, 4) and x.dtype == np.int32
    np.testing.assert_array_equal(y.reshape(-1), stream[1 : n * 4 + 1])
    np.testing.assert_array_equal(x.reshape(-1), stream[: n * 4])
    np.testing.assert_array_equal(x[1:, 0], y[:-1, -1])
    assert text.windows(stream[:4], 4)[0].shape == (0, 4)  # too short for a window: none
    with pytest.raises(DataError, match="shorter length"):
        text.text_dataset([bytes(3)] * 10, 100)


def test_documents_are_read_split_and_joined_as_the_files_hold_them(tmp_path):
    """A generated corpus directory: fortunes separated by ``%`` lines, a .dat index and a
    .u8 link (both skipped); document i to test when i ≡ 9 (mod 10), validation when ≡ 8."""
    (tmp_path / "a").write_bytes(b"first\n%\nsecond\nline\n%\n")
    (tmp_path / "b").write_bytes(b"%\nthird\n%\n\n%\nfourth")
    (tmp_path / "a.dat").write_bytes(bytes(range(40)))
    (tmp_path / "a.u8").symlink_to(tmp_path / "a")
    docs = text.fortune_documents(tmp_path)
    assert docs == [b"first", b"second\nline", b"third", b"fourth"]
    train, val, test = text.split_documents([bytes([i]) for i in range(25)])
    assert [d[0] for d in test] == [9, 19] and [d[0] for d in val] == [8, 18]
    assert len(train) == 21 and all(d[0] % 10 < 8 for d in train)
    assert text.byte_stream([b"ab", b"c"]).tobytes() == b"ab\n%\nc"
    with pytest.raises(DataError, match="apt-get install fortunes"):
        text.fortune_documents(tmp_path / "missing")
    # load_dataset's route: data_dir first (a folder with .dat indices), then Debian's folder
    (tmp_path / "a").write_bytes(b"\n%\n".join(bytes([65 + i % 26]) * 40 for i in range(30)))
    mine = text.fortunes_subset(tmp_path, length=8)
    corpus = set(text.byte_stream(text.fortune_documents(tmp_path)).tolist())
    assert mine.x_train.size < 2000 and set(np.unique(mine.x_train).tolist()) <= corpus
    assert len(text.fortunes_subset(tmp_path / "elsewhere", max_train=5).x_train) == 5


def test_fortunes_from_debian_become_next_byte_windows():
    """Debian's fortunes (installed by scripts/setup.sh): the dataset's splits hold the
    documents the split gives, their bytes in windows of 64; train / val / test bytes in the
    ratio of the 80/10/10 document split (within 5 points: fortunes differ in length)."""
    docs = text.fortune_documents()
    ds = text.fortunes(64)
    train, val, test = text.split_documents(docs)
    for (x, y), part in zip(
        (ds.split("train"), ds.split("val"), ds.split("test")), (train, val, test), strict=True
    ):
        stream = text.byte_stream(part)
        assert len(x) == (len(stream) - 1) // 64
        np.testing.assert_array_equal(y[:3].reshape(-1), stream[1 : 3 * 64 + 1])
    total = sum(len(d) for d in docs)
    assert ds.x_train.size / total == pytest.approx(0.8, abs=0.05)
    assert ds.x_val.size / total == pytest.approx(0.1, abs=0.05)
    assert ds.num_classes == 256 and ds.x_train.max() < 256
    assert text.bits_per_byte(64 * math.log(256), 64) == pytest.approx(8.0)


def test_the_benchmark_batch_of_the_language_model_is_ids_and_next_ids():
    """The bench row ``lm`` times a batch of byte ids (B, 64) with labels the next id at every
    position: y[:, :-1] is x[:, 1:], all in 0..255, and the row's network reads them."""
    from dualprop_jax.training.bench_setup import MODELS, random_batch

    spec = MODELS["lm"]
    x, y = random_batch(spec, 4, 0)
    assert x.shape == y.shape == (4, 64) and x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    assert 0 <= x.min() and max(x.max(), y.max()) < 256
    net, params = models.split(spec.build(nnx.Rngs(0)))
    assert net.forward(params, jnp.asarray(x)).shape == (4, 64, 256)


def test_the_cli_trains_the_language_model_on_fortunes(tmp_path, capsys):
    """``dualprop train --dataset fortunes --model lm``. Oracle: the tested parameters, put back
    into the module and applied here to the first 64 test windows, give the reported next-byte
    accuracy and bits per position (numpy cross-entropy summed over positions / (64 ln 2)),
    and the printed summary says the same bits."""
    import json

    from dualprop_jax import cli
    from dualprop_jax.training import checkpoints

    w = tmp_path / "lm"
    args = ["train", "--dataset", "fortunes", "--model", "lm", "--rule", "dp_top", "--epochs",
            "1", "--max-train", "128", "--max-eval", "64", "--batch-size", "32", "--workdir",
            str(w)]  # fmt: skip
    assert cli.main(args) == 0
    results = json.loads((w / "results.json").read_text())
    net, state, _ = checkpoints.load_checkpoint(w)
    x, y = text.fortunes(64).split("test")
    logits = np.asarray(models.merge(net, state["best_params"])(jnp.asarray(x[:64])), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    ce = -np.take_along_axis(logp, y[:64, :, None], -1)[..., 0]
    bits = ce.sum(-1).mean() / (64 * math.log(2))
    assert results["num_train"] == 128 and results["num_test"] == 64
    assert results["test_bits_per_position"] == pytest.approx(bits, rel=1e-5)
    assert results["test_accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == y[:64]))
    assert f"{bits:.3f} bits per position" in capsys.readouterr().out
