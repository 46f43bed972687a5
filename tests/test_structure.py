"""The package's structure: one owner per file the pipeline writes, no reaching into private names.

These read the source, as a reviewer would: each check names the module that breaks it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vqa"
TESTS = Path(__file__).resolve().parent
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 450

# Every file the pipeline writes, and the module that alone may spell its name.
OWNERS = {
    "preprocess.json": "manifest.py",
    "answers.json": "answers.py",
    "vocab.json": "text.py",
    "embeddings.h5": "text.py",
    "tokenizer.msgpack": "text.py",
    "backbone.json": "backbone.py",
    "backbone.keras": "backbone.py",
    "questions.h5": "split_files.py",
    "questions.txt": "split_files.py",
    "question_ids.txt": "split_files.py",
    "answer_types.txt": "split_files.py",
    "question_types.txt": "split_files.py",
    "answers.txt": "split_files.py",
    "image_ids.txt": "split_files.py",
    "image_features.h5": "features.py",
    "grid_features.h5": "grid_features.py",
    "region_features.h5": "regions.py",
    "config.json": "config.py",
    "run.json": "run_folder.py",
    "model.keras": "run_folder.py",
    "metrics.json": "run_folder.py",
    "history.csv": "run_folder.py",
    "model_summary.txt": "run_folder.py",
    "last.keras": "checkpoints.py",
    "state.json": "checkpoints.py",
    "environment.json": "environment.py",
    "seeds.json": "seeds.py",
    ".vqa.lock": "locks.py",
    "submission.json": "submit.py",
    "v2_OpenEnded_mscoco_": "layout.py",
    "v2_mscoco_": "layout.py",
    "COCO_": "layout.py",
}


def _relative(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


@pytest.mark.parametrize("name, owner", sorted(OWNERS.items()))
def test_each_file_name_is_spelled_by_its_owner_alone(name, owner):
    spelled_in = [_relative(path) for path in MODULES if name in path.read_text(encoding="utf-8")]
    assert spelled_in == [owner], f"{name} is spelled in {spelled_in}; only {owner} should spell it"


def _imported_vqa_modules(tree: ast.Module) -> set[str]:
    """Local names bound to vqa modules (``from vqa import text as text_lib`` -> text_lib)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vqa":
            for alias in node.names:
                if node.module == "vqa" or (PACKAGE / node.module.split(".", 1)[-1].replace(".", "/")).is_dir():
                    names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "vqa" and alias.asname:
                    names.add(alias.asname)
    return names


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_no_module_uses_another_modules_private_names(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = _imported_vqa_modules(tree)
    offences = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vqa"):
            offences += [f"from {node.module} import {a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__")]
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            offences.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
    assert not offences, f"{_relative(path)} reaches into private names: {offences}"


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_modules_stay_small(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_relative(path)} has {lines} lines; split it along its seams"


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_test_files_do_not_import_each_other(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    wrong = [name for name in imported if name.split(".")[-1].startswith("test_") or name.endswith("conftest")]
    assert not wrong, f"{path.name} imports {wrong}: shared builders belong in tests/helpers.py"
