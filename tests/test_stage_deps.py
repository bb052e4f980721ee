"""Stage dependencies derived from the code: every file a stage can import is a dep in dvc.yaml.

Editing any module a stage imports (even inside a function) must make `dvc status` report that
stage; otherwise the stage stays "up to date" while the code that made its outputs has changed.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT, run

SRC = PROJECT / "src"
PACKAGE = "tuneledger"


def module_file(name: str) -> Path | None:
    """The source file that defines module `name`, if it is inside the package."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement anywhere in the file can load (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, from .. import z
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names.add(base)
            # `from tuneledger import data` loads the submodule tuneledger.models.data
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def package_data(path: Path) -> set[Path]:
    """Data files or directories beside a module that it names in a string (e.g. "chat_templates")."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {
        entry
        for entry in path.parent.iterdir()
        if entry.suffix != ".py" and entry.name != "__pycache__" and entry.name in strings
    }


@cache
def import_closure(module: str) -> frozenset[Path]:
    """Source files (and package data) of every package module `module` can load, directly or not."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        for name in with_parents(todo.pop()):
            path = module_file(name)
            if path is None or path in seen:
                continue
            seen.add(path)
            seen.update(package_data(path))
            todo.extend(imported_names(path))
    return frozenset(seen)


def pipeline() -> dict:
    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    match = re.search(r"-m\s+(\S+)", stage["cmd"])
    assert match, f"stage command {stage['cmd']!r} does not run a module"
    return match.group(1)


def relative(path: Path) -> str:
    return path.relative_to(PROJECT).as_posix()


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if d.startswith("src/")}


STAGES = sorted(pipeline())


@pytest.mark.parametrize("name", STAGES)
def test_every_module_a_stage_imports_is_one_of_its_deps(name):
    stage = pipeline()[name]
    closure = {relative(p) for p in import_closure(stage_module(stage))}
    declared = code_deps(stage)
    missing, stale = sorted(closure - declared), sorted(declared - closure)
    assert not missing and not stale, (
        f"dvc.yaml stage {name!r}: add to deps {missing}; remove from deps (not imported) {stale}"
    )
    # Library versions decide outputs too (kernels, tokenizers, generation).
    assert "requirements.lock" in stage["deps"], f"stage {name!r} does not depend on requirements.lock"


def param_groups_read(path: Path) -> set[str]:
    """Params read through a `Params` argument: a group (`params.lora` used whole,
    `params.group("lora")`, every group for `params.model_dump()` but those it excludes) or one
    key of a group (`params.model.base`, read where it is used and nowhere else)."""
    from tuneledger.core.params import Params

    groups = set(Params.model_fields)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    read: set[str] = set()
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        holders = {
            a.arg
            for a in function.args.args + function.args.kwonlyargs
            if a.annotation is not None and ast.unparse(a.annotation).strip("'\"") == "Params"
        }
        for node in ast.walk(function):
            if not (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in holders
            ):
                continue
            if node.attr in groups:
                key = parents.get(node)
                read.add(f"{node.attr}.{key.attr}" if isinstance(key, ast.Attribute) else node.attr)
            elif node.attr == "model_dump":
                read.update(groups - dumped_without(function, node))
        for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
            target = call.func
            if (
                isinstance(target, ast.Attribute)
                and target.attr == "group"
                and isinstance(target.value, ast.Name)
                and target.value.id in holders
                and call.args
                and isinstance(call.args[0], ast.Constant)
            ):
                read.add(call.args[0].value)
    return read


def covered(name: str, by: set[str]) -> bool:
    """`model.base` is covered by `model.base` or the whole `model` group."""
    return name in by or name.partition(".")[0] in by


def dumped_without(function: ast.AST, method: ast.Attribute) -> set[str]:
    """The groups a `params.model_dump(exclude={...})` call leaves out."""
    for call in (n for n in ast.walk(function) if isinstance(n, ast.Call) and n.func is method):
        for keyword in call.keywords:
            if keyword.arg == "exclude" and isinstance(keyword.value, ast.Set):
                return {e.value for e in keyword.value.elts if isinstance(e, ast.Constant)}
    return set()


@pytest.mark.parametrize("name", STAGES)
def test_every_param_group_a_stage_reads_is_declared(name):
    stage = pipeline()[name]
    modules = [p for p in import_closure(stage_module(stage)) if p.suffix == ".py"]
    read = set().union(*(param_groups_read(p) for p in modules))
    declared = set(stage.get("params", []))
    missing = sorted(param for param in read if not covered(param, declared))
    assert not missing, f"dvc.yaml stage {name!r}: add params {missing}"
    groups_read = read | {param.partition(".")[0] for param in read}
    unread = sorted(param for param in declared if not covered(param, groups_read))
    assert not unread, f"dvc.yaml stage {name!r}: params {unread} are never read"


def test_the_closure_follows_imports_inside_functions():
    export = {relative(p) for p in import_closure("tuneledger.stages.export")}
    # export imports hashing at the top, base_model imports modeling inside a function, and the
    # package's __init__ imports the loader inside `load`.
    for path in (
        "core/hashing.py",
        "models/base_model.py",
        "core/git.py",
        "models/modeling.py",
        "package/loader.py",
        "__init__.py",
    ):
        assert f"src/tuneledger/{path}" in export


def stages_reported(repo: Path) -> set[str]:
    import json

    status = json.loads(run("dvc", "status", "--json", cwd=repo).stdout)
    return {name.split(":")[-1] for name in status}


def test_editing_an_imported_file_makes_dvc_status_report_its_stages(trained_repo):
    assert stages_reported(trained_repo) == set()
    stages = pipeline()
    importers = {name: {relative(p) for p in import_closure(stage_module(s))} for name, s in stages.items()}
    # A module some stages import and others do not, so the check tells them apart.
    imported_by_some = [
        f for f in sorted(set().union(*importers.values())) if not all(f in c for c in importers.values())
    ]
    edited = imported_by_some[0]
    with open(trained_repo / edited, "a", encoding="utf-8") as handle:
        handle.write("\n# an edit\n")
    assert stages_reported(trained_repo) == {n for n, files in importers.items() if edited in files}, edited
