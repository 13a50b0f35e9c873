"""Shared paths and helpers of the cnx Python tests: the repository's fixtures and the `cnx`
binary whose results the package must equal."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures"
IMAGES = FIXTURES / "images"
DIGITS = REPO / "models" / "convnextv2-digits"


def cnx_binary() -> Path:
    """The `cnx` command to compare with: $CNX_BIN, else the workspace's debug or release
    build. A missing binary fails the tests that need it (never a silent skip)."""
    if os.environ.get("CNX_BIN"):
        return Path(os.environ["CNX_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("debug", "release"):
        candidate = target / profile / "cnx"
        if candidate.is_file():
            return candidate
    pytest.fail("no cnx binary: build it (cargo build -p cnx-cli) or set CNX_BIN")


def run_cnx(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(cnx_binary()), *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"cnx {' '.join(args)}: {result.stderr}"
    return result


def fixture_tolerance(case: str, output: str, expected: np.ndarray) -> float:
    """As the Rust tests (tests/src/lib.rs `tolerance`): transformers' float32 output sits
    `gap` = max |f32 - f64| from a float64 copy of the model (recorded in meta.json); a correct
    float32 implementation differs from it by about 2 gap, so 3 gap plus 2 float32 ulps of the
    output's largest magnitude is allowed."""
    meta = json.loads((FIXTURES / case / "meta.json").read_text())
    gap = meta["f32_vs_f64_max_abs"][output]
    return 3.0 * gap + 2.0 * float(np.finfo(np.float32).eps) * float(np.abs(expected).max())
