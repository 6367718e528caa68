"""End-to-end studies that train, evaluate and print tables (python -m rt2_jax.experiments.NAME)."""
