"""The commands in README.md and docs/*.md parse, and their links resolve.

Commands are taken from fenced ```bash blocks (one a line; a ``cd DIR`` line sets the folder of the lines after it)
and from inline code spans that run a driver, a run.py or a script (`MODE=lora TASK=SST2 bash mezo.sh`,
`python large_models/run.py ...`, `python scripts/sweep.py ...`). Each is checked without loading a model or
touching ../shared, the network or a GPU:

* run.py (``python .../run.py``, ``torchrun ... run.py``): through the app's own parser
  (``large_models.arguments.Arguments`` or ``medium_models.arguments.Arguments``), validation included. A
  command with a placeholder (``...``, ``N``, ``<dir>``) has only its flag names checked. Refusals that only a
  machine without CUDA makes (``--fsdp without CUDA``) are accepted: those commands are for GPU machines.
* drivers (``bash mezo.sh`` and the others): the variable names against those the drivers read (fast), then the
  driver itself runs with a stand-in ``python`` on PATH that writes down the run.py flags it was given; its own
  checks (``MODE``, ``TASK``, ``LP``, ``NUM_GPU``, ``FSDP``, ``K``, ``SEED``) run for real and the flags go through
  the app's parser as above (marked slow: it starts the shell drivers). ``DATA_DIR`` is pointed at an empty
  folder of the layout the driver expects.
* ``scripts/sweep.py``: its own parser, and ``--dry-run`` in this process on the sweep files that exist.
* other ``scripts/*.py`` and ``examples/*.py``: every ``--flag`` must be declared by an ``add_argument`` in the script or its module.
* ``python -m pytest``: the test files it names exist.

What cannot be parsed is skipped through ``SKIPPED``, each entry with its reason and the number of commands it
covers, so that a new unchecked command has to be added there by name. The relative links of the same files must
point to files that exist and, with ``#anchor``, to a heading there (GitHub's anchor rules).
"""
from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Commands no parser here checks: a prefix of the command -> (why, how many commands of the docs it covers).
SKIPPED = {
    "pip ": ("installs packages: needs the network", 1),
    "apt-get ": ("installs system packages: needs root and the network", 1),
    "export ": ("sets the shell's environment; nothing to parse", 1),
    "bash scripts/slurm_local_cluster.sh": ("starts or stops SLURM daemons: needs root", 2),
    "torchrun --standalone": ("the launcher the drivers use for NUM_GPU > 1, named without run.py", 1),
    "bash scripts/gpu_check.sh": ("needs a CUDA GPU; tests/test_gpu_check.py covers its flags and CPU refusal", 2),
    "git worktree add ": ("makes a worktree of this repository (git, not the project)", 1),
    "git -C ../race checkout ": ("copies the main checkout's race scheduler into that worktree (git)", 1),
    "mkdir -p ": ("makes a folder; nothing to parse", 1),
    "cp -r ": ("copies files; nothing to parse", 1),
}
DRIVERS = {"mezo.sh", "finetune.sh", "icl.sh", "finetune_fsdp.sh"}
# Environment variables a command may set that no driver script reads.
OTHER_VARIABLES = {
    "OMP_NUM_THREADS": "torch's threads",
    "MEZO_CACHE": "the downloaded- and converted-model cache (mezo_engine/cache.py)",
    "CUDA_VISIBLE_DEVICES": "the GPUs a run sees",
    "SLURM_CONF": "where SLURM's tools find the cluster",
    "PYTHONPATH": "where Python looks for the project's code first (a worktree's)",
}
# Refusals that only say "no CUDA on this machine": the commands that meet them are meant for GPU machines.
CUDA_ONLY = ("without CUDA", "needs CUDA")
PLACEHOLDER = re.compile(r"^(\.\.\.|[A-Z]|<.*>|.*\.\.\..*)$")


@dataclass
class Command:
    doc: str  # the file and line it comes from, for messages
    text: str
    cwd: str = "."  # relative to the repository, from a `cd` before it
    inline: bool = False  # from an inline code span: a fragment whose context may be in the prose
    env: dict = field(default_factory=dict)
    argv: list = field(default_factory=list)

    def __post_init__(self):
        words = shlex.split(self.text, comments=True)
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            name, value = words.pop(0).split("=", 1)
            self.env[name] = value
        self.argv = words

    @property
    def elided(self) -> bool:
        return any(PLACEHOLDER.match(w) for w in self.argv)

    def __str__(self):
        return f"{self.doc}: {self.text}"


# ---- extraction ---------------------------------------------------------------------------------------------
FENCE = re.compile(r"^```(\w*)")
INLINE = re.compile(r"`([^`]+)`")
RUNS_SOMETHING = re.compile(r"(^|\s)(bash \S+\.sh|python (-m pytest|\S+\.py)|torchrun |run\.py )")


def extract(path: Path) -> list[Command]:
    """Every command of one Markdown file: the lines of its bash blocks and its inline spans that run something."""
    name = path.relative_to(REPO).as_posix()
    commands, prose, block, cwd, held = [], [], None, ".", ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        prose.append(line if block is None and not line.startswith("```") else "")  # keeps the line numbers
        if line.startswith("```"):
            block, cwd = (FENCE.match(line).group(1) if block is None else None), "."
        elif block == "bash" and line.endswith("\\"):
            held += line[:-1] + " "  # continued on the next line
        elif block == "bash":
            line, held = held + line.strip(), ""
            for part in (p.strip() for p in line.split(" #")[0].split("&&")):
                if part.startswith("cd "):
                    cwd = part[3:].strip()
                elif part and not part.startswith("#"):
                    commands.append(Command(f"{name}:{number}", part, cwd))
    text = "\n".join(prose)
    for span in INLINE.finditer(text):
        code, number = " ".join(span.group(1).split()), text.count("\n", 0, span.start()) + 1
        if RUNS_SOMETHING.search(code):
            commands.extend(_inline(f"{name}:{number}", code))
    return commands


def _inline(where: str, code: str) -> list[Command]:
    """The commands of one inline span (`cd large_models && MODE=ft TASK=SST2 bash mezo.sh`: one, in large_models)."""
    cwd, out = ".", []
    for part in (p.strip() for p in code.split("&&")):
        if part.startswith("cd "):
            cwd = part[3:].strip()
        else:
            out.append(Command(where, part, cwd, inline=True))
    return out


@cache
def all_commands() -> tuple[Command, ...]:
    return tuple(c for doc in DOCS for c in extract(doc))


def skip_reason(command: Command) -> str | None:
    return next((prefix for prefix in SKIPPED if command.text.startswith(prefix)), None)


def kind(command: Command) -> str:
    """driver, run.py, sweep, script, pytest or skipped (or 'unknown': the test fails on it)."""
    if skip_reason(command):
        return "skipped"
    argv = command.argv
    if argv[:1] == ["bash"] and Path(argv[1]).name in DRIVERS:
        return "driver"
    if any(w.endswith("run.py") for w in argv[:4]) and argv[0] in ("python", "torchrun", "run.py"):
        return "run.py"
    if argv[:3] == ["python", "-m", "pytest"]:
        return "pytest"
    if argv[:2] == ["python", "scripts/sweep.py"]:
        return "sweep"
    if argv[:1] == ["python"] and argv[1].startswith(("scripts/", "examples/")) and argv[1].endswith(".py"):
        return "script"
    return "unknown"


# ---- parsing run.py flags -----------------------------------------------------------------------------------
@cache
def parser_of(app: str):
    from transformers import HfArgumentParser
    if app == "medium":
        from medium_models.arguments import Arguments
    else:
        from large_models.arguments import Arguments
    return HfArgumentParser(Arguments)


def app_of(run_py: str, cwd: str) -> str:
    return "medium" if "medium_models" in str(Path(cwd) / run_py) else "large"


def run_py_problems(app: str, flags: list[str], names_only: bool) -> list[str]:
    """What the app's parser says of these flags (empty: they parse). ``names_only``: only whether each flag
    exists (for a command with placeholders)."""
    parser = parser_of(app)
    if names_only:
        known = parser._option_string_actions
        return [f"unknown flag {w}" for w in flags if w.startswith("--") and w.split("=")[0] not in known]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # --load_float16 without CUDA: float32, with a warning
            parser.parse_args_into_dataclasses(args=flags)
    except SystemExit:  # argparse: a bad value or choice
        return [stderr.getvalue().strip().splitlines()[-1]]
    except ValueError as err:  # ArgumentError (the app's checks) or unknown flags
        lines = [line.strip() for line in str(err).splitlines()[1:]] or [str(err)]
        return [line for line in lines if not any(c in line for c in CUDA_ONLY)]
    return []


def run_py_flags(argv: list[str]) -> tuple[str, list[str]]:
    """The run.py path and what follows it (after python / torchrun and their own flags)."""
    at = next(i for i, w in enumerate(argv) if w.endswith("run.py"))
    return argv[at], argv[at + 1:]


# ---- the drivers --------------------------------------------------------------------------------------------
@cache
def driver_variables() -> set[str]:
    """Every variable the drivers read (``$NAME`` / ``${NAME...}`` in their scripts, and the modes' variables that
    the methods' registry reads for them)."""
    from mezo_engine import registry
    scripts = [*REPO.glob("*.sh"), *(REPO / "large_models").glob("*.sh"), *(REPO / "medium_models").glob("*.sh"),
               REPO / "mezo_engine" / "drivers.sh"]
    read = {m for s in scripts for m in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", s.read_text())}
    return read | registry.driver_variables()


def driver_path(command: Command) -> Path:
    return (REPO / command.cwd / command.argv[1]).resolve()


def is_medium(command: Command) -> bool:
    return "medium_models" in str(driver_path(command)) or command.env.get("MEDIUM") == "1"


FAKE_PYTHON = """#!/bin/sh
printf '%s\\n' "$@" > "$FLAGS_OUT"
"""


def run_driver(command: Command, tmp: Path) -> tuple[str, list[str] | None]:
    """Run the driver with a stand-in python; (its error output, the argv it handed to python or None)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp), "FLAGS_OUT": str(tmp / "argv"),
           **command.env}
    if command.inline and not is_medium(command):
        env.setdefault("TASK", "SST2")  # a fragment such as `bash mezo.sh --max_length 512`: the prose has the rest
    data = tmp / "data"
    if is_medium(command):  # <TASK>/<K>-<SEED>/ must exist
        (data / env.get("TASK", "SST-2") / f"{env.get('K', '16')}-{env.get('SEED', '42')}").mkdir(parents=True,
                                                                                                 exist_ok=True)
        env["DATA_DIR"] = str(data)
    elif "DATA_DIR" in env:
        data.mkdir(exist_ok=True)
        env["DATA_DIR"] = str(data)
    (tmp / "argv").unlink(missing_ok=True)
    done = subprocess.run(["bash", str(driver_path(command)), *command.argv[2:]], cwd=REPO / command.cwd, env=env,
                          capture_output=True, text=True, timeout=30)
    argv = (tmp / "argv").read_text().splitlines() if (tmp / "argv").exists() else None
    return (done.stderr.strip() if done.returncode else ""), argv


# ---- scripts ------------------------------------------------------------------------------------------------
@cache
def declared_options(script: str) -> set[str]:
    """The option strings of every add_argument call in scripts/NAME.py, scripts/sweeps/NAME.py and NAME_run.py, and a
    scripts/NAME/ package."""
    name = Path(script).stem
    files = [REPO / script, REPO / "scripts" / "sweeps" / f"{name}.py", REPO / "scripts" / "sweeps" / f"{name}_run.py",
             *(REPO / "scripts" / name).glob("*.py")]
    options = set()
    for f in (f for f in files if f.exists()):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                options |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return options


# ---- the tests ----------------------------------------------------------------------------------------------
def commands_of(k: str) -> list[Command]:
    return [c for c in all_commands() if kind(c) == k]


def test_every_command_is_checked_or_skipped_by_name():
    unknown = [str(c) for c in all_commands() if kind(c) == "unknown"]
    assert not unknown, "no check knows these; add one, or a SKIPPED entry with its reason:\n" + "\n".join(unknown)
    counts = Counter(skip_reason(c) for c in all_commands() if kind(c) == "skipped")
    assert counts == {prefix: n for prefix, (_, n) in SKIPPED.items()}, \
        f"SKIPPED's counts are out of date: the docs have {dict(counts)}"
    checked = Counter(kind(c) for c in all_commands())
    assert checked["driver"] >= 20 and checked["run.py"] >= 3 and checked["sweep"] >= 4, checked


def test_run_py_commands_parse():
    problems = []
    for c in commands_of("run.py"):
        run_py, flags = run_py_flags(c.argv)
        flags = [f for f in flags if f != "--help"]
        found = run_py_problems(app_of(run_py, c.cwd), flags, names_only=c.elided)
        problems += [f"{c}\n    {p}" for p in found]
    assert not problems, "\n".join(problems)


def unread_variables(command: Command) -> list[str]:
    known = driver_variables() | set(OTHER_VARIABLES)
    return [f"{command}\n    {name}: no driver reads it" for name in command.env if name not in known]


def test_driver_variables_are_ones_the_drivers_read():
    problems = [p for c in all_commands() for p in unread_variables(c)]
    assert not problems, "\n".join(problems)


def test_driver_commands_pass_run_py_flags_that_exist():
    """The flags a driver command passes through to run.py (names only; the slow test below parses them whole)."""
    problems = []
    for c in commands_of("driver"):
        app = "medium" if is_medium(c) else "large"
        problems += [f"{c}\n    {p}" for p in run_py_problems(app, c.argv[2:], names_only=True)]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_driver_commands_pass_their_checks_and_give_run_py_flags_that_parse(tmp_path):
    problems = []
    for c in commands_of("driver"):
        error, argv = run_driver(c, tmp_path)
        if argv is None:
            problems.append(f"{c}\n    the driver stopped: {error}")
            continue
        run_py, flags = run_py_flags(argv)
        problems += [f"{c}\n    {p}" for p in run_py_problems(app_of(run_py, "."), flags, names_only=c.elided)]
    assert not problems, "\n".join(problems)


def test_sweep_commands_parse_and_dry_run_the_sweep_files_that_exist(capsys):
    from sweeps import cli
    problems = []
    for c in commands_of("sweep"):
        args = c.argv[2:]
        try:
            cli.parse_args(args)
        except SystemExit:
            problems.append(f"{c}\n    {capsys.readouterr().err.strip().splitlines()[-1]}")
            continue
        if (REPO / args[0]).is_file():
            status = cli.main([args[0], "--dry-run", *[a for a in args[1:] if a != "--wait"]])
            out = capsys.readouterr()
            if status not in (0, None) or "points:" not in out.out:
                problems.append(f"{c}\n    --dry-run exit {status}: {out.err.strip()[-300:]}")
            points = [Command(f"{c.doc}, {args[0]}", line.strip()) for line in out.out.splitlines()
                      if line.startswith("          ") and " bash " in line]  # the command of each point
            problems += [p for point in points for p in unread_variables(point)]
        elif not re.fullmatch(r"[A-Z]+\.toml", args[0]):  # SWEEP.toml is a placeholder
            problems.append(f"{c}\n    no sweep file {args[0]}")
    assert not problems, "\n".join(problems)


def test_script_commands_name_declared_flags():
    problems = []
    for c in commands_of("script"):
        script, args = c.argv[1], c.argv[2:]
        if not (REPO / script).is_file():
            problems.append(f"{c}\n    no script {script}")
            continue
        options = declared_options(script)
        flags = [a.strip("[]").split("=")[0] for a in args if a.strip("[]").startswith("-")]  # [--out DIR]: usage
        problems += [f"{c}\n    {script} declares no {f}" for f in flags if f not in options]
    assert not problems, "\n".join(problems)


def test_pytest_commands_name_test_files_that_exist():
    missing = [f"{c}: no {w}" for c in commands_of("pytest") for w in c.argv[3:]
               if w.startswith("tests/") and not (REPO / w.split("::")[0]).exists()]
    assert not missing, "\n".join(missing)


def test_the_flags_table_names_only_flags_run_py_has():
    """docs/flags.md: the first column of its table (``--a`` / ``--b``) names large_models/run.py's flags."""
    known = parser_of("large")._option_string_actions
    rows = [line for line in (REPO / "docs" / "flags.md").read_text().splitlines() if line.startswith("| `--")]
    named = [f for row in rows for f in re.findall(r"`(--[\w-]+)`", row.split(" | ")[0])]
    unknown = [f for f in named if f not in known]
    assert len(named) > 50 and not unknown, f"docs/flags.md names flags run.py does not have: {unknown}"


# ---- links --------------------------------------------------------------------------------------------------
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces to -, -1, -2 for repeats."""
    seen, out, in_fence = Counter(), set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        out.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return out


def test_relative_links_point_to_files_and_headings_that_exist():
    problems = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                problems.append(f"{doc.relative_to(REPO)}: {target}: no file {file}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                problems.append(f"{doc.relative_to(REPO)}: {target}: no heading #{anchor} in {path.name}")
    assert not problems, "\n".join(problems)


def test_docs_use_no_absolute_machine_paths():
    found = [f"{d.relative_to(REPO)}: {m}" for d in DOCS for m in re.findall(r"/(?:work|home|root)/\S+", d.read_text())]
    assert not found, "\n".join(found)


def test_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
