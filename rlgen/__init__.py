"""rlgen: reinforcement learning and preference optimisation for generative models in JAX.

Layers: `rlgen.ops` (pure array math) -> `rlgen.algorithms` (init/update pairs) ->
`rlgen.trainers` (thin Flax NNX adapters).
"""

from rlgen import ops

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
