"""The commands in README.md and docs/*.md name scripts, flags, configs and fields that exist.

Every line of a ```bash block, and every inline `python ...` span, that runs `python SCRIPT.py ...` or `python -m MODULE ...` is
checked statically (nothing is run): the script or module exists, each `--flag` it is given is
one the script defines (absl `DEFINE_*("flag"` or argparse `add_argument("--flag"`), a
`--config FILE[:arg]` names a config file that loads, and each `--config.a.b=value` override
names a field that config has. A renamed flag, config or field then fails here, not in a
user's terminal.
"""

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(path: Path) -> list[tuple[int, list[str]]]:
  """(line number, argv after `python`) of each python command in the file's bash blocks."""
  commands, in_bash, pending, start = [], False, "", 0
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if line.startswith("```"):
      in_bash = (not in_bash) and line.strip() in ("```bash", "```sh", "```shell")
      continue
    if not in_bash:
      # Inline commands in prose: `python evaluate.py --workdir ...`.
      for span in re.findall(r"`((?:[A-Z_]+=\S+ )*python3? [^`]+)`", line):
        words = shlex.split(span.replace("...", ""))
        while words and words[0] not in ("python", "python3"):
          words = words[1:]
        if len(words) > 1 and words[1:] != ["-m"]:
          commands.append((number, words[1:]))
      continue
    if not pending:
      start = number
    pending += line.split(" #", 1)[0].rstrip()
    if pending.endswith("\\"):
      pending = pending[:-1] + " "
      continue
    text, pending = pending, ""
    for part in re.split(r"\s*(?:&&|;|\|)\s*", text):
      try:
        words = shlex.split(part)
      except ValueError:
        continue
      while words and ("=" in words[0] and not words[0].startswith("-")):
        words = words[1:]  # Environment assignments: VAR=value python ...
      if words and words[0] in ("python", "python3"):
        commands.append((start, words[1:]))
  return commands


def _script_source(argv: list[str]) -> tuple[str, list[str], str]:
  """(name, remaining args, source text) of the script or module a command runs."""
  if argv[0] == "-m":
    module = argv[1]
    if not module.startswith("draem_jax"):  # pip, pytest, venv: not the project's.
      return "external", [], ""
    candidates = [ROOT / (module.replace(".", "/") + ".py"),
                  ROOT / module.replace(".", "/") / "__main__.py"]
    found = [c for c in candidates if c.is_file()]
    assert found, f"python -m {module}: no such module in the repository"
    source = found[0].read_text()
    # A thin `python -m` shim may import its implementation: follow one level.
    for target in re.findall(r"^from (draem_jax[\w.]*) import", source, re.M):
      impl = ROOT / (target.replace(".", "/") + ".py")
      if impl.is_file():
        source += impl.read_text()
    return module, argv[2:], source
  script = ROOT / argv[0]
  assert script.is_file(), f"python {argv[0]}: no such file"
  return argv[0], argv[1:], script.read_text()


def _load_config(spec: str):
  path, _, arg = spec.partition(":")
  file = ROOT / path
  assert file.is_file(), f"--config {spec}: no such file"
  sys.path.insert(0, str(ROOT))
  try:
    module_spec = importlib.util.spec_from_file_location(f"_docs_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None) if arg else module.get_config()
  finally:
    sys.path.remove(str(ROOT))


def _has_field(config, dotted: str) -> bool:
  node = config
  for name in dotted.split("."):
    try:
      node = node[name]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


def _all_commands():
  for path in DOCS:
    for line, argv in _commands(path):
      yield pytest.param(path, line, argv, id=f"{path.relative_to(ROOT)}:{line}")


def test_the_docs_have_commands():
  assert len(list(_all_commands())) >= 10


@pytest.mark.parametrize("path,line,argv", list(_all_commands()))
def test_command_is_valid(path, line, argv):
  where = f"{path.relative_to(ROOT)}:{line}: python {' '.join(argv)}"
  name, args, source = _script_source(argv)
  if name == "external":
    return
  config = None
  i = 0
  while i < len(args):
    arg = args[i]
    i += 1
    if not arg.startswith("--"):
      continue
    flag, has_value, value = arg[2:].partition("=")
    if flag == "config" and not has_value and i < len(args):
      value, has_value = args[i], True
      i += 1
    if flag.startswith("config."):
      assert config is not None, f"{where}: --{flag} before --config"
      assert _has_field(config, flag.removeprefix("config.")), (
          f"{where}: the config has no field {flag.removeprefix('config.')}")
      continue
    if flag == "config":
      config = _load_config(value)
    bare = flag.removeprefix("no") if not re.search(rf"[\"']{flag}[\"']", source) else flag
    assert re.search(rf"""(DEFINE_\w+\(\s*["']{re.escape(bare)}["']|["']--{re.escape(bare)}["'])""",
                     source), f"{where}: {name} defines no flag --{flag}"
