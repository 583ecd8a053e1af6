"""The paper setups in experiments/configs/ are valid and start training on tiny generated data."""

import json
import pathlib

import numpy as np
import pytest

from dualprop_jax import rules
from dualprop_jax.training import checkpoints, train
from dualprop_jax.training import config as train_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"
VGG_SETUPS = {"cifar10_vgg16": 10, "cifar100_vgg16": 100, "imagenet32_vgg16": 1000}
FLAT_RULE_KEYS = {"algo", "alpha", "beta", "loss", "passes", "schedule", "dtype", "fast"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.stem)
def test_every_config_file_is_a_valid_train_config(path):
    values = json.loads(path.read_text())
    cfg = train_config.TrainConfig.from_dict(values)
    assert cfg.rule.name in rules.NAMES
    # the rule is one field, not the flat fields (algo, alpha, beta, ...) of older configs
    assert isinstance(values["rule"], dict) and values["rule"]["name"] == cfg.rule.name
    assert not set(values) & FLAT_RULE_KEYS


def _start_on_generated_data(setup, classes, tmp_path):
    """Train ``setup`` for one epoch of 2 steps on generated CIFAR-shaped uint8 images."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(
        npz,
        x_train=rng.integers(0, 256, (classes, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(classes),  # every class once: C classes, C outputs
        x_test=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(4) % classes,
    )
    values = json.loads((CONFIGS / f"{setup}.json").read_text())
    # keep the paper's model, optimizer, schedule and augmentation; shrink only the data and time
    values.update(
        dataset=str(npz),
        batch_size=4,
        eval_batch_size=4,
        epochs=1,
        warmup_epochs=0,
        val_fraction=0.0,
        max_train=8,  # 8 of them train: 2 steps
    )
    cfg = train_config.TrainConfig.from_dict(values)
    assert cfg.augment
    results = train.train_and_evaluate(cfg, tmp_path / "run")
    assert results["epochs"] == 1 and 0.0 <= results["test_accuracy"] <= 1.0
    assert np.isfinite(results["test_loss"])
    return cfg, checkpoints.load_checkpoint(tmp_path / "run")[1]


@pytest.mark.parametrize("setup", sorted(VGG_SETUPS))
def test_vgg16_paper_setup_starts_on_generated_cifar_shaped_data(setup, tmp_path):
    classes = VGG_SETUPS[setup]
    cfg, state = _start_on_generated_data(setup, classes, tmp_path)
    assert cfg.model == "vgg16"
    assert state["params"]["layers"][15]["kernel"].shape == (4096, classes)


def test_resnet18_cifar10_setup_starts_on_generated_cifar_shaped_data(tmp_path):
    """ResNet-18 (a graph: stem, 8 basic blocks, 3 projection skips, 5 identity skips) with
    DP⊤ and the VGG16 setup's optimizer, schedule and augmentation."""
    cfg, state = _start_on_generated_data("cifar10_resnet18", 10, tmp_path)
    assert cfg.model == "resnet18" and cfg.rule.name == "dp_top"
    layers = state["params"]["layers"]
    assert len(layers) == 1 + 8 * 2 + 3 + 1  # stem, two convs per block, projections, head
    assert layers[max(layers)]["kernel"].shape == (4 * 4 * 512, 10)
