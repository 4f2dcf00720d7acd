"""The packages under scripts/ (``sweeps``, ``bench``) have one import name each, the one ``python scripts/X.py``
sees (scripts/ first on the path; pytest.ini puts it on the tests' path), and ``sweeps`` imports nothing from the
engine or the apps but the run status type: it drives them through their command lines only."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("sweeps", "bench")
ENGINE_AND_APPS = ("mezo_engine", "large_models", "medium_models")
# What sweeps may import of the engine and the apps, standard library modules both (tests/test_status.py checks that
# importing sweeps loads neither torch nor transformers): the Status type the runner writes and the sweeps read, and
# the digest of a task file and its data files, which a point's name covers as run.py's result name does.
SHARED = {"mezo_engine.status", "mezo_engine.status.Status", "mezo_engine.status.Kind", "large_models",
          "large_models.task_file"}


def _imported(path: Path) -> list[str]:
    """The absolute module names ``path`` imports (``from X import ...``, ``import X``, the names of ``from scripts
    import X`` spelled out)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def _python_files() -> list[Path]:
    return [p for d in ("scripts", "tests", "mezo_engine", "large_models", "medium_models")
            for p in (REPO / d).rglob("*.py")]


def test_script_packages_are_imported_by_one_name():
    second = [f"{p.relative_to(REPO)}: {name}" for p in _python_files() for name in _imported(p)
              if any(name == f"scripts.{pkg}" or name.startswith(f"scripts.{pkg}.") for pkg in PACKAGES)]
    assert not second, "import these as sweeps / bench, not through scripts.:\n" + "\n".join(second)


def test_sweeps_imports_nothing_from_the_engine_or_the_apps():
    found = [f"{p.relative_to(REPO)}: {name}" for p in (REPO / "scripts" / "sweeps").glob("*.py")
             for name in _imported(p) if name.split(".")[0] in ENGINE_AND_APPS and name not in SHARED]
    assert not found, "\n".join(found)
