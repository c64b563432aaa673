"""`python -m draem_jax.serve --model model.onnx`: the HTTP inference service
(draem_jax/deployment/serve.py)."""

import sys

from draem_jax.deployment.serve import main

if __name__ == "__main__":
  sys.exit(main())
