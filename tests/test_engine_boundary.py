"""The engine holds no app code: no module of ``mezo_engine/`` reads a flag that only an app declares.

Every ``args.X``, ``self.args.X`` and ``getattr(args, "X")`` in the engine must name something the engine's own
arguments declare: a field of ``EngineArguments`` (with ``TrainingArguments`` under it), a property or method, or
an attribute its ``__post_init__`` sets. The allowed names come from an instance, not from a list kept by hand, so
a flag added to ``EngineArguments`` is allowed at once and a flag added to an app (``large_models.arguments``,
``medium_models.arguments``) is not. What the engine needs of an app it takes as an explicit parameter or config
(``evaluation.EvalConfig``, an objective, an evaluator).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mezo_engine.arguments import EngineArguments

ENGINE = Path(__file__).resolve().parent.parent / "mezo_engine"


@pytest.fixture(scope="module")
def engine_names() -> set[str]:
    """What an ``EngineArguments`` offers: fields, properties, methods, attributes set while validating."""
    return set(dir(EngineArguments()))


def _is_args(node: ast.AST) -> bool:
    """``args`` or ``self.args``."""
    if isinstance(node, ast.Name):
        return node.id == "args"
    return isinstance(node, ast.Attribute) and node.attr == "args" and isinstance(node.value, ast.Name) \
        and node.value.id == "self"


def flag_reads(tree: ast.AST):
    """Yield (line, name) for every ``args.X``, ``self.args.X`` and ``getattr(args, "X"[, default])``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_args(node.value):
            yield node.lineno, node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and len(node.args) >= 2 and _is_args(node.args[0]) and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str)):
            yield node.lineno, node.args[1].value


def test_walk_finds_every_form():
    """The walk itself: all three forms are seen, other names are not."""
    source = "args.a\nself.args.b\ngetattr(args, 'c', 0)\nother.d\nself.e\ngetattr(args, name)\n"
    assert sorted(flag_reads(ast.parse(source))) == [(1, "a"), (2, "b"), (3, "c")]


def test_engine_reads_only_engine_flags(engine_names):
    """No engine module reads a flag only an app declares; the message names each file, line and flag."""
    found = [f"mezo_engine/{path.name}:{line}: args.{name}"
             for path in sorted(ENGINE.glob("**/*.py"))
             for line, name in flag_reads(ast.parse(path.read_text(encoding="utf-8")))
             if name not in engine_names]
    assert not found, "the engine reads app-only flags (pass them in an explicit config):\n" + "\n".join(found)
