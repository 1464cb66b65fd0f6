"""`rlgen.ops`: pure array math for RL fine-tuning (no parameters, no optimizers).

Batch-major `[B, T]` inputs with masks; scans run time-major inside; no reductions unless
asked (see `aggregate`); errors at trace time. Data-parallel reductions (`psum`, `pmean`,
`global_token_mean`) are the identity without an `axis_name`. The tutorial-style names
`compute_discounted_returns`, `compute_gae_advantages`, `normalize_advantages`,
`compute_policy_entropy`, `compute_kl_divergence` and `compute_clipped_surrogate_loss`
are thin wrappers of the general kernels. For diffusion and flow models, whose sampler
steps are Gaussian policies: `gaussian_step_log_prob` and `gaussian_step_kl`, with the
reduction over dimensions (`GAUSSIAN_REDUCTIONS`: "sum" or "mean") always explicit.

Importing this package loads JAX and NumPy only.
"""

from rlgen.ops.advantages import SCALES as ADVANTAGE_SCALES
from rlgen.ops.advantages import (
    group_advantages,
    masked_moments,
    normalize_advantages,
    rloo_advantages,
)
from rlgen.ops.aggregation import MODES as AGGREGATION_MODES
from rlgen.ops.aggregation import (
    aggregate,
    aggregate_parts,
    global_count,
    global_token_mean,
    masked_mean,
    masked_sum,
)
from rlgen.ops.distributed import pmean, psum, shard_local
from rlgen.ops.gaussian import REDUCTIONS as GAUSSIAN_REDUCTIONS
from rlgen.ops.gaussian import gaussian_step_kl, gaussian_step_log_prob
from rlgen.ops.kl import ESTIMATORS as KL_ESTIMATORS
from rlgen.ops.kl import (
    compute_kl_divergence,
    compute_policy_entropy,
    entropy,
    kl_divergence,
    kl_estimate,
)
from rlgen.ops.logprobs import (
    token_entropy,
    token_log_probs,
    token_log_probs_from_hidden,
    token_log_probs_memory_light,
)
from rlgen.ops.policy import LEVELS as RATIO_LEVELS
from rlgen.ops.policy import (
    ClippedSurrogate,
    clipped_surrogate_loss,
    compute_clipped_surrogate_loss,
    importance_log_ratio,
    value_loss,
)
from rlgen.ops.preference import LOSS_TYPES as PREFERENCE_LOSS_TYPES
from rlgen.ops.preference import (
    PreferenceLoss,
    PreferenceLossType,
    check_loss_settings,
    preference_loss,
)
from rlgen.ops.returns import (
    compute_discounted_returns,
    compute_gae_advantages,
    discounted_returns,
    gae_advantages,
    lambda_returns,
    td_errors,
)

__all__ = [
    "ADVANTAGE_SCALES",
    "AGGREGATION_MODES",
    "GAUSSIAN_REDUCTIONS",
    "KL_ESTIMATORS",
    "PREFERENCE_LOSS_TYPES",
    "RATIO_LEVELS",
    "ClippedSurrogate",
    "PreferenceLoss",
    "PreferenceLossType",
    "aggregate",
    "aggregate_parts",
    "check_loss_settings",
    "clipped_surrogate_loss",
    "compute_clipped_surrogate_loss",
    "compute_discounted_returns",
    "compute_gae_advantages",
    "compute_kl_divergence",
    "compute_policy_entropy",
    "discounted_returns",
    "entropy",
    "gae_advantages",
    "gaussian_step_kl",
    "gaussian_step_log_prob",
    "global_count",
    "global_token_mean",
    "group_advantages",
    "importance_log_ratio",
    "kl_divergence",
    "kl_estimate",
    "lambda_returns",
    "masked_mean",
    "masked_moments",
    "masked_sum",
    "normalize_advantages",
    "pmean",
    "preference_loss",
    "psum",
    "rloo_advantages",
    "shard_local",
    "td_errors",
    "token_entropy",
    "token_log_probs",
    "token_log_probs_from_hidden",
    "token_log_probs_memory_light",
    "value_loss",
]
