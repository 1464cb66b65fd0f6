"""`rlgen vae-ppo`: a seeded, shortened run (in a run folder, as the command runs it) must
bring the held-out reconstruction error of the PPO encoder below the ELBO encoder's by a
stated margin, and write its files; the reward; the settings' errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from rlgen import cli
from rlgen.algorithms import PPO_METRICS, PPOConfig
from rlgen.generative.vae import VAEConfig
from rlgen.recipes import vae_ppo as R

SHORT = {"pretrain_steps": 300, "hidden": 128, "ppo_steps": 80, "ppo_batch_size": 256,
         "value_warmup_steps": 20, "eval_draws": 2}


def test_shortened_run_beats_the_elbo_encoder(tmp_path):
    config = R.VAEPPOConfig(**SHORT)
    options = cli.RunOptions(out_dir=str(tmp_path), progress=False, checkpoint_every=1000)
    summary = cli.run_recipe("vae-ppo", config, options, echo=lambda *_: None)
    # Measured (seed 0): posterior mean 0.1797 -> 0.1606, draws 0.2161 -> 0.1648.
    # Asked: at least 5% below the ELBO encoder from the posterior mean, 15% from draws.
    assert summary["recon_error_after"] < 0.95 * summary["recon_error_elbo_encoder"], summary
    assert (
        summary["recon_error_after_sample"] < 0.85 * summary["recon_error_elbo_encoder_sample"]
    ), summary
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["recon_error_after"] == summary["recon_error_after"]
    assert written["config"]["ppo_steps"] == 80 and written["config"]["gae_lambda"] == 0.95
    assert (tmp_path / R.RECONSTRUCTIONS_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "reward_curve.png").exists()
    records = cli.read_metrics(tmp_path / "metrics.jsonl")
    ppo = [r for r in records if r.get("phase") == "ppo"]
    assert [r["step"] for r in ppo] == list(range(80))
    assert set(PPO_METRICS) <= set(ppo[-1])
    from rlgen.callbacks import ModelCheckpoint

    assert ModelCheckpoint.latest_step(tmp_path / "checkpoints" / "ppo") == 80
    assert ModelCheckpoint.latest_step(tmp_path / "checkpoints" / "pretrain") == 300


def test_reconstruction_reward():
    x = jnp.zeros((2, 4))
    r = R.reconstruction_reward(x, jnp.array([[0.0, 0, 0, 0], [2.0, 0, 0, 0]]))
    np.testing.assert_allclose(r, [0.0, -1.0])
    with pytest.raises(ValueError, match="reconstructions"):
        R.reconstruction_reward(x, jnp.zeros((2, 3)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ppo_steps": 0}, "`ppo_steps`"),
        ({"learning_rate": 0.0}, "`learning_rate`"),
        ({"value_warmup_steps": -1}, "`value_warmup_steps`"),
        ({"ppo_batch_size": 250}, "`ppo_batch_size`.*`num_minibatches`"),
        ({"vae": VAEConfig(beta=3.0, decoder="bernoulli")}, "vae.decoder"),
        ({"ppo": {"gamma": 0.9}}, "`ppo`"),
    ],
)
def test_settings_errors_name_the_field(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        R.VAEPPOConfig(**kwargs)


def test_the_optimizer_warms_up_the_value_head_alone():
    config = R.VAEPPOConfig(value_warmup_steps=1, ppo=PPOConfig(num_epochs=1, num_minibatches=2))
    tx = R.ppo_optimizer(config)
    params = {"encoder": jnp.ones(2), "value_head": jnp.ones(2)}
    state = tx.init(params)
    grads = {"encoder": jnp.ones(2), "value_head": jnp.ones(2)}
    for step in range(3):  # two optimiser updates per PPO step: the third moves the encoder
        updates, state = tx.update(grads, state, params)
        assert float(jnp.abs(updates["value_head"]).sum()) > 0
        assert (float(jnp.abs(updates["encoder"]).sum()) > 0) == (step >= 2)
