import os

# Nothing may be fetched from the Hugging Face Hub in tests (this also disables telemetry).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer (ChatML template) from the bundled model (converted once into the cache)."""
    from transformers import AutoTokenizer

    from mtgrpo.models import prepare_bundled_model

    return AutoTokenizer.from_pretrained(prepare_bundled_model())


def _save_tiny_llama(path, tokenizer, seed: int, hidden: int, layers: int, heads: int, kv_heads: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama (hidden 64, 2 layers) with the real tokenizer, saved like a hub checkpoint."""
    return _save_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama"), tokenizer, 0, hidden=64, layers=2, heads=4, kv_heads=2
    )


@pytest.fixture(scope="session")
def tiny_feedback_model_dir(tmp_path_factory, tokenizer):
    """A second tiny random Llama of another shape (hidden 32, 1 layer) and seed, e.g. a separate feedback model."""
    path = tmp_path_factory.mktemp("tiny-feedback-llama")
    return _save_tiny_llama(path, tokenizer, 1, hidden=32, layers=1, heads=2, kv_heads=1)
