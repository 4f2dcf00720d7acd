import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny import make_tokenizer, save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session", params=["opt", "llama", "gpt2"])
def tiny_model_dir(request, tmp_path_factory):
    """A tiny model of each architecture saved as a HF directory."""
    return save_tiny(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory):
    return save_tiny("opt", tmp_path_factory.mktemp("tiny-opt"))
