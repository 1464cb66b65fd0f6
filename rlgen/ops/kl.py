"""KL divergences and entropies: sampled estimators and full-distribution forms.

Two kinds, kept apart on purpose:

* `kl_estimate(log_probs, ref_log_probs, estimator)`: per-sample estimators of
  `KL(pi || pi_ref)` from the log-probs of tokens *sampled from pi* (k1, k2, k3 of
  Schulman 2020). Use these when only the chosen tokens' log-probs are at hand.
* `kl_divergence(log_p, log_q)` / `compute_kl_divergence`, `entropy` /
  `compute_policy_entropy`: exact forms that reduce a full distribution over the last
  axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlgen import _checks

ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(log_probs, ref_log_probs, estimator="k3", *, max_log_ratio=20.0):
    """Per-sample estimate of `KL(pi || pi_ref)` from log-probs of samples `a ~ pi`.

    Math, with `log_r = log pi_ref(a) - log pi(a)` (clamped to +-`max_log_ratio`):
      * k1 = `-log_r`: unbiased; can be negative; high variance.
      * k2 = `0.5 log_r^2`: biased, low variance, non-negative.
      * k3 = `exp(log_r) - 1 - log_r`: unbiased, non-negative, low variance (the GRPO
        default, DeepSeekMath eq. 4). Computed as `expm1(log_r) - log_r`.

    Gradients when the estimate is *placed in the loss* (differentiated through
    `log pi(a)` only, samples held fixed), in expectation over `a ~ pi`:
      * k1 gives `E[grad log pi] = 0`: no KL gradient at all (use it as a reward
        penalty, not as a loss term);
      * k2 gives `E[log(pi/pi_ref) grad log pi] = grad KL(pi || pi_ref)`, the reverse KL
        gradient;
      * k3 gives `E[(1 - pi_ref/pi) grad log pi] = grad KL(pi_ref || pi)`, the gradient
        of the *forward* KL, although its value estimates the reverse KL.

    Args:
      log_probs: log-probs of the sampled tokens under the policy, any shape.
      ref_log_probs: their log-probs under the reference, same shape (not differentiated).
      estimator: "k1", "k2" or "k3".
      max_log_ratio: clamp of `log_r` before `exp`.

    Returns:
      Per-element estimates with the shape of `log_probs` (float32 or wider).

    Example:
      >>> kl_estimate(jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25])), "k3")
      Array([0.19314718], dtype=float32)

    Reference: J. Schulman (2020), Approximating KL Divergence,
    http://joschu.net/blog/kl-approx.html; Shao et al. 2024, DeepSeekMath.
    """
    _checks.check_choice(estimator, ESTIMATORS, "estimator")
    _checks.check_range(max_log_ratio, "max_log_ratio", 0.0, low_open=True)
    log_probs, ref = _checks.float_pair(log_probs, ref_log_probs, "log_probs", "ref_log_probs")
    log_r = jnp.clip(jax.lax.stop_gradient(ref) - log_probs, -max_log_ratio, max_log_ratio)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * jnp.square(log_r)
    return jnp.expm1(log_r) - log_r


def _check_distribution(x, name, **shape):
    return _checks.float_array(
        x, name, min_rank=1, what="(a distribution axis last)", upcast=True, **shape
    )


def _xlogy_terms(log_p, other):
    """`p * (log_p - other)` with the convention `0 * anything = 0` (safe gradients)."""
    p = jnp.exp(log_p)
    positive = p > 0
    diff = jnp.where(positive, log_p - jnp.where(positive, other, 0.0), 0.0)
    return jnp.where(positive, p * diff, 0.0)


def kl_divergence(log_p, log_q):
    """Exact `KL(p || q) = sum_v p_v (log p_v - log q_v)` over the last axis.

    Zero-probability entries of `p` (`log_p = -inf`) contribute 0.

    Args:
      log_p: `[..., V]` log-probabilities of `p` (normalised).
      log_q: `[..., V]` log-probabilities of `q`, same shape.

    Returns:
      `[...]` divergences.

    Example:
      >>> kl_divergence(jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.25, 0.75])))
      Array(0.14384104, dtype=float32)

    Reference: Kullback & Leibler (1951).
    """
    log_p = _check_distribution(log_p, "log_p")
    log_q = _check_distribution(log_q, "log_q", shape=log_p.shape, like="log_p")
    return jnp.sum(_xlogy_terms(log_p, log_q), axis=-1)


def entropy(log_probs):
    """Exact entropy `H(p) = -sum_v p_v log p_v` over the last axis (0 log 0 = 0).

    Args:
      log_probs: `[..., V]` normalised log-probabilities.

    Returns:
      `[...]` entropies.

    Example:
      >>> entropy(jnp.log(jnp.array([0.5, 0.5])))
      Array(0.6931472, dtype=float32)

    Reference: Shannon (1948), A Mathematical Theory of Communication.
    """
    log_probs = _check_distribution(log_probs, "log_probs")
    return -jnp.sum(_xlogy_terms(log_probs, jnp.zeros_like(log_probs)), axis=-1)


def compute_policy_entropy(log_probs):
    """`H = -sum(p * log(p))` over the last axis of full-distribution log-probs: `entropy`
    under the name common in RL tutorials.

    Example:
      >>> compute_policy_entropy(jnp.log(jnp.full((2, 4), 0.25)))
      Array([1.3862944, 1.3862944], dtype=float32)

    Reference: Shannon (1948); the entropy bonus of Williams & Peng (1991).
    """
    return entropy(log_probs)


def compute_kl_divergence(policy_log_probs, ref_log_probs):
    """`KL(policy || reference)` over the last axis of full-distribution log-probs:
    `kl_divergence` under the name common in RL tutorials.

    Example:
      >>> compute_kl_divergence(jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.5, 0.5])))
      Array(0., dtype=float32)

    Reference: Kullback & Leibler (1951), On Information and Sufficiency.
    """
    return kl_divergence(policy_log_probs, ref_log_probs)
