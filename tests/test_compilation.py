"""rlgen.enable_compilation_cache: where the cache goes, and that a second process loads
what the first compiled."""

import os
import subprocess
import sys

import jax
import pytest

from rlgen import compilation


@pytest.fixture
def restore_config():
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {n: getattr(jax.config, n) for n in names}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_directory_precedence(tmp_path, monkeypatch, restore_config):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(compilation.CACHE_ENV, str(tmp_path / "from-env"))
    assert compilation.enable_compilation_cache() == str(tmp_path / "from-env")
    assert os.path.isdir(tmp_path / "from-env")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    # A directory JAX already uses is kept; an explicit one wins over everything.
    assert compilation.enable_compilation_cache() == str(tmp_path / "from-env")
    assert compilation.enable_compilation_cache(tmp_path / "given") == str(tmp_path / "given")
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(compilation.CACHE_ENV, "off")
    assert compilation.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_a_second_process_loads_the_programs_the_first_compiled(tmp_path):
    script = (
        "import jax, jax.numpy as jnp, rlgen\n"
        "events = []\n"
        "jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))\n"
        f"rlgen.enable_compilation_cache({str(tmp_path)!r})\n"
        "print(float(jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((8, 8)))))\n"
        "print(sum(e.endswith('/cache_hits') for e in events),"
        " sum(e.endswith('/cache_misses') for e in events))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    value, counts = run().stdout.split("\n")[:2]
    hits, misses = map(int, counts.split())
    assert hits == 0 and misses > 0 and os.listdir(tmp_path)  # compiled and written
    again, counts = run().stdout.split("\n")[:2]
    hits, misses = map(int, counts.split())
    assert again == value and hits > 0 and misses == 0  # loaded, not compiled anew
