import pytest

from tests.task_fixtures import write_squad, write_sst2
from tests.tiny import make_tokenizer, save_tiny


@pytest.fixture(scope="session", params=[False, True], ids=["bytes", "bpe-merges"])
def tokenizer(request):
    """Each test that takes it runs with the byte tokenizer and with the one that has real BPE merges."""
    return make_tokenizer(merges=request.param)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return make_tokenizer(merges=True)


@pytest.fixture(scope="session", params=["opt", "llama", "gpt2"])
def tiny_model_dir(request, tmp_path_factory):
    """A tiny model of each architecture saved as a HF directory."""
    return save_tiny(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory):
    return save_tiny("opt", tmp_path_factory.mktemp("tiny-opt"))


@pytest.fixture(scope="module")
def sst2_dir(tmp_path_factory):
    """SST-2 in GLUE's TSV layout: four positive and four negative sentences (tests/task_fixtures.py)."""
    return write_sst2(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def squad_dir(tmp_path_factory):
    return write_squad(tmp_path_factory.mktemp("squad"))
