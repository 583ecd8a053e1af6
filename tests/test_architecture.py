"""The shape of the library: one compiled program per static rule structure, a core that never
imports the harness, and modules and functions small enough to read."""

import ast
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import dualprop_jax as dp
from dualprop_jax.training.steps import TrainState, make_train_step

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "dualprop_jax"
HARNESS = ("dualprop_jax.training", "dualprop_jax.data", "dualprop_jax.cli")
CORE_DIRS = ("core", "rules", "models")
CORE_FILES = ("losses.py", "errors.py")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


# ------------------------------------------------------------------ 1. trace once per structure


def _counting(optimizer: optax.GradientTransformation, traces: list):
    """``optimizer`` whose ``update`` notes each call: inside a jitted step, one per trace."""

    def update(grads, state, params=None):
        traces.append(1)
        return optimizer.update(grads, state, params)

    return optax.GradientTransformation(optimizer.init, update)


def _batch(n_in=12, n_out=3, batch=8):
    x = jax.random.normal(jax.random.key(1), (batch, n_in))
    return x, jnp.arange(batch) % n_out


def test_train_step_traces_once_for_five_betas_and_three_alphas():
    net, params = dp.split(dp.mlp((12, 16, 16, 3), rngs=nnx.Rngs(0)))
    x, y = _batch()
    traces = []
    opt = _counting(optax.adam(1e-3), traces)
    rule = dp.rules.dual_prop("dp_top", alpha=0.5, beta=0.01)
    step = make_train_step(net, rule, opt)
    state = TrainState.create(net, params, rule, opt)
    for beta in (0.01, 0.02, 0.05, 0.1, 0.2):
        state, _ = step(state, x, y, rule=rule.replace(beta=beta))
    for alpha in (0.0, 0.25, 1.0):
        state, _ = step(state, x, y, rule=rule.replace(alpha=alpha))
    assert len(traces) == 1
    assert step.jitted._cache_size() == 1

    # another static field is another program: exactly one more trace, then none
    state, _ = step(state, x, y, rule=rule.replace(passes=1))
    state, _ = step(state, x, y, rule=rule.replace(passes=1, beta=0.3, alpha=0.75))
    assert len(traces) == 2
    assert step.jitted._cache_size() == 2

    # the values travel as arguments: the shared program gives what a step made for that rule
    # gives (a program that baked in the first rule's β would not)
    other = rule.replace(beta=0.2, alpha=0.25)
    reference = make_train_step(net, other, optax.adam(1e-3))(state, x, y)[0]
    chex.assert_trees_all_close(step(state, x, y, rule=other)[0], reference, rtol=1e-6, atol=0)
    baseline = step(state, x, y, rule=rule)[0]
    assert any(
        bool(jnp.any(a != b))
        for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(baseline), strict=True)
    )
    assert len(traces) == 2 and step.jitted._cache_size() == 2


def _max_abs_difference(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in pairs)


def test_jitted_rule_grad_traces_once_per_static_structure():
    net, params = dp.split(dp.mlp((12, 16, 16, 3), rngs=nnx.Rngs(0)))
    x, y = _batch()
    traces = []

    def grad(rule, p, s, x, y):
        traces.append(1)
        return rule.grad(net, p, s, x, y)

    jitted = jax.jit(grad)
    rule = dp.rules.dual_prop("dp_top", alpha=0.5, beta=0.5)
    betas = [rule.replace(beta=b) for b in (0.05, 0.1, 0.25, 0.5, 1.0)]
    alphas = [rule.replace(alpha=a) for a in (0.0, 0.25, 1.0)]
    eager = {}
    for r in betas + alphas:
        eager[r] = r.grad(net, params, (), x, y)[0]
        # the traced α, β are the rule's: float32 rounding apart, the eager gradient
        chex.assert_trees_all_close(jitted(r, params, (), x, y)[0], eager[r], rtol=1e-5, atol=1e-6)
    assert len(traces) == 1 and jitted._cache_size() == 1
    # ... and the values matter, far beyond that tolerance
    assert _max_abs_difference(eager[betas[0]], eager[betas[-1]]) > 1e-3
    assert _max_abs_difference(eager[alphas[0]], eager[alphas[-1]]) > 1e-3

    jitted(rule.replace(passes=1), params, (), x, y)
    jitted(rule.replace(passes=1, beta=0.3), params, (), x, y)
    assert len(traces) == 2 and jitted._cache_size() == 2


# ------------------------------------------------------------------ 2. the core imports no harness


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(package: str, level: int, module: str | None) -> str:
    """The absolute module of ``from <level dots><module> import ...`` inside ``package``."""
    if not level:
        return module or ""
    base = package.split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module a source may import: ``import a.b``, ``from a import b`` (as ``a`` and
    ``a.b``, since b may be a module), relative imports resolved, imports inside functions,
    and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(package, node.level, node.module)
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    found.append((node.lineno, first.value))
    return found


def _is_harness(name: str) -> bool:
    return any(name == h or name.startswith(h + ".") for h in HARNESS)


def _core_files() -> list[pathlib.Path]:
    files = [p for d in CORE_DIRS for p in sorted((PACKAGE / d).rglob("*.py"))]
    return files + [PACKAGE / f for f in CORE_FILES]


def test_the_import_walker_sees_every_form_of_import():
    source = (
        "import dualprop_jax.cli.train\n"
        "from dualprop_jax import data\n"
        "def f():\n"
        "    from ..training import steps\n"
        "    from .. import cli\n"
        "    import importlib\n"
        "    return importlib.import_module('dualprop_jax.training.train')\n"
        "from . import nodes\n"
        "from .states import wide\n"
    )
    names = [n for _, n in imported_modules(source, "dualprop_jax.core.forward", False)]
    harness = sorted({n for n in names if _is_harness(n)})
    assert harness == [
        "dualprop_jax.cli",
        "dualprop_jax.cli.train",
        "dualprop_jax.data",
        "dualprop_jax.training",
        "dualprop_jax.training.steps",
        "dualprop_jax.training.train",
    ]
    assert "dualprop_jax.core.nodes" in names and "dualprop_jax.core.states.wide" in names
    # in a package's __init__, one dot is the package itself
    pkg = imported_modules("from .backprop import bp_grad", "dualprop_jax.core", True)
    assert pkg[0][1] == "dualprop_jax.core.backprop"
    assert not _is_harness("dualprop_jax.database") and not _is_harness("dualprop_jax.core")


def test_core_rules_models_and_losses_import_nothing_from_the_harness():
    files = _core_files()
    assert len(files) >= 20 and all(p.exists() for p in files), files
    offenders = []
    for path in files:
        module = _module_name(path)
        for line, name in imported_modules(path.read_text(), module, path.name == "__init__.py"):
            if _is_harness(name):
                offenders.append(f"{path.relative_to(SRC)}:{line} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_import_dualprop_jax_loads_no_harness_and_no_heavy_dependency():
    code = (
        "import sys\n"
        "import dualprop_jax as dp\n"
        "print(' '.join(sorted(sys.modules)))\n"
        "dp.make_train_step\n"  # the notebook entry point loads the harness on first use
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True
    )
    before, after = (line.split() for line in out.stdout.splitlines())

    def unwanted(modules):
        heavy = ("orbax", "matplotlib", "tqdm")
        harness = ("dualprop_jax.training", "dualprop_jax.data")
        return sorted(
            m
            for m in modules
            if m.split(".")[0] in heavy or any(m == h or m.startswith(h + ".") for h in harness)
        )

    assert "dualprop_jax.core" in before and "dualprop_jax.rules" in before
    assert unwanted(before) == [], unwanted(before)
    assert "dualprop_jax.training.steps" in unwanted(after)  # the check sees a loaded harness


# ------------------------------------------------------------------ 3. size limits


def test_no_module_is_longer_than_500_lines():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 30
    long = {
        str(p.relative_to(SRC)): n
        for p in files
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """``(name, first line, lines)`` of every function and method, nested ones included."""
    return [
        (node.name, node.lineno, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_no_function_is_longer_than_60_lines():
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    inner = body.replace("    x", "            x")
    nested = "class A:\n    def m(self):\n        def inner():\n" + inner
    assert ("inner", 3, 60) in function_lengths(nested)
    assert ("m", 2, 61) in function_lengths(nested)
    assert ("g", 1, 61) in function_lengths(f"async def g():\n{body}    return 1\n")

    long = [
        f"{p.relative_to(SRC)}:{line} {name} ({n} lines)"
        for p in sorted(SRC.rglob("*.py"))
        for name, line, n in function_lengths(p.read_text())
        if n > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
