"""Exact resumption across processes: 20 steps straight (checkpointing step 10 on the way)
equal restoring step 10 in a fresh process and taking 10 more steps: identical
parameters, optimiser state and metrics.

GRPO through the sampling path is the hardest case: each step samples completions with a
key derived from the trainer's RNG and step count, and the update carries Adam's state
and the frozen KL reference.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from flax import nnx
    import rlgen
    from rlgen.callbacks import CheckpointConfig, ModelCheckpoint
    from rlgen.models import SamplingConfig, TransformerConfig, TransformerLM

    mode, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
    lm = TransformerLM(
        TransformerConfig(vocab_size=8, max_len=8, d_model=16, num_heads=2, num_layers=1,
                          eos_id=1),
        rngs=nnx.Rngs(0), sampling=SamplingConfig(max_new_tokens=3))
    trainer = rlgen.GRPOTrainer(
        lm, nnx.Optimizer(lm, optax.adamw(3e-3), wrt=nnx.Param),
        rlgen.GRPOConfig(num_generations=4, reference="initial", beta=0.05), seed=7)
    data = [{"observations": np.asarray(jax.random.randint(jax.random.key(i), (4, 4), 0, 8))}
            for i in range(20)]
    reward = lambda s, c=None: jnp.mean((s == c[:, -1:]).astype(jnp.float32), axis=-1)
    history = []

    class Record:
        def on_train_begin(self, t): pass
        def on_train_end(self, t): pass
        def on_train_batch_end(self, t, metrics, step):
            history.append({k: float(v) for k, v in metrics.items()})

    if mode == "straight":  # 20 steps in one process, checkpointing step 10 on the way
        cb = ModelCheckpoint(CheckpointConfig(ckpt, every_n_steps=5))
        trainer.fit(data[:10], reward_fn=reward, callbacks=[Record(), cb])
        trainer.fit(data[10:], reward_fn=reward, callbacks=[Record()])
    else:  # "resumed": a fresh process restores step 10 and goes on
        assert ModelCheckpoint.restore(trainer, ckpt) == 10
        trainer.fit(data[trainer.step:], reward_fn=reward, callbacks=[Record()])
    np.savez(out, step=trainer.step, history=json.dumps(history),
             **{k: np.asarray(v) for k, v in trainer.checkpoint_state().items()})
    """
)


def _run(tmp_path, mode):
    script = tmp_path / "resume.py"
    script.write_text(_SCRIPT)
    out = tmp_path / f"{mode}.npz"
    subprocess.run(
        [sys.executable, str(script), mode, str(tmp_path / "ckpt"), str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return np.load(out)


def test_resume_in_a_fresh_process_is_exact(tmp_path):
    straight = _run(tmp_path, "straight")
    second = _run(tmp_path, "resumed")
    assert int(straight["step"]) == int(second["step"]) == 20
    names = [k for k in straight.files if k not in ("step", "history")]
    assert any("opt_state" in k for k in names) and any("ref_params" in k for k in names)
    for name in names:  # parameters, Adam moments, reference, RNG: bitwise equal
        np.testing.assert_array_equal(straight[name], second[name], err_msg=name)
    full = json.loads(str(straight["history"]))
    resumed = json.loads(str(second["history"]))
    assert len(full) == 20 and len(resumed) == 10
    assert full[10:] == resumed  # every resumed step's metrics, exactly
    # The run really trained (the comparison is not between two frozen models).
    assert full[0] != full[-1]
