"""draem-jax: DRAEM (Zavrtanik et al., ICCV 2021) in JAX/Flax.

The Python API (imported on first use, so `import draem_jax` stays light and JAX-free):

  draem_jax.Detector        a trained model: `from_workdir` (JAX) / `from_onnx` (no JAX),
                            `predict(images)` -> anomaly map, score, decision, overlay
  draem_jax.Prediction      one image's result
  draem_jax.load_config     a config file (configs/mvtec.py:screw) or a run's, with overrides
  draem_jax.train           train.py from Python
"""

import importlib

__version__ = "0.1.0"

_LAZY = {"Detector": "draem_jax.detector", "Prediction": "draem_jax.detector",
         "load_config": "draem_jax.api", "train": "draem_jax.api"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # Later look-ups skip this function.
    return value
  raise AttributeError(f"module 'draem_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
