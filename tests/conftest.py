"""Test setup: 8 virtual CPU devices for data-parallel tests, a shared compilation cache,
and hypothesis profiles."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache for the test workers and the subprocesses they start: a program
# compiled by one is loaded by the others (it cuts the suite's CPU time by about a sixth).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "rlgen-tests-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ------------------------------------------------------------------ shared pretraining


def _pretrained_digit_diffusion() -> str:
    """The run folder of ``rlgen digits diffusion`` at its default settings, made once.

    Several tests fine-tune the pretrained digit diffusion model (three minutes of CPU).
    It is trained once per machine into the temporary directory, keyed by the sources
    that define it, under a file lock that the test workers share; later runs reuse it.
    """
    import fcntl
    import hashlib
    import pathlib

    import rlgen

    root = pathlib.Path(rlgen.__file__).parent
    sources = ("models/denoiser.py", "recipes/digits/diffusion.py", "generative/diffusion.py",
               "trainers/diffusion.py", "algorithms/diffusion.py", "checkpoints.py")
    digest = hashlib.sha256(b"".join((root / s).read_bytes() for s in sources)).hexdigest()
    folder = pathlib.Path(tempfile.gettempdir()) / f"rlgen-tests-digit-diffusion-{digest[:12]}"
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "summary.json").exists():
            from rlgen import cli
            from rlgen.recipes.digits.diffusion import DiffusionDigitsConfig

            options = cli.RunOptions(
                out_dir=str(folder), progress=False, overwrite=True, checkpoint_every=10**6
            )
            cli.run_recipe(
                "digits diffusion", DiffusionDigitsConfig(num_samples=100), options,
                echo=lambda *_: None,
            )
    return str(folder)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digit_diffusion_run() -> str:
    """A ``rlgen digits diffusion`` run folder (default settings) to start fine-tuning from."""
    return _pretrained_digit_diffusion()
