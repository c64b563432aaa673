"""Checks that draem_jax and the independent PyTorch port (bench/torch_draem.py) agree.

Same weights in both (draem_jax's initial variables copied into the PyTorch module), same
batch; compares, in float64 (so that disagreement means a different formula, not rounding) and
in float32:
  * training-mode forward outputs (reconstruction, logits) and the four loss values;
  * the gradients of the total loss for every parameter;
  * the updated BatchNorm running statistics;
  * eval-mode (running statistics) outputs and the anomaly map softmax[..., 1].

  python bench/check_torch_equivalence.py [--size 64 --recon_width 8 --disc_width 8 --batch 2]

Prints max |difference| and max |difference| / max |value| per quantity and exits non-zero if
a float64 difference exceeds --tol64.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

from bench import torch_draem  # pylint: disable=g-import-not-at-top,wrong-import-position
from draem_jax.training import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from draem_jax import models


def make_batch(rng, batch, size):
  """Clean targets, an augmented input with a pasted square anomaly, and its mask (NHWC)."""
  target = rng.uniform(size=(batch, size, size, 3))
  mask = np.zeros((batch, size, size, 1))
  s = size // 4
  mask[1:, s:2 * s, s:3 * s] = 1.0
  augmented = np.where(mask > 0, rng.uniform(size=target.shape), target)
  return target, augmented, mask


def flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    p = f"{prefix}.{k}" if prefix else k
    out.update(flat(v, p) if hasattr(v, "items") else {p: np.asarray(v)})
  return out


def torch_name(path: str) -> str:
  layer, leaf = path.rsplit(".", 1)
  return f"{layer}." + {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]


def run_jax(model, variables, target, augmented, mask):
  """Training-mode forward, losses, grads and new batch stats; eval-mode outputs."""

  def loss_fn(params):
    (rec, logits), upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                     augmented, train=True, mutable=["batch_stats"])
    terms = losses.draem_loss(rec, target, logits, mask)
    return terms.total, (terms, rec, logits, upd["batch_stats"])

  grads, (terms, rec, logits, stats) = jax.jit(jax.grad(loss_fn, has_aux=True))(
      variables["params"])
  rec_eval, logits_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables,
                                                                                augmented)
  return dict(rec=rec, logits=logits, loss=terms.total, l2=terms.l2, ssim=terms.ssim,
              focal=terms.focal, grads=grads, stats=stats, rec_eval=rec_eval,
              prob_eval=jax.nn.softmax(logits_eval, -1)[..., 1])


def run_torch(tmodel, target, augmented, mask, dtype):
  to = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(dtype)
  x, y, m = to(augmented), to(target), to(mask)
  tmodel.eval()  # Before the training-mode pass, which updates the running statistics.
  with torch.no_grad():
    rec_eval, logits_eval = tmodel(x)
  tmodel.train()
  tmodel.zero_grad()
  rec, logits = tmodel(x)
  total, l2, ssim_loss, focal_loss = torch_draem.draem_loss(rec, y, logits, m)
  total.backward()
  nhwc = lambda t: t.detach().numpy().transpose(0, 2, 3, 1)
  grads = {n: p.grad.numpy() for n, p in tmodel.named_parameters()}
  stats = {n: b.numpy() for n, b in tmodel.named_buffers() if "running" in n}
  return dict(rec=nhwc(rec), logits=nhwc(logits), loss=total.item(), l2=l2.item(),
              ssim=ssim_loss.item(), focal=focal_loss.item(), grads=grads, stats=stats,
              rec_eval=nhwc(rec_eval), prob_eval=torch.softmax(logits_eval, 1)[:, 1].numpy())


def rel_diff(a, b):
  """max |a - b| / max |b|."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-30)


def initial_variables(args):
  """draem_jax's float32 initial variables, with non-trivial running statistics (so that the
  eval-mode comparison exercises BatchNorm's affine path too)."""
  model = models.DRAEM(args.recon_width, args.disc_width)
  variables = models.init_variables(model, jax.random.key(args.seed),
                                    (args.batch, args.size, args.size, 3))
  stats = jax.tree_util.tree_map(
      lambda v: v + 0.1 * jax.random.uniform(jax.random.key(v.size), v.shape),
      variables["batch_stats"])
  return jax.device_get({"params": variables["params"], "batch_stats": stats})


def run_both(args, variables, dtype_name):
  """Both frameworks on the same batch and weights in float64 or float32; flat dicts."""
  jdt = {"float64": jnp.float64, "float32": jnp.float32}[dtype_name]
  tdt = {"float64": torch.float64, "float32": torch.float32}[dtype_name]
  target, augmented, mask = (a.astype(dtype_name) for a in
                             make_batch(np.random.default_rng(args.seed), args.batch, args.size))
  variables = jax.tree_util.tree_map(lambda v: np.asarray(v, dtype_name), variables)
  model = models.DRAEM(args.recon_width, args.disc_width, dtype=jdt)
  j = run_jax(model, jax.tree_util.tree_map(jnp.asarray, variables),
              *(jnp.asarray(a) for a in (target, augmented, mask)))
  tmodel = torch_draem.DRAEM(args.recon_width, args.disc_width).to(tdt)
  torch_draem.load_from_flax(tmodel, variables)
  t = run_torch(tmodel, target, augmented, mask, tdt)
  # One naming scheme (torch's), one layout (NHWC / HWIO) for both.
  j = {k: np.asarray(v) for k, v in j.items() if k not in ("grads", "stats")} | {
      "grad:" + torch_name(p): g for p, g in flat(jax.device_get(j["grads"])).items()} | {
      "stat:" + p.rsplit(".", 1)[0] + ".running_" + p.rsplit(".", 1)[1]: v
      for p, v in flat(jax.device_get(j["stats"])).items()}
  t = {k: np.asarray(v) for k, v in t.items() if k not in ("grads", "stats")} | {
      "grad:" + n: (g.transpose(2, 3, 1, 0) if g.ndim == 4 else g)
      for n, g in t["grads"].items()} | {"stat:" + n: v for n, v in t["stats"].items()}
  return j, t


def summarise(diffs):
  """Rows of (quantity, worst relative difference) grouping gradients and statistics."""
  rows = [(k, diffs[k]) for k in
          ("rec", "logits", "loss", "l2", "ssim", "focal", "rec_eval", "prob_eval")]
  groups = [
      ("grads: conv kernels", lambda k: k.startswith("grad:") and k.endswith("conv.weight")
       or k.startswith("grad:") and k.endswith("final.weight")),
      ("grads: final conv biases", lambda k: k.startswith("grad:") and k.endswith("final.bias")),
      ("grads: BN scale and bias", lambda k: k.startswith("grad:") and ".bn." in k),
      ("BN running mean", lambda k: k.startswith("stat:") and k.endswith("running_mean")),
      ("BN running var", lambda k: k.startswith("stat:") and k.endswith("running_var")),
  ]
  for name, pred in groups:
    worst = max(((v, k) for k, v in diffs.items() if pred(k)), default=(float("nan"), ""))
    rows.append((f"{name} (worst: {worst[1].split(':', 1)[-1]})", worst[0]))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--recon_width", type=int, default=8)
  parser.add_argument("--disc_width", type=int, default=8)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tol64", type=float, default=1e-9,
                      help="Largest relative float64 difference accepted.")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  variables = initial_variables(args)
  with jax.enable_x64(True):
    j64, t64 = run_both(args, variables, "float64")
  j32, t32 = run_both(args, variables, "float32")
  # Conv biases right before a training-mode BatchNorm have a true gradient of exactly 0 (BN
  # removes any constant): their computed values are rounding noise, compared absolutely.
  pre_bn_bias = [k for k in j64 if k.startswith("grad:") and k.endswith("conv.bias")]
  keys = [k for k in j64 if k not in pre_bn_bias]
  d64 = {k: rel_diff(j64[k], t64[k]) for k in keys}
  dj32 = {k: rel_diff(j32[k], j64[k]) for k in keys}
  dt32 = {k: rel_diff(t32[k], t64[k]) for k in keys}
  print(f"size {args.size}, widths {args.recon_width}/{args.disc_width}, batch {args.batch}; "
        f"total loss: jax64 {float(j64['loss']):.12f} torch64 {float(t64['loss']):.12f} "
        f"jax32 {float(j32['loss']):.8f} torch32 {float(t32['loss']):.8f}")
  print("relative differences, max |a - b| / max |b| per tensor (worst tensor of a group):")
  print(f"{'quantity':<70} {'jax64-torch64':>13} {'jax32-f64':>10} {'torch32-f64':>11}")
  for (name, a), (_, b), (_, c) in zip(summarise(d64), summarise(dj32), summarise(dt32)):
    print(f"{name:<70} {a:13.2e} {b:10.2e} {c:11.2e}")
  bias = lambda j, t: max(float(np.max(np.abs(j[k] - t[k]))) for k in pre_bn_bias)
  print(f"{'grads of pre-BN conv biases (true value 0), max |diff| absolute':<70} "
        f"{bias(j64, t64):13.2e} {bias(j32, j64):10.2e} {bias(t32, t64):11.2e}")
  bad = {k: v for k, v in d64.items() if not v <= args.tol64}
  if bad:
    print("\nfloat64 DISAGREEMENT:", bad)
    sys.exit(1)
  print(f"\nfloat64: every quantity agrees within {args.tol64:g} relative.")


if __name__ == "__main__":
  main()
