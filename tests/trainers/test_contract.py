"""The contract every trainer keeps, run over every trainer of `cases.CASES` (the RL
trainers, the sampling path, the autoregressive trainer and the two example trainers built
on the public contract: two models with their own optimizers, and an EMA):

* the step compiles once per batch shape (a new shape adds one program);
* after each step the parameters and optimiser state are written back into every NNX model
  and `nnx.Optimizer`, and each optimizer counts the steps;
* a run resumed from a checkpoint in a fresh process continues bit for bit: every array of
  the state (all models, all optimisers, keys, references, averages) and every metric;
* on 8 CPU devices (a data-parallel mesh) a trainer computes the single-device numbers.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from .cases import CASES, host, models_and_optimizers

NAMES = sorted(CASES)


def _params(model):
    return host(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _steps(case, trainer, batches):
    return [case.step(trainer, b) for b in batches]


@pytest.mark.parametrize("name", NAMES)
def test_compiles_once_per_batch_shape(name):
    case = CASES[name]
    trainer = case.make()
    _steps(case, trainer, case.batches(3))
    assert trainer._compiled_update._cache_size() == 1
    case.step(trainer, case.other_shape())
    assert trainer._compiled_update._cache_size() == 2
    _steps(case, trainer, case.batches(1))  # the first shape's program is reused
    assert trainer._compiled_update._cache_size() == 2 and trainer.step == 5


@pytest.mark.parametrize("name", NAMES)
def test_writes_back_into_every_model_and_optimizer(name):
    case = CASES[name]
    trainer = case.make()
    slots = models_and_optimizers(trainer)
    before = [_params(m) for _, m, _ in slots]
    for i, batch in enumerate(case.batches(2), start=1):
        case.step(trainer, batch)
        opt_leaves = []
        for key, model, optimizer in slots:
            params = trainer.state.params if key is None else trainer.state.params[key]
            np.testing.assert_equal(_params(model), host(params))
            assert int(optimizer.step.get_value()) == i
            opt_leaves += [v.get_value() for v in jax.tree.leaves(
                optimizer.opt_state, is_leaf=lambda x: isinstance(x, nnx.Variable)
            )]
        state_leaves = jax.tree.leaves(trainer.state.opt_state)
        assert len(opt_leaves) == len(state_leaves) > 0
        for got, want in zip(opt_leaves, state_leaves, strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for (_, model, _), initial in zip(slots, before, strict=True):  # every model trained
        now = _params(model)
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(now), jax.tree.leaves(initial), strict=True)
        )


def run_steps(mode: str, directory: str) -> dict:
    """Four steps of every case: ``"straight"`` takes them in one go, saving the state after
    step 2; ``"resumed"`` builds each trainer with another seed, restores step 2 and takes
    steps 3 and 4. Returns, per case, the metrics of steps 3 and 4 and the final state."""
    result = {}
    for name, case in sorted(CASES.items()):
        batches = case.batches(4)
        if mode == "straight":
            trainer = case.make(seed=0)
            metrics = [case.step(trainer, b) for b in batches[:2]]
            trainer.save_checkpoint(f"{directory}/{name}")
        else:
            trainer = case.make(seed=1)
            trainer.restore_checkpoint(f"{directory}/{name}")
            assert trainer.step == 2, trainer.step
            metrics = []
        metrics += [case.step(trainer, b) for b in batches[2:]]
        result[name] = {
            "metrics": [{k: float(v) for k, v in m.items()} for m in metrics[-2:]],
            "state": {k: np.asarray(v).tolist() for k, v in trainer.checkpoint_state().items()},
        }
    return result


_RESUMED = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[3])
    from trainers.test_contract import run_steps

    with open(sys.argv[2], "w") as f:
        json.dump(run_steps("resumed", sys.argv[1]), f)
    """
)


def _resumed_in_a_fresh_process(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(_RESUMED)
    out = tmp_path / "resumed.json"
    tests = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ckpt"), str(out), str(tests)],
        check=True,
        timeout=600,
    )
    return json.loads(out.read_text())


def test_resume_in_a_fresh_process_is_exact(tmp_path):
    # JSON round trip: the straight run's numbers compare as the fresh process's do
    straight = json.loads(json.dumps(run_steps("straight", str(tmp_path / "ckpt"))))
    resumed = _resumed_in_a_fresh_process(tmp_path)
    assert sorted(straight) == sorted(resumed) == NAMES
    for name in NAMES:
        a, b = straight[name], resumed[name]
        assert a["metrics"] == b["metrics"], name  # steps 3 and 4, exactly
        assert sorted(a["state"]) == sorted(b["state"]), name
        for entry in a["state"]:  # every array of the state, bit for bit
            assert a["state"][entry] == b["state"][entry], (name, entry)
        assert any("opt_state" in k for k in a["state"]), name
    # what the state holds beyond params and optimiser state is part of the check
    assert any("ref_params" in k for k in straight["grpo-sampling"]["state"])
    assert any("ema_params" in k for k in straight["ema"]["state"])
    assert any("discriminator" in k for k in straight["adversarial"]["state"])
    assert any("buffer" in k for k in straight["energy"]["state"])  # the replay buffer
    assert any("ema_params" in k for k in straight["gan"]["state"])  # the generator's average
    assert any("ema_params" in k for k in straight["flow"]["state"])


def _close(a, b, what):
    for x, y in zip(jax.tree.leaves(host(a)), jax.tree.leaves(host(b)), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6, err_msg=what)


@pytest.mark.parametrize("name", NAMES)
def test_eight_devices_give_the_single_device_numbers(name):
    case = CASES[name]
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ("data",))
    plain, sharded = case.make(), case.make(mesh=mesh)
    for batch in case.batches(3):
        _close(case.step(plain, batch), case.step(sharded, batch), f"{name} metrics")
    _close(plain.state.params, sharded.state.params, f"{name} params")
    leaf = jax.tree.leaves(sharded.state.params)[0]
    assert len(leaf.sharding.device_set) == 8  # it really ran on the mesh
