"""The package's import order, read from the source with ``ast`` (nothing is imported).

From the bottom: ``visattn._checks`` / ``visattn._modes`` (import nothing from visattn), the
kernels (``visattn.kernels``: the fused SE / CBAM / sampler operators), the formulas
(``visattn.functional``), the layers (``visattn.layers``), then models, training, data,
visualisation and the command line. A module may import from its own layer and the ones below:

- ``visattn.kernels`` imports only other ``visattn.kernels`` modules, ``visattn._checks`` and
  ``visattn._modes``;
- ``visattn.functional`` nothing from the layers and above;
- ``visattn.layers`` nothing from the models and above.

Every ``import`` and ``from ... import`` counts, relative ones resolved, including those inside
functions (the kernels import their backends lazily). A failure names the file, the line and the
module imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "visattn"

ABOVE_LAYERS = ("models", "engine", "viz", "data", "commands", "cli", "bench")
ABOVE_FUNCTIONAL = ("layers", *ABOVE_LAYERS)
ABOVE_KERNELS = ("functional", *ABOVE_FUNCTIONAL)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative ones resolved; ``from P import n``
    counts as P.n where P is the package root ``visattn`` (n is then a subpackage or module)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "visattn":
                out += [(node.lineno, f"visattn.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, module))
    return sorted(out)


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def violations(
    folder: Path, allowed, forbidden: tuple[str, ...] = (), root: Path = SRC
) -> list[str]:
    """``file:line: imports module`` for each visattn import under ``folder`` that ``allowed``
    rejects (None: any) or that lies in a ``forbidden`` subpackage of visattn."""
    bad = []
    forbidden = tuple(f"visattn.{name}" for name in forbidden)
    for path in sorted(folder.rglob("*.py")):
        for line, module in imported_modules(path, root):
            if not _within(module, ("visattn",)):
                continue
            if _within(module, forbidden) or (allowed is not None and not allowed(module)):
                bad.append(f"{path.relative_to(root)}:{line}: imports {module}")
    return bad


def _kernel_may_import(module: str) -> bool:
    return _within(module, ("visattn.kernels", "visattn._checks", "visattn._modes"))


def test_kernels_import_only_kernels_checks_and_modes():
    assert list(PACKAGE.joinpath("kernels").rglob("*.py")), "no kernel modules found"
    bad = violations(PACKAGE / "kernels", _kernel_may_import, ABOVE_KERNELS)
    assert not bad, "visattn.kernels must not import these:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["_checks.py", "_modes.py"])
def test_bottom_modules_import_nothing_from_visattn(name):
    bad = [f"{name}:{line}: imports {m}" for line, m in imported_modules(PACKAGE / name)
           if _within(m, ("visattn",))]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_functional_imports_nothing_from_layers_and_above():
    bad = violations(PACKAGE / "functional", None, ABOVE_FUNCTIONAL)
    assert not bad, "visattn.functional must not import these:\n" + "\n".join(bad)


def test_layers_import_nothing_from_models_and_above():
    bad = violations(PACKAGE / "layers", None, ABOVE_LAYERS)
    assert not bad, "visattn.layers must not import these:\n" + "\n".join(bad)


def test_the_check_sees_relative_and_function_level_imports(tmp_path):
    """A lazy relative import of the formulas inside a kernel function, and an absolute one of
    the layers, are both reported with file, line and module."""
    kernels = tmp_path / "visattn" / "kernels"
    kernels.mkdir(parents=True)
    (kernels / "bad.py").write_text(
        "from . import cpu\n"
        "from .. import _modes\n"
        "def f():\n"
        "    from ..functional import fused\n"
        "    import visattn.layers.cbam\n"
        "    from .. import models\n"
    )
    bad = violations(kernels, _kernel_may_import, ABOVE_KERNELS, root=tmp_path)
    assert bad == [
        "visattn/kernels/bad.py:4: imports visattn.functional",
        "visattn/kernels/bad.py:5: imports visattn.layers.cbam",
        "visattn/kernels/bad.py:6: imports visattn.models",
    ]
