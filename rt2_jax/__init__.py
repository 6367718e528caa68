"""rt2_jax: RT-2 vision-language-action models in JAX/Flax.

The package root imports nothing heavy: `rt2_jax.actions`, `rt2_jax.tokenizer` and `rt2_jax.sim`
are usable on a robot-side machine without JAX training code or TensorFlow.
"""

__version__ = "0.1.0"
