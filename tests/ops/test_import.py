"""`import rlgen.ops` and `import rlgen.algorithms` stay light: JAX, NumPy and optax, none
of the heavier libraries that other layers use (Flax, Orbax, rich, distrax, TensorFlow
Probability; SciPy, scikit-learn and matplotlib, which the flow family's exact coupling, the
data sets and the plots import when they are used)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = (
    "flax", "orbax", "rich", "distrax", "tensorflow_probability", "scipy", "sklearn", "matplotlib"
)
ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
import rlgen
print(json.dumps([rlgen.__file__, sorted({m.split(".")[0] for m in sys.modules})]))
"""


def _modules_after(statement):
    """Top-level package names in `sys.modules` after `statement`, in a fresh interpreter
    that imports rlgen from this checkout."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", statement + "\n" + PROBE],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": path},
        cwd=ROOT,
    )
    rlgen_file, modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(rlgen_file).resolve().is_relative_to(ROOT), rlgen_file
    return set(modules)


@pytest.mark.parametrize("module", ["rlgen.ops", "rlgen.algorithms"])
def test_import_of_the_functional_layers_loads_no_heavy_library(module):
    loaded = _modules_after(f"import {module}")
    assert "jax" in loaded and "rlgen" in loaded
    assert not loaded.intersection(HEAVY), sorted(loaded.intersection(HEAVY))


def test_the_probe_sees_a_heavy_import():
    # The probe itself can fail: importing one of the libraries shows up.
    assert "rich" in _modules_after("import rlgen.ops, rich")
