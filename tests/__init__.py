"""The test suite. Importing the package first sets the environment every test runs under: no hub access (the
tests build their models and data themselves), no tokenizer thread pools."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
