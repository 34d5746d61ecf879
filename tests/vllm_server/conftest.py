"""Fixtures for the vLLM server-mode tests: stand-in servers (tests/vllm_standin.py), free ports, and a tiny model
whose EOS is not its chat template's end-of-turn token (like Qwen2.5's base models: EOS `<|endoftext|>`, turns
closed by `<|im_end|>`) and which writes `<|im_end|>` often, so stopping at it is visible within a few tokens."""

import pytest
from vllm_standin import StandIn, install_tcp_weight_transfer


@pytest.fixture
def tcp_weights(monkeypatch):
    """TRL's VLLMClient with TCP where NCCL and CUDA would be (only the communicator is replaced)."""
    install_tcp_weight_transfer(monkeypatch)


@pytest.fixture
def standins(tmp_path):
    """start(model_dir, name, **options) -> a running StandIn; all are stopped after the test."""
    started = []

    def start(model_dir, name="rollout", **options):
        server = StandIn(model_dir, tmp_path / "servers", name=name, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


END_OF_TURN_BIAS = (
    3.0  # measured: 4 completions in 5 write it within 12 tokens is <|im_end|> at temperature 1
)


@pytest.fixture(scope="session")
def eot_model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama with the real SmolLM2 tokenizer and ChatML template, but EOS `<|endoftext|>` (id 0) in its
    tokenizer and generation config, so the template's end-of-turn `<|im_end|>` (id 2) is NOT an EOS. One residual
    dimension is held constant (set in every embedding, written by no layer), and `<|im_end|>`'s (tied) embedding is
    large there: its logit sits above every other token's, and sampling writes it often."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = copy.deepcopy(tokenizer)
    tok.eos_token = "<|endoftext|>"
    tok.pad_token = "<|endoftext|>"
    assert tok.eos_token_id == 0 and tok.convert_tokens_to_ids("<|im_end|>") == 2
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 0.1
        model.model.embed_tokens.weight[2, 0] = END_OF_TURN_BIAS
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
    model.generation_config.eos_token_id = 0
    model.generation_config.pad_token_id = 0
    path = tmp_path_factory.mktemp("tiny-eot-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
