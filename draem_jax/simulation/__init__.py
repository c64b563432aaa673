"""The anomaly simulator (DRAEM_SPEC 4) in jax.numpy: Perlin noise (`perlin`), the texture
augmenters (`augment`), `simulator.simulate`, and test-time perturbations (`perturb`)."""
