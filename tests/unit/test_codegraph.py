"""The code identity of a computation (``codegraph.py``, ``fingerprint.code_identity``): which
files count, which edits change a file's digest, and that the source read is the one the
interpreter imports (a non-editable install included). The cache's use of it is in
test_caching_rules.py and tests/pipelines/test_caching.py."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maskdm_pipeline import codegraph
from maskdm_pipeline.fingerprint import UNKEYED_LIBRARIES, code_identity

SRC = Path(__file__).resolve().parents[2] / "src"
PRETRAIN = "maskdm_pipeline.pipelines.pretrain"

CODE = '''"""A module."""

import math  # the standard library


class Scale:
    """Multiply."""

    def __call__(self, x):
        """Scale ``x``."""
        return 2 * x  # twice


def area(r):
    return math.pi * r ** 2
'''


def _digest(source: str) -> str:
    return codegraph.digest(ast.parse(source))


def test_comments_docstrings_and_layout_leave_the_digest_as_it_was() -> None:
    same = [
        CODE.replace("# twice", "# doubled, as the paper does"),
        CODE.replace('"""A module."""', '"""Another text, over\ntwo lines."""'),
        CODE.replace('"""Multiply."""', '"""Multiply by two."""').replace('"""Scale ``x``."""', "'''x, scaled'''"),
        CODE.replace('    """Multiply."""\n\n', ""),  # a docstring removed
        CODE.replace("return math.pi * r ** 2", "return (\n        math.pi * r**2\n    )\n\n\n"),
    ]
    assert {_digest(source) for source in same} == {_digest(CODE)}


@pytest.mark.parametrize("edit", [("2 * x", "3 * x"), ("math.pi", "3.14"), ("def area(r)", "def area(radius)"),
                                  ('"""Multiply."""', '"""Multiply."""\n    factor = 2')])
def test_any_edit_of_what_runs_changes_the_digest(edit: tuple[str, str]) -> None:
    assert _digest(CODE.replace(*edit)) != _digest(CODE)


def _package(root: Path, files: dict[str, str]) -> dict[str, codegraph.Module]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return codegraph.read_package(root, "pkg")


def test_the_closure_follows_imports_lazy_ones_too_and_counts_the_packages_above_by_their_own_file(
        tmp_path: Path) -> None:
    modules = _package(tmp_path, {
        "__init__.py": "",
        "stage.py": "from pkg.engine.config import C\ndef run():\n    from . import lazy\n",
        "lazy.py": "import numpy\nfrom pkg import tools\n",
        "tools.py": "import json\n",
        "engine/__init__.py": "from .loop import train\n",  # runs on import, but stage uses config alone
        "engine/config.py": "C = 1\n",
        "engine/loop.py": "import torch\ndef train(): ...\n",
        "unrelated.py": "import pkg.stage\n",
    })
    assert codegraph.closure(modules, ["pkg.stage"]) == [
        "pkg", "pkg.engine", "pkg.engine.config", "pkg.lazy", "pkg.stage", "pkg.tools"]
    assert codegraph.closure(modules, ["pkg.engine"]) == ["pkg", "pkg.engine", "pkg.engine.loop"]
    code, libraries = code_identity(["pkg.stage", "json"], modules)
    assert sorted(code) == ["__init__.py", "engine/__init__.py", "engine/config.py", "lazy.py", "stage.py",
                            "tools.py"]
    assert code["stage.py"] == modules["pkg.stage"].digest
    # numpy is a library the code imports; json is the standard library; torch is not imported here
    assert set(libraries) == {"python", "numpy"}
    assert libraries["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_a_training_part_is_keyed_by_torch_and_its_engine_not_by_the_wiring_libraries() -> None:
    code, libraries = code_identity([PRETRAIN])
    assert {"training/loop.py", "training/builders.py", "models/uvit.py", "pipelines/pretrain/nodes.py"} <= set(code)
    assert not {f for f in code if f.startswith(("caching/", "reporting/", "pipelines/sample"))}
    assert "tracking/mlflow_hook.py" not in code and "settings.py" not in code
    assert {"torch", "numpy", "ema_pytorch"} <= set(libraries)
    assert not set(UNKEYED_LIBRARIES) & set(libraries)
    assert libraries["torch"] == importlib.metadata.version("torch")


def test_the_repositorys_tree_and_the_imported_package_are_read_alike() -> None:
    """In this checkout the interpreter imports src/ (an editable install or PYTHONPATH)."""
    assert codegraph.installed() == codegraph.read_package(SRC / "maskdm_pipeline")


_IDENTITY = ("import json, sys, maskdm_pipeline; from maskdm_pipeline.fingerprint import code_identity; "
             f"print(json.dumps([maskdm_pipeline.__file__, code_identity([{PRETRAIN!r}])]))")


def _identity_in(path: Path) -> tuple[str, dict[str, str], dict[str, str]]:
    """(where ``maskdm_pipeline`` was imported from, code, libraries) in a fresh interpreter whose
    ``sys.path`` starts with ``path`` (and not with this checkout's src/)."""
    env = {"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin", "KEDRO_DISABLE_TELEMETRY": "1"}
    out = subprocess.run([sys.executable, "-c", _IDENTITY], env=env, capture_output=True, text=True, timeout=120,
                         cwd=path)
    assert out.returncode == 0, out.stderr[-2000:]
    where, (code, libraries) = json.loads(out.stdout.splitlines()[-1])
    return where, code, libraries


@pytest.mark.slow
def test_a_non_editable_install_is_keyed_by_the_files_it_installed(tmp_path: Path) -> None:
    """``pip install --no-deps --target``: a wheel built from this checkout (as ``kedro package``
    builds one) and installed as files, imported from there: the same identity as the checkout
    (new paths, new modification times), and an edit of an installed module is seen."""
    project = tmp_path / "project"  # what the wheel is built from: the package and its metadata
    shutil.copytree(SRC, project / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(SRC.parent / name, project / name)
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--quiet", "--target", str(target), str(project)], capture_output=True, text=True,
                         timeout=300)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    where, code, libraries = _identity_in(target)
    assert Path(where).is_relative_to(target)
    assert (code, libraries) == code_identity([PRETRAIN])
    loop = target / "maskdm_pipeline" / "training" / "loop.py"
    loop.write_text(loop.read_text() + "\n\ndef _edited():\n    return 1\n")
    edited, _ = code_identity([PRETRAIN], codegraph.read_package(target / "maskdm_pipeline"))
    assert [f for f in code if edited[f] != code[f]] == ["training/loop.py"]
