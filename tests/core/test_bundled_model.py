"""The bundled SmolLM2 model converted from its GGUF file: special tokens are set, not guessed per version."""

import json

from transformers import AutoTokenizer, GenerationConfig

from mtgrpo import models


def test_converted_tokenizer_and_configs_use_chatml_special_tokens(tokenizer):
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in models.SPECIAL_TOKENS.items()}
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == ids["eos_token"] == 2
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.pad_token_id == ids["pad_token"]
    generation = GenerationConfig.from_pretrained(models.bundled_model_dir())
    assert (generation.eos_token_id, generation.bos_token_id, generation.pad_token_id) == (2, 1, 2)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=True, return_dict=False
    )
    assert tokenizer.eos_token_id in rendered  # the EOS is the token that ends a ChatML turn


def test_a_cache_from_an_older_conversion_is_converted_again(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("MTGRPO_CACHE", str(tmp_path))
    stale = models.bundled_model_dir()
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # what an older conversion left: no conversion marker
    path = models.prepare_bundled_model()
    assert json.loads((path / "mtgrpo_conversion.json").read_text())["version"] == models.CONVERSION_VERSION
    assert AutoTokenizer.from_pretrained(path).eos_token == "<|im_end|>"
