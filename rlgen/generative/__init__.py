"""`rlgen.generative`: pure losses and samplers of the generative model families.

One module per family, each with a frozen config, its losses, its samplers and its
metric names (``METRICS``), all pure functions (jit them, vmap them over seeds, scan them);
the family's trainer in `rlgen.trainers` is a thin adapter over them:

=================  ===============================================================
module             what it holds
=================  ===============================================================
`autoregressive`   next-token loss: teacher forcing, label smoothing, scheduled
                   sampling (Bengio et al. 2015)
`vae`              the ELBO with beta, KL annealing (linear, sigmoid, cyclical) and
                   free bits; Gaussian and Bernoulli decoders; prior sampling
`gan`              non-saturating, LSGAN, hinge and WGAN-GP losses; R1 and gradient
                   penalties
`diffusion`        linear and cosine noise schedules; epsilon, x0 and v prediction;
                   min-SNR weighting; DDPM and DDIM steps as Gaussian transitions
                   (mean, std, log-prob) and scanned samplers; classifier-free guidance
`flow`             conditional flow matching on straight paths, OT-CFM (exact
                   minibatch optimal transport), reflow against a frozen teacher;
                   Euler and Heun ODE samplers; straightness
`energy`           SGLD (no gradient through the chain), contrastive divergence, a
                   jittable replay buffer
`rollout`          samplers as policies for RL: DDIM with eta (DDPO) and the flow's
                   SDE (Flow-GRPO, DanceGRPO) behind one interface; trajectories with
                   per-step log-probs; SDE windows
=================  ===============================================================

The configs are exported here flat (``from rlgen.generative import DiffusionConfig``);
the rest lives in its family's module (``from rlgen.generative import diffusion``, then
``diffusion.sample_ddim(...)``). The autoregressive loss's parts are exported flat too.
"""

from rlgen.generative import autoregressive, diffusion, energy, flow, gan, rollout, vae
from rlgen.generative.autoregressive import (
    AutoregressiveConfig,
    next_token_loss,
    scheduled_sampling_inputs,
    sequence_cross_entropy,
)
from rlgen.generative.diffusion import DiffusionConfig
from rlgen.generative.energy import EnergyConfig
from rlgen.generative.flow import FlowConfig
from rlgen.generative.gan import GANConfig
from rlgen.generative.vae import VAEConfig

__all__ = [
    "AutoregressiveConfig",
    "DiffusionConfig",
    "EnergyConfig",
    "FlowConfig",
    "GANConfig",
    "VAEConfig",
    "autoregressive",
    "diffusion",
    "energy",
    "flow",
    "gan",
    "next_token_loss",
    "rollout",
    "scheduled_sampling_inputs",
    "sequence_cross_entropy",
    "vae",
]
