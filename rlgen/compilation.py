"""Compiled programs kept across processes: JAX's persistent compilation cache.

rlgen compiles one XLA program per step shape (a trainer's update, its sampler). On a CPU
a small transformer's GRPO update takes seconds to compile, far longer than it takes to
run. `enable_compilation_cache` keeps every compiled program on disk, keyed by the
program and the compiler's version, so a later process with the same shapes loads it in
milliseconds instead: the `rlgen` command turns it on for every run.
"""

from __future__ import annotations

import os

import jax

__all__ = ["DEFAULT_CACHE_DIR", "CACHE_ENV", "enable_compilation_cache"]

#: Where the cache lives unless told otherwise.
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "rlgen", "jax")
#: An environment variable naming the cache directory; "off" disables the cache.
CACHE_ENV = "RLGEN_COMPILATION_CACHE"


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache for this process; returns its directory.

    Every program is cached, however fast it compiled (JAX's default keeps only programs
    that took over a second). The directory is, in order: ``directory``; the
    ``JAX_COMPILATION_CACHE_DIR`` JAX already uses (left as it is); the
    ``RLGEN_COMPILATION_CACHE`` environment variable (``"off"`` turns the cache off and
    returns None); ``~/.cache/rlgen/jax``. A cached program is reused only by the same JAX,
    jaxlib and device kind, so the cache never serves a stale program.

    Example:
      >>> import tempfile
      >>> where = enable_compilation_cache(tempfile.mkdtemp())
      >>> jax.config.jax_persistent_cache_min_compile_time_secs
      0.0
    """
    if directory is None:
        if jax.config.jax_compilation_cache_dir:
            directory = jax.config.jax_compilation_cache_dir
        else:
            directory = os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
            if directory == "off":
                return None
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
