"""draem-jax: DRAEM (Zavrtanik et al., ICCV 2021) in JAX/Flax."""

__version__ = "0.1.0"
