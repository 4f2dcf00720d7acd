"""The methods' registries: a new adapter scheme or ZO method is one file. The first test writes two such files
into a copy of the packages and trains with them through run.py and the drivers' lookup, with nothing else
changed; the others register the same classes in this process (``methods.register``, ``zo_methods.register``: a
script's own method) and check the torch-free registry agrees with the code."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from large_models import run
from transformers import HfArgumentParser

from large_models.arguments import ArgumentError, Arguments, parse_args
from mezo_engine import methods, registry, zo_methods
from mezo_engine.methods import Method

REPO = Path(__file__).resolve().parent.parent


# ---- two methods as the files a user would add -----------------------------------------------------------------
BIAS_FILE = """
    from mezo_engine.methods.ft import Method, Mode

    DRIVER = {"flag": None, "untrained": "nothing would train the biases",
              "defaults": {"mezo": ["1e-2", "1e-2"], "finetune": ["1e-2", "1e-2"], "medium-mezo": ["1e-2", "1e-2"],
                           "medium-finetune": ["1e-2", "1e-2"]}}


    class BiasMode(Mode):
        name = "bias"

        def prepare(self, model, objective=None, batches=None):
            for name, p in model.named_parameters():
                p.requires_grad_(name.endswith("bias"))
            return model


    METHOD = Method(BiasMode)
"""
SIGNSGD_FILE = """
    from mezo_engine.zo_methods.base import ZOOptimizer

    DRIVER = {"defaults": {"mezo": ["1e-3", "1e-2"]}}


    class ZOSignSGD(ZOOptimizer):
        name = "signsgd"

        def __init__(self, params, lr=1e-3):
            super().__init__(params, {"lr": lr})

        def _apply(self, active, streams):
            for group, p in active:
                p.add_(self._dense_grad(p, streams).sign_(), alpha=-group["lr"])


    OPTIMIZER = ZOSignSGD
"""


def test_a_new_method_is_one_file(tmp_path, tiny_opt_dir, sst2_dir):
    """Copy the packages, add ``methods/bias.py`` and ``zo_methods/signsgd.py`` (nothing else), then train through
    a fresh run.py process with ``--method bias --zo_optimizer signsgd`` and ask the drivers' registry command."""
    for package in ("mezo_engine", "large_models"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "mezo_engine" / "methods" / "bias.py").write_text(textwrap.dedent(BIAS_FILE))
    (tmp_path / "mezo_engine" / "zo_methods" / "signsgd.py").write_text(textwrap.dedent(SIGNSGD_FILE))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    driver = subprocess.run([sys.executable, "mezo_engine/registry.py", "driver", "bias", "mezo"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, check=True).stdout
    assert "MODE_ARGS=(--method bias)" in driver and "DEFAULT_LR=1e-2" in driver
    defaults = subprocess.run([sys.executable, "mezo_engine/registry.py", "defaults", "bias", "mezo", "signsgd"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert defaults.strip() == "LR=1e-3 EPS=1e-2"  # the ZO method's defaults win over the mode's
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, "large_models/run.py", "--model_name", str(tiny_opt_dir), "--task_name", "SST2",
                    "--data_dir", str(sst2_dir), "--result_file", str(out), "--output_dir", str(tmp_path / "out"),
                    "--disable_tqdm", "True", "--num_train", "8", "--train_set_seed", "0", "--num_eval", "4",
                    "--max_steps", "2", "--per_device_train_batch_size", "4", "--train_as_classification",
                    "--trainer", "zo", "--method", "bias", "--zo_optimizer", "signsgd", "--learning_rate", "1e-3",
                    "--report_to", "none"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.read_text())
    assert result["mode"] == "bias" and result["config"]["zo_optimizer"] == "signsgd"
    assert result["train"]["global_step"] == 2
    biases = sum(p.numel() for n, p in _tiny_opt(tiny_opt_dir).named_parameters() if n.endswith("bias"))
    assert result["train"]["trainable_parameters"] == biases


# ---- the same two methods registered in this process, as a script would do ------------------------------------
def _module(text: str) -> dict:
    namespace: dict = {}
    exec(textwrap.dedent(text), namespace)
    return namespace


_BIAS, _SIGNSGD = _module(BIAS_FILE), _module(SIGNSGD_FILE)
BiasMode, ZOSignSGD = _BIAS["BiasMode"], _SIGNSGD["ZOSignSGD"]
BIAS = registry.AdapterSpec("bias", None, {d: registry.Defaults(*v) for d, v in _BIAS["DRIVER"]["defaults"].items()},
                            untrained=_BIAS["DRIVER"]["untrained"])


@pytest.fixture
def toy_methods():
    methods.register(Method(BiasMode), BIAS)
    zo_methods.register(ZOSignSGD)
    yield
    for table, name in ((methods.METHODS, "bias"), (registry.ADAPTERS, "bias"), (zo_methods.ZO_METHODS, "signsgd"),
                        (registry.ZO_METHODS, "signsgd")):
        del table[name]


def _run(tmp_path, model_dir, data_dir, *flags):
    out = tmp_path / "result.json"
    run.main(["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(data_dir),
              "--result_file", str(out), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True",
              "--num_train", "8", "--train_set_seed", "0", "--num_eval", "4", "--max_steps", "2",
              "--per_device_train_batch_size", "4", "--train_as_classification", "--trainer", "zo", *flags])
    return json.loads(out.read_text())


def test_a_registered_adapter_scheme_trains_through_run_py(tmp_path, tiny_opt_dir, sst2_dir, toy_methods):
    before = dict(_tiny_opt(tiny_opt_dir).named_parameters())
    result = _run(tmp_path, tiny_opt_dir, sst2_dir, "--method", "bias", "--learning_rate", "1e-2",
                  "--zo_eps", "1e-2", "--save_model")
    assert result["mode"] == "bias" and result["train"]["global_step"] == 2
    assert result["train"]["trainable_parameters"] == sum(p.numel() for n, p in before.items() if n.endswith("bias"))
    after = dict(_tiny_opt(tmp_path / "out" / "model").named_parameters())
    changed = {n for n, p in before.items() if not torch.equal(p, after[n])}
    assert changed and all(n.endswith("bias") for n in changed)  # the base mode's save, the mode's parameters


def _tiny_opt(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path)


def test_the_drivers_lookup_finds_a_registered_mode(toy_methods, capsys):
    """What mode_args asks (drivers.sh: registry.py driver MODE DRIVER), for a mode registered in this process: the
    shell drivers run the registry in a process of their own, which knows the built-in modes only."""
    assert registry.main(["driver", "bias", "medium-mezo"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert lines == {"MODE_ARGS": "(--method bias)", "MODE_TAG": "bias", "ZO_ARGS": "()", "DEFAULT_LR": "1e-2",
                     "DEFAULT_EPS": "1e-2"}
    args = parse_args(["--method", "bias", "--trainer", "zo", "--num_train", "4"])
    assert args.mode == "bias" and isinstance(methods.mode_for(args), BiasMode)


def test_a_registered_zo_method_trains_through_run_py(tmp_path, tiny_opt_dir, sst2_dir, toy_methods):
    before = {n: p.detach().clone() for n, p in _tiny_opt(tiny_opt_dir).named_parameters()}
    result = _run(tmp_path, tiny_opt_dir, sst2_dir, "--zo_optimizer", "signsgd", "--learning_rate", "1e-3",
                  "--save_model")
    assert result["config"]["zo_optimizer"] == "signsgd" and result["train"]["global_step"] == 2
    after = dict(_tiny_opt(tmp_path / "out" / "model").named_parameters())
    moved = [(after[n] - p).abs() for n, p in before.items() if n in after]
    # sign-SGD moves every entry by lr per step: 0, 1e-3 or 2e-3 after two steps (within float32 rounding)
    assert any(d.max() > 5e-4 for d in moved)
    assert all(torch.all((d < 2.1e-3)) for d in moved)
    assert ZOSignSGD([torch.zeros(2, requires_grad=True)]).forwards_per_step(3) == 6


def test_unknown_and_misused_selections_are_refused_by_name(toy_methods):
    cases = [(["--method", "nope"], "--method nope: unknown; known: ft, head, lora, prefix, xgblora, bias"),
             (["--method", "lora"], "--method lora: select it with --lora"),
             (["--method", "ft"], "--method ft: the mode of a run that selects none"),
             (["--method", "bias", "--lora"], "--method bias and --lora: choose one"),
             # the base method first, the others by name, the registered one last (more files add more names)
             (["--zo_optimizer", "nope"], "--zo_optimizer nope: unknown; known: sgd, adam, .*momentum, .*signsgd$")]
    for flags, message in cases:
        with pytest.raises(ArgumentError, match=message):
            _validated(["--trainer", "zo", "--num_train", "4", *flags])
    with pytest.raises(ArgumentError, match="--method bias with --trainer none: nothing would train the biases"):
        _validated(["--method", "bias"])


def _validated(flags):
    return HfArgumentParser(Arguments).parse_args_into_dataclasses(args=flags)


# ---- the registries agree ------------------------------------------------------------------------------------
def test_the_torch_free_registry_names_every_method_the_code_has():
    assert list(registry.ADAPTERS) == list(methods.METHODS) == ["ft", "head", "lora", "prefix", "xgblora"]
    assert list(registry.ZO_METHODS) == list(zo_methods.ZO_METHODS)
    # a file that declares a method's code but not its DRIVER entry would be silently left out
    for package, marker in ((methods, "METHOD = "), (zo_methods, "OPTIMIZER = ")):
        folder = Path(package.__file__).parent
        coded = {f.stem for f in folder.glob("*.py") if marker in f.read_text()}
        assert coded == set(registry.declared(folder)), package.__name__
    for name, spec in registry.ADAPTERS.items():
        assert methods.mode_class(name).name == name
        assert set(spec.defaults) == set(registry.DRIVERS), name


def test_every_method_flag_is_a_run_py_flag_with_its_default():
    args = parse_args([])
    for flags in (*methods.FLAGS, *zo_methods.FLAGS):
        for f in fields(flags):
            assert getattr(args, f.name) == f.default and f.metadata["help"], f.name


def test_the_registry_command_imports_neither_torch_nor_transformers():
    done = subprocess.run([sys.executable, "mezo_engine/registry.py", "defaults", "prefix", "mezo"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "LR=1e-3 EPS=1e-1"
    code = "import sys, mezo_engine.registry; print('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.parametrize("mode, driver, want", [
    ("ft", "mezo", "LR=1e-5 EPS=1e-3"), ("prefix", "finetune", "LR=1e-2 EPS=1e-1"),
    ("lora", "medium-mezo", "LR=1e-4 EPS=1e-3"), ("ft", "medium-finetune", "LR=1e-5 EPS=1e-3")])
def test_defaults_per_mode_and_driver(mode, driver, want, capsys):
    assert registry.main(["defaults", mode, driver]) == 0 and capsys.readouterr().out.strip() == want


def test_driver_assignments_read_the_mode_variables():
    text = registry.driver_assignments("xgblora", "mezo", {"XGBLORA_STEPS": "50", "LORA_ALPHA": ""})
    assert "MODE_ARGS=(--xgblora --xgblora_rank 1 --lora_alpha 16 --xgblora_steps_per_iteration 50 " \
           "--xgblora_num_layers 0)" in text and "MODE_TAG=xgblora-k50" in text
    assert registry.main(["driver", "nope", "mezo"]) == 2
