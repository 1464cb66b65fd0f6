"""`rlgen.envs`: small environments written in JAX (functional, jittable, vmappable)."""

from rlgen.envs import cartpole
from rlgen.envs.cartpole import CartPoleState

__all__ = ["CartPoleState", "cartpole"]
