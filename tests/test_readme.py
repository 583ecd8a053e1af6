"""The README's example and the documentation's code run as written: every ```python block, in
order, in one fresh interpreter, so neither can drift from the code. The README's example runs
alone (it is what a new user copies, and what the wheel check runs); the pages of the docs run
as one session, in the order the pages say they continue each other."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The pages whose blocks continue the session of the first one, in that order.
DOC_SESSION = [
    "docs/getting_started.md",
    "docs/howto/data.md",
    "docs/howto/devices.md",
    "docs/howto/rules.md",
    "docs/howto/paper_scale.md",
    "docs/howto/graphs.md",
    "docs/howto/new_rule.md",
]
README_MAX_LINES = 200


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def run_blocks(blocks: list[str], cwd: pathlib.Path) -> str:
    """Run the blocks as one script in a fresh interpreter; their stdout, or the failure."""
    script = cwd / "blocks.py"
    script.write_text("\n".join(f"# --- block {i}\n{b}" for i, b in enumerate(blocks)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_python_blocks_are_found():
    blocks = python_blocks("x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a\n```\n")
    assert blocks == ["a = 1\n", "b = a\n"]


def test_readme_is_short_and_its_links_exist():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10, "the README lost its links into the docs"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_readme_example_runs_alone(tmp_path):
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 1, "the README has one library example"
    out = run_blocks(blocks, tmp_path)
    accuracy = float(re.search(r"'accuracy': ([0-9.]+)", out).group(1))
    assert accuracy > 0.80, out  # 2 epochs of 10.8k Fashion-MNIST images: ~84%
    cosines = [float(c) for c in re.findall(r"': ([0-9.]+)", out.splitlines()[-1])]
    # α = ½: the DP⊤ gradient is BP's up to O(β²) = 1e-4 relative, on every leaf
    assert len(cosines) == 4 and min(cosines) > 0.999, out


def test_doc_pages_run_as_one_session(tmp_path):
    blocks = [b for page in DOC_SESSION for b in python_blocks((ROOT / page).read_text())]
    assert len(blocks) >= 10, "the docs lost their examples"
    out = run_blocks(blocks, tmp_path)
    # what the blocks print, checked against what the math says
    accuracy = float(re.search(r"'accuracy': ([0-9.]+)", out).group(1))
    assert accuracy > 0.80, out  # 3 epochs of 12k Fashion-MNIST images: ~85% and more
    cosines = [float(c) for c in re.findall(r"cosine to BP, first layer: ([0-9.]+)", out)]
    assert len(cosines) == 4 and cosines[-1] > 0.9999, out  # → 1 as β → 0 ...
    assert cosines == sorted(cosines), out  # ... monotonically (error O(β²) at α = ½)
    # the shard_map gradient's norm equals the one-device gradient's (not N times it)
    ratio = float(re.search(r"norm ratio, shard_map / one device: ([0-9.]+)", out).group(1))
    assert abs(ratio - 1.0) < 1e-5, out
    # KP's B_k and W_k are independent draws at the start: nearly orthogonal in 64·64 dims
    angles = [float(a) for a in re.findall(r"'kp_angle/\d': ([0-9.]+)", out)]
    assert len(angles) == 2 and all(80 < a < 100 for a in angles), out
    # He-initialised 64-wide maps: spectral norms > 1, so the damping is active
    gammas = [float(g) for g in re.findall(r"'gamma/\d': ([0-9.]+)", out)]
    assert len(gammas) == 2 and all(g > 1 for g in gammas), out
    # the rule of "Writing a new rule" is 0.5 sign(BP's gradient) exactly, and reads back
    assert float(re.search(r"sign rule vs 0.5 sign\(BP\): ([0-9.e-]+)", out).group(1)) == 0.0
    assert "read back equal: True" in out, out
    # the .npz of "Your own data": 500 training rows, 10% held out, 100 test rows, 2 classes
    assert "my_data (450, 8, 8, 1) (50, 8, 8, 1) (100, 8, 8, 1) 2" in out, out
