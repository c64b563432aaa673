"""Evaluation: the predict function and the evaluator (`evaluator`), metrics (`metrics`),
thresholds without defects (`validation`), the HTML report (`report`), overlays (`visualize`).

Kept free of imports: the JAX-free runner imports `visualize` from here.
"""
