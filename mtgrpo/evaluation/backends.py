"""Generation backends for evaluation: transformers (CPU or one GPU) and vLLM's offline engine (GPU).

Each backend hands `run_episodes` a `generate(prompt_ids, num_generations) -> (completion_ids, logprobs)`
function, the contract of `mtgrpo.episodes.base.GenerateFn`: one completion per given prompt (prompts arrive
already repeated), each cut after its first stop token. Temperature 0 means greedy decoding.
"""

from __future__ import annotations

import importlib.util

import torch

from ..episodes.base import GenerateFn


def stop_token_ids(tokenizer, generation_config) -> set[int]:
    """The tokenizer's EOS plus every EOS the model's generation config lists (chat models often add <|im_end|>)."""
    stop_ids = {tokenizer.eos_token_id}
    eos = getattr(generation_config, "eos_token_id", None)
    stop_ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    stop_ids.discard(None)
    return stop_ids


def vllm_available() -> bool:
    """vLLM can run here: the package is installed and a CUDA GPU is visible."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


class TransformersBackend:
    """`model.generate` on left-padded batches; works wherever the model is (CPU or a single GPU)."""

    def __init__(self, model, tokenizer, max_new_tokens: int):
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.stop_ids = stop_token_ids(tokenizer, model.generation_config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate_fn(self, temperature: float) -> GenerateFn:
        sample = temperature > 0

        @torch.no_grad()
        def generate(prompt_ids: list[list[int]], num_generations: int):
            width = max(len(p) for p in prompt_ids)
            input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompt_ids])
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
            out = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention.to(self.model.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=sample,
                # Sampling only: transformers warns about temperature/top_p/top_k set alongside greedy decoding.
                **({"temperature": temperature, "top_p": 1.0, "top_k": 0} if sample else {}),
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.stop_ids),
            )[:, width:].tolist()
            completions = []
            for ids in out:
                # Rows that stopped early are padded to the batch width; keep up to and including the stop token.
                stop = next((i for i, tok in enumerate(ids) if tok in self.stop_ids), None)
                completions.append(ids if stop is None else ids[: stop + 1])
            return completions, None

        return generate


class VLLMBackend:
    """vLLM's offline engine (`vllm.LLM`), for evaluating large models on a GPU.

    GPU-only code path: CI machines have no CUDA, so this class is exercised only on GPU hosts. It mirrors what
    TRL does with vLLM outputs: the engine's `token_ids` are the completion, stop token included.
    """

    def __init__(self, model_path: str, tokenizer, max_new_tokens: int, seed: int = 0):
        from transformers import GenerationConfig
        from vllm import LLM

        self.llm = LLM(model=model_path, tokenizer=model_path, seed=seed)
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens
        try:
            generation_config = GenerationConfig.from_pretrained(model_path)
        except OSError:  # a checkpoint without generation_config.json: the tokenizer's EOS is the only stop
            generation_config = None
        self.stop_ids = stop_token_ids(tokenizer, generation_config)

    def generate_fn(self, temperature: float) -> GenerateFn:
        from vllm import SamplingParams

        params = SamplingParams(
            n=1,  # prompts arrive already repeated once per sample
            temperature=temperature,
            max_tokens=self.max_new_tokens,
            stop_token_ids=sorted(self.stop_ids),
            # No per-request seed: it would give every repeated prompt the same sample. The engine seed (set in
            # __init__) keeps a run reproducible.
        )

        def generate(prompt_ids: list[list[int]], num_generations: int):
            outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
            return [list(o.outputs[0].token_ids) for o in outputs], None

        return generate
