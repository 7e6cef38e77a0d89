"""The package's layout: the network does not import the code that uses it,
and every function fits on a screen. Read from the source with `ast`, so
function-local imports count as much as those at the top of a module."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cm_unet_keras"
# The stages that build on the models; models/* import none of them.
ABOVE_MODELS = ("inference", "selection", "training", "evaluation", "export", "tuning", "experiments", "annotate", "cli", "demo")


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path, modules):
    """Every package module `path` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def _closure(start, modules):
    """The package modules `start` reaches through imports (its own included only through a circle)."""
    reached, todo = set(), [start]
    while todo:
        for imported in _imports(modules[todo.pop()], modules):
            if imported not in reached:
                reached.add(imported)
                todo.append(imported)
    return reached


def test_models_import_nothing_from_the_stages_above_them():
    modules = _modules()
    above = tuple(f"cm_unet_keras.{stage}" for stage in ABOVE_MODELS)
    offending = {
        name: sorted(imported for imported in _imports(path, modules) if imported.startswith(above))
        for name, path in modules.items() if name.startswith("cm_unet_keras.models")
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_the_network_reaches_no_module_that_imports_it():
    modules = _modules()
    reached = _closure("cm_unet_keras.models.unet", modules)
    assert "cm_unet_keras.models.unet" not in reached  # no circle back to the network
    assert not {"cm_unet_keras.models.pretrainer", "cm_unet_keras.models.loading"} & reached
    assert not [name for name in reached if name.startswith(tuple(f"cm_unet_keras.{s}" for s in ABOVE_MODELS))]
    assert "cm_unet_keras.models.segmentation" in reached  # from_preset and segment stand on it


def test_selection_stands_on_the_stages_below_it():
    """Selection reads the cine curve from `data` and the model from
    `models`, never the output modules of `predict`; nothing below it
    (data, models, training, inference) imports it."""
    modules = _modules()
    below = ("cm_unet_keras.core", "cm_unet_keras.data", "cm_unet_keras.models", "cm_unet_keras.training",
             "cm_unet_keras.inference")
    importing = sorted(name for name, path in modules.items() if name.startswith(below)
                       and any(imported.startswith("cm_unet_keras.selection") for imported in _imports(path, modules)))
    assert importing == []
    selection = {name: _imports(path, modules) for name, path in modules.items()
                 if name.startswith("cm_unet_keras.selection")}
    assert [name for name, imported in selection.items() if "cm_unet_keras.inference.video" in imported] == []
    assert "cm_unet_keras.data.filling_curve" in selection["cm_unet_keras.selection.strategies"]


def test_no_function_is_longer_than_a_screen():
    too_long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert too_long == []
