"""README.md's library section runs as written: every ```python block, in order, in one fresh
interpreter, so the README cannot drift from the code."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_python_blocks_are_found():
    blocks = python_blocks("x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a\n```\n")
    assert blocks == ["a = 1\n", "b = a\n"]


def test_readme_python_blocks_run_top_to_bottom(tmp_path):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5, "the README's library section lost its examples"
    script = tmp_path / "readme.py"
    script.write_text("\n".join(f"# --- block {i}\n{b}" for i, b in enumerate(blocks)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout
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
