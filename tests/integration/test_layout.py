"""The layout's import rules (docs/design.md, "Layout"), checked on every module's source with `ast`.

- medclm_jax's library packages never import data_gen; only the commands that compose both halves do
  (`COMPOSING_COMMANDS`: the demo, and predict, which reads a user's DICOM / NIfTI / PNG with data_gen's readers).
- nothing under medclm_jax/model/ imports medclm_jax.train.
- medclm_jax/records/ (the record contract both halves share) imports neither jax nor data_gen nor the rest of
  medclm_jax, so data_gen workers can use it without JAX.
- data_gen never imports jax (its workers run without it), and from medclm_jax only what is free of jax.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JAX_FAMILY = ("jax", "jaxlib", "flax", "optax", "orbax", "grain", "torch")
# What data_gen may import from medclm_jax: modules that are free of jax.
DATA_GEN_MAY_IMPORT = ("medclm_jax.records", "medclm_jax.config_file", "medclm_jax.cli")
# Command modules that compose both halves (library code never does).
COMPOSING_COMMANDS = {"medclm_jax/commands/demo.py", "medclm_jax/commands/predict.py"}


def _modules(package: str) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        out += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(out)


def _module_name(rel: str) -> str:
    name = rel[:-3].replace(os.sep, ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _imports(rel: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative imports resolved, local ones included."""
    with open(os.path.join(ROOT, rel)) as f:
        tree = ast.parse(f.read(), rel)
    package = _module_name(rel) if rel.endswith("__init__.py") else _module_name(rel).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.append((node.lineno, base))
            # `from pkg import submodule` imports pkg.submodule
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.append((node.lineno, str(node.args[0].value)))
    return out


def _violations(files: list[str], forbidden) -> list[str]:
    return [f"{rel}:{line} imports {name}" for rel in files for line, name in _imports(rel) if forbidden(name)]


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_scan_finds_imports():
    """The checker itself: it sees plain, from-, relative and lazy imports (else every rule below passes vacuously)."""
    names = {n for _, n in _imports("medclm_jax/cli.py")}
    assert "importlib" in names
    names = {n for _, n in _imports("data_gen/pipeline.py")}
    assert {"data_gen.splits", "medclm_jax.records.schema", "data_gen.link"} <= names
    assert len(_modules("medclm_jax")) > 30 and len(_modules("data_gen")) > 30


def test_medclm_jax_library_never_imports_data_gen():
    files = [f for f in _modules("medclm_jax") if f not in COMPOSING_COMMANDS]
    assert _violations(files, lambda n: _under(n, "data_gen")) == []


def test_model_never_imports_train():
    assert _violations(_modules("medclm_jax/model"), lambda n: _under(n, "medclm_jax.train")) == []


def test_records_import_neither_jax_nor_data_gen_nor_the_rest_of_medclm_jax():
    bad = lambda n: (_under(n, *JAX_FAMILY, "data_gen")  # noqa: E731
                     or (_under(n, "medclm_jax") and not _under(n, "medclm_jax.records")))
    assert _violations(_modules("medclm_jax/records"), bad) == []


def test_data_gen_imports_no_jax_and_only_jax_free_medclm_jax_modules():
    bad = lambda n: _under(n, *JAX_FAMILY) or (_under(n, "medclm_jax") and n != "medclm_jax"  # noqa: E731
                                                and not _under(n, *DATA_GEN_MAY_IMPORT))
    assert _violations(_modules("data_gen"), bad) == []


def test_importing_the_record_contract_and_a_data_gen_worker_loads_no_jax():
    code = ("import sys, medclm_jax.records.schema, medclm_jax.records.shards, medclm_jax.records.overlay, "
            "data_gen.pipeline, data_gen.runners.shards; "
            f"bad = [m for m in {JAX_FAMILY!r} if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("package", ["medclm_jax", "data_gen"])
def test_no_subpackage_shadows_the_standard_library(package):
    """A subpackage named like a stdlib module (data_gen/io/ was one) shadows it for code inside the package."""
    subpackages = {os.path.relpath(d, ROOT) for d, _, files in os.walk(os.path.join(ROOT, package))
                   if "__init__.py" in files}
    assert len(subpackages) > 3
    assert sorted(p for p in subpackages if os.path.basename(p) in sys.stdlib_module_names) == []
