"""The example scripts run (tiny settings) and check what they claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_char_transformer_example_runs(tmp_path):
    out = tmp_path / "loss.png"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "train_char_transformer.py"),
            "--steps",
            "6",
            "--ctx",
            "64",
            "--batch",
            "2",
            "--layers",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "speedup (time per training step)" in r.stdout
    assert "max |loss difference|" in r.stdout


def test_readme_usage_block_runs():
    text = (ROOT / "README.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
