"""The package tree shows the layers, and the layers hold: model code, the on-disk contract,
the evaluation and the configs never import Ray or the Ray layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
RAY_FREE = ("models", "store", "evaluation", "stages")
"""Subpackages that import neither Ray nor ``pipeline.distributed``."""
RAY_FREE_TOP = (
    "config.py",
    "engine_config.py",
    "job_config.py",
    "api.py",
    "logs.py",
    "__init__.py",
)
ENTRY = "cli.py"
"""The top layer, the ``dvt`` command that the job files run: Ray-free when imported (``dvt
--help`` is quick); each command imports the Ray layer inside its function."""
LAZY_RAY = {("store/readers.py", "read_features")}
"""(file, function) pairs allowed to import Ray inside the function: readers that hand back a
Ray Dataset import it only when called."""


def ray_free_files() -> list[Path]:
    files = [path for sub in RAY_FREE for path in sorted((PACKAGE / sub).glob("*.py"))]
    return files + [PACKAGE / name for name in RAY_FREE_TOP]


def imported_modules(tree: ast.Module) -> list[tuple[str, str | None]]:
    """(module imported, enclosing function or None) for every import in a module."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = (
                child.name
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                else function
            )
            if isinstance(child, ast.Import):
                found.extend((alias.name, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                assert not child.level, "relative imports hide the layer: write pipeline.x.y"
                found.append((child.module or "", function))
                if child.module == "pipeline":  # from pipeline import distributed
                    found.extend((f"pipeline.{alias.name}", function) for alias in child.names)
            visit(child, inner)

    visit(tree, None)
    return found


def test_layers_are_folders() -> None:
    """Every module sits in its layer's folder: the top level holds only configs, the API and
    where log lines go (``logs``, which imports nothing of the package)."""
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert top == sorted((*RAY_FREE_TOP, ENTRY)), top
    for sub in (*RAY_FREE, "distributed"):
        assert (PACKAGE / sub / "__init__.py").is_file(), sub


@pytest.mark.parametrize("path", ray_free_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_lower_layers_never_import_ray(path: Path) -> None:
    name = str(path.relative_to(PACKAGE))
    for module, function in imported_modules(ast.parse(path.read_text())):
        assert not module.startswith("pipeline.distributed"), f"{name} imports {module}"
        if module == "ray" or module.startswith("ray."):
            assert (name, function) in LAZY_RAY, f"{name} imports {module} in {function}"
        if name.startswith("models/"):
            assert not module.startswith("pipeline.evaluation"), f"{name} imports {module}"


LAYER_IMPORTS = {
    "logs": set(),
    "config": {"config"},
    "engine_config": {"config", "engine_config"},
    "store": {"config", "store"},
    "models": {"config", "engine_config", "store", "models"},
    "job_config": {"config", "engine_config", "store", "models", "job_config"},
    "stages": {"config", "engine_config", "store", "models", "job_config", "stages"},
    "evaluation": {"config", "engine_config", "store", "models", "job_config", "evaluation"},
}
"""Layer -> the layers its modules may import, lowest first: the config machinery, the engine's
configs (the on-disk contract needs neither the engine nor anything above), the models, the job
configs, then the Ray-free stages and the evaluation side by side (neither imports the other).
Nothing below ``distributed`` imports it (``test_lower_layers_never_...``)."""


def layer_of(module: str) -> str:
    """``pipeline.store.runs`` -> ``store``; ``pipeline.job_config`` -> ``job_config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pipeline"


@pytest.mark.parametrize("layer", sorted(LAYER_IMPORTS))
def test_lower_layers_import_only_downward(layer: str) -> None:
    """The import direction holds among the lower layers: the store imports no model (so a
    reader never loads torch), models import no stage or measure, and so on."""
    files = (
        [PACKAGE / f"{layer}.py"]
        if (PACKAGE / f"{layer}.py").is_file()
        else sorted((PACKAGE / layer).glob("*.py"))
    )
    assert files, layer
    for path in files:
        for module, _ in imported_modules(ast.parse(path.read_text())):
            if module == "pipeline" or module.startswith("pipeline."):
                assert layer_of(module) in LAYER_IMPORTS[layer], (
                    f"{path.relative_to(PACKAGE)} imports {module}"
                )


STORE_IMPORTS = (
    "numpy",
    "pyarrow",
    "fsspec",
    "safetensors.numpy",
    "pipeline.config",
    "pipeline.store",
)
"""What the store may import besides the standard library (``sys.stdlib_module_names``);
safetensors' numpy half for artifact-model files, inside their functions."""
STORE_LAZY = {
    ("store/readers.py", "read_features"): "ray",
    ("store/readers.py", "__getitem__"): "torch",
}
"""Imports the store makes only inside a function: the Ray Dataset reader, and the torch
tensors of ``FeatureDataset`` items."""


def test_store_imports_only_its_formats() -> None:
    """The on-disk contract needs only the standard library, numpy, pyarrow, fsspec,
    safetensors (numpy) and the configs: never a model, a stage, the evaluation, the job
    configs or the Ray layer, so a reader of the outputs installs and loads nothing heavier."""
    for path in sorted((PACKAGE / "store").glob("*.py")):
        name = str(path.relative_to(PACKAGE))
        for module, function in imported_modules(ast.parse(path.read_text())):
            top = module.split(".")[0]
            if top == "__future__" or top in sys.stdlib_module_names:
                continue
            if STORE_LAZY.get((name, function)) == top:
                continue
            assert any(module == m or module.startswith(m + ".") for m in STORE_IMPORTS), (
                f"{name} imports {module}"
            )


def test_the_entry_point_imports_the_ray_layer_only_inside_its_commands() -> None:
    for module, function in imported_modules(ast.parse((PACKAGE / ENTRY).read_text())):
        if module == "ray" or module.startswith(("ray.", "pipeline.distributed")):
            assert function, f"{ENTRY} imports {module} when it is imported"


def test_importing_every_lower_module_loads_no_ray() -> None:
    """A training script that imports the library, its readers and its measures never pays
    for (or depends on) Ray."""
    modules = [
        ".".join(("pipeline", *path.relative_to(PACKAGE).with_suffix("").parts))
        for path in ray_free_files()
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name.removesuffix('.__init__'))\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_reader_and_writer_tasks_never_import_torch() -> None:
    """What Ray's reader actors and write tasks import (the read stage, the sink, the store,
    the package itself) leaves torch and timm out: they start in a fraction of a second and
    stay small on CPU nodes. The public names still load on first use."""
    code = (
        "import sys\n"
        "import pipeline, pipeline.stages.read, pipeline.distributed.sink\n"
        "assert not hasattr(pipeline, 'no_such_name')  # a probe loads nothing either\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)\n"
        "from pipeline import clean_images, load_extractor\n"
        "print(heavy, 'torch' in sys.modules, callable(clean_images))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[] True True", out.stdout + out.stderr


def test_public_names_are_the_api_modules() -> None:
    """``pipeline.api`` is the one list: each of its names loads from ``pipeline``, and
    nothing else does."""
    import pipeline
    import pipeline.api

    names = [n for n in vars(pipeline.api) if not n.startswith("_") and n != "annotations"]
    assert len(names) == 14 and "clean_images" in names and "DenoisedViT" in names
    assert sorted(names) == pipeline.__all__  # read from api.py's source, without importing it
    for name in names:
        assert getattr(pipeline, name) is getattr(pipeline.api, name)
        assert getattr(pipeline, name).__name__ == name
    assert set(names) <= set(dir(pipeline))
    with pytest.raises(AttributeError):
        _ = pipeline.no_such_name
