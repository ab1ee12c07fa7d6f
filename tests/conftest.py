"""Shared fixtures: the embedded default model, and a tiny random Llama built from a config.

The tiny model shares the default model's tokenizer so tests exercise real tokenisation; its
weights are random, so tests on it assert what training does, not what the model knows.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a network that isn't there
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def default_dir():
    from core.models import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL)[0]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, default_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(default_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    d = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def invented():
    from core.facts import load_facts

    return load_facts(ROOT / "assets" / "invented.csv")


@pytest.fixture(scope="session")
def probes():
    from core.facts import load_facts

    return load_facts(ROOT / "assets" / "probes.csv")
