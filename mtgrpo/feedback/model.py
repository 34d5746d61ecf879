"""A second model, distinct from the policy, that writes the feedback (or plan) turn.

    mtgrpo train --config recipes/smollm2-135m-instruct/arithmetic-model-feedback.yaml

Recipes choose it with `feedback_source: model` and `feedback_model_name_or_path`. Two backends, one interface,
`generate(conversations) -> texts` (one chat-message list in, one reply text out, in order):
- in process (`TransformersFeedbackModel`): the model loaded with transformers on the trainer's device (or
  `feedback_device`), rendered by its OWN chat template, greedy (`feedback_temperature: 0`) or sampled;
- behind an OpenAI-compatible server (`ServerFeedbackModel`, `feedback_server_url`, e.g. `vllm serve`):
  POST /v1/chat/completions per conversation, concurrently, with a per-call timeout, retries with backoff, and an
  error naming the URL and the fix when the server is down, too slow, or answers nothing.

Only the reply TEXT crosses over: the episode tokenises it with the solver's own tokenizer into a masked message,
so the two models may have different tokenizers and chat templates.

Frozen unless `train_feedback_model: true`; then mtgrpo/feedback_training.py trains it and asks it for `sample`s
(the text plus the prompt and completion ids in the feedback model's OWN tokenizer, kept for its update).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)

Conversation = list[dict]


class FeedbackModel(Protocol):
    def generate(self, conversations: list[Conversation]) -> list[str]:
        """One reply text per conversation (a list of {"role", "content"} messages), in order."""


@dataclass
class FeedbackSample:
    """One reply of a trainable feedback model, as its update needs it.

    text: the reply (what the solver is shown).
    prompt_ids: the conversation rendered by the feedback model's chat template, in its tokenizer.
    completion_ids: the ids it sampled, up to and including the end-of-turn token it stopped on.
    """

    text: str
    prompt_ids: list[int]
    completion_ids: list[int]


def render_prompt_ids(tokenizer, conversation: Conversation) -> list[int]:
    """The conversation as the feedback model sees it: its own chat template, ready for its reply."""
    rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def stop_ids(tokenizer, model) -> set[int]:
    """Token ids that end a reply: the generation config's EOS ids (a list for e.g. Llama 3), the tokenizer's, and
    the feedback model's chat template's end-of-turn id. A base model's EOS may be another token (Qwen2.5: EOS
    <|endoftext|>, turns closed by <|im_end|>): without it a reply would run on through a new role header."""
    from ..chat import ChatTurns

    ids = eos_ids(tokenizer, model.generation_config)
    if tokenizer.chat_template is not None:
        ids.add(ChatTurns(tokenizer).end_of_turn_id)
    return {i for i in ids if i is not None}


def eos_ids(tokenizer, generation_config) -> set[int]:
    """Where generation stops by itself: the generation config's EOS ids (a list for e.g. Llama 3) and the
    tokenizer's (vLLM's default sampling parameters take both)."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = {*(configured if isinstance(configured, list) else [configured]), tokenizer.eos_token_id}
    return {i for i in ids if i is not None}


def cut_at_stop(ids: list[int], stops: set[int]) -> list[int]:
    """The ids up to and including the first stop token (what follows it is padding)."""
    for k, tok in enumerate(ids):
        if tok in stops:
            return ids[: k + 1]
    return ids


class FeedbackServerError(RuntimeError):
    """The feedback model's server is unreachable, too slow, or answered nothing usable."""


class TransformersFeedbackModel:
    """A causal LM run in this process. Frozen (eval mode, no gradients, never handed to an optimizer) unless
    `trainable` (float32 weights, for mtgrpo/feedback_training.py, which owns its optimizer). With `model`, that
    already loaded module generates (feedback_lora: the solver's PeftModel) and only the tokenizer is loaded."""

    def __init__(
        self,
        name_or_path: str,
        device: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        batch_size: int = 16,
        dtype: str = "auto",
        trainable: bool = False,
        model=None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_model_path

        path = resolve_model_path(name_or_path)
        self.device = torch.device(device) if device else _trainer_device()
        self.tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(path))
        if self.tokenizer.chat_template is None:
            raise ValueError(
                f"The feedback model {name_or_path!r} has no chat template, so its conversation [problem, attempt, "
                "feedback request] cannot be rendered. Use an instruct/chat model as feedback_model_name_or_path."
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # batched generation: every prompt ends where generation starts
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(path, dtype="float32" if trainable else dtype)
            model.to(self.device).eval()
            model.requires_grad_(trainable)
        self.model = model
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size
        self.stops = stop_ids(self.tokenizer, self.model)

    def generate(self, conversations: list[Conversation]) -> list[str]:
        return [s.text for s in self.sample(conversations)]

    def sample(self, conversations: list[Conversation]) -> list[FeedbackSample]:
        import torch

        samples: list[FeedbackSample] = []
        training = self.model.training
        self.model.eval()
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start : start + self.batch_size]
            prompts = [render_prompt_ids(self.tokenizer, c) for c in chunk]
            batch = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(self.device)
            sampling = (
                {"do_sample": True, "temperature": self.temperature, "top_p": 1.0, "top_k": 0}
                if self.temperature > 0
                else {"do_sample": False}
            )
            with torch.no_grad():
                out = self.model.generate(
                    **batch,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=sorted(self.stops),  # the end-of-turn id too, not only the EOS
                    **sampling,
                )
            for prompt, new in zip(prompts, out[:, batch["input_ids"].shape[1] :].tolist(), strict=True):
                ids = cut_at_stop(new, self.stops)
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                samples.append(FeedbackSample(text=text, prompt_ids=prompt, completion_ids=ids))
        self.model.train(training)
        return samples


class ServerFeedbackModel:
    """A model behind an OpenAI-compatible chat endpoint (vLLM, TGI, llama.cpp server, a hosted API).

    A reply must end at the feedback template's end-of-turn token, but a server stops only at the model's EOS, which
    for a base model may be another token (Qwen2.5: EOS <|endoftext|>, turns closed by <|im_end|>): the reply would run
    on through a new role header into text the solver is shown. When `model` names a tokenizer on this machine (a
    local folder, or a hub id in the Hugging Face cache, as `mtgrpo launch` serves feedback_model_name_or_path) and
    its end-of-turn id is not an EOS, each request also carries vLLM's sampling field `stop_token_ids` with that id.
    Otherwise (a hosted API's model name, a `--served-model-name` alias) only OpenAI's fields are sent, since such an
    API may refuse unknown ones. The reply text is not cut afterwards: a server skips special tokens when it decodes,
    so a role header that follows would be plain words, indistinguishable from feedback text.
    """

    def __init__(
        self,
        url: str,
        model: str,
        timeout: float = 60.0,
        retries: int = 2,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        api_key_env: str | None = None,
        concurrency: int = 16,
        backoff: float = 1.0,
    ):
        self.url = url
        self.endpoint = chat_completions_url(url)
        self.model, self.timeout, self.retries = model, timeout, retries
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.api_key_env, self.concurrency, self.backoff = api_key_env, concurrency, backoff
        if api_key_env and not os.environ.get(api_key_env):
            raise ValueError(
                f"feedback_api_key_env names the environment variable {api_key_env!r}, which is not set. Export it "
                "(the key itself never goes into a recipe), or drop feedback_api_key_env for a server without a key."
            )
        self.stop_token_ids = end_of_turn_stop_ids(model)
        # No proxy: an http_proxy set for downloads would otherwise intercept a loopback/cluster address.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def generate(self, conversations: list[Conversation]) -> list[str]:
        if not conversations:
            return []
        # Concurrent requests: the server batches them (vLLM's continuous batching).
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self._complete, conversations))

    def _complete(self, messages: Conversation) -> str:
        request = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
        }
        if self.stop_token_ids:  # vLLM's extra sampling field: only for a model whose tokenizer we know (see class)
            request["stop_token_ids"] = self.stop_token_ids
        body = json.dumps(request).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"  # never logged
        problem = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode())
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:300]
                problem = f"HTTP {error.code}: {detail}"
                if error.code < 500 and error.code != 429:  # a bad request does not get better by retrying
                    raise FeedbackServerError(
                        f"The feedback model server at {self.endpoint} rejected the request ({problem}). Check "
                        f"that it serves the model {self.model!r} (feedback_model_name_or_path must be the served "
                        "model name) and, if it needs a key, that feedback_api_key_env names the variable holding it."
                    ) from None
                continue
            except (urllib.error.URLError, TimeoutError, OSError, ValueError) as error:
                reason = getattr(error, "reason", error)
                problem = f"timed out after {self.timeout:g} s" if _is_timeout(reason) else f"{reason}"
                continue
            text = _reply_text(payload)
            if text:
                return text
            problem = f"an empty answer ({json.dumps(payload)[:200]})"
        raise FeedbackServerError(
            f"The feedback model server at {self.endpoint} gave no usable answer after {self.retries + 1} "
            f"attempt(s): {problem}. Fix: start the server (e.g. `vllm serve {self.model} --port PORT`; `mtgrpo "
            "launch` starts one on GPU nodes), check feedback_server_url, or raise feedback_timeout / "
            "feedback_retries if it is only slow."
        )


def end_of_turn_stop_ids(name_or_path: str) -> list[int]:
    """[the chat template's end-of-turn id] when the served model's tokenizer is on this machine and that id is not
    one of its EOS ids (the tokenizer's and generation config's, where a server stops anyway); else []."""
    from transformers import AutoTokenizer, GenerationConfig

    from ..chat import ChatTurns

    source = _tokenizer_source(name_or_path)
    try:  # local files only: a hosted API's model name or an alias is no hub id worth a download
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return []
    if tokenizer.chat_template is None:
        return []
    try:
        generation_config = GenerationConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):  # a folder without generation_config.json: the tokenizer's EOS only
        generation_config = None
    end_of_turn = ChatTurns(tokenizer).end_of_turn_id
    return [] if end_of_turn in eos_ids(tokenizer, generation_config) else [end_of_turn]


def chat_completions_url(url: str) -> str:
    """`http://host:port`, `.../v1` or the full endpoint -> the /v1/chat/completions endpoint."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return f"{url}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions"


def _reply_text(payload) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content.strip() if isinstance(content, str) else ""


def _is_timeout(reason) -> bool:
    return isinstance(reason, TimeoutError) or "timed out" in str(reason)


def _tokenizer_source(path: str) -> str:
    """Where the tokenizer is: the model's folder, or for a bare LoRA adapter folder (a feedback_lora run's
    `feedback/`, which transformers loads onto its base model) the base model it names."""
    folder = Path(path)
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file() and not (folder / "tokenizer_config.json").is_file():
        return json.loads(adapter_config.read_text()).get("base_model_name_or_path") or path
    return path


def _trainer_device():
    """The device accelerate gives this process (the trainer's), or the CPU before any trainer exists."""
    from accelerate import PartialState

    return PartialState().device


class LazyFeedbackModel:
    """Builds the backend on first use, so that building an episode (e.g. for a recipe check) loads nothing and
    the in-process model lands on the device the trainer's accelerator chose."""

    def __init__(self, args):
        self.args = args
        self._backend: FeedbackModel | None = None

    def generate(self, conversations: list[Conversation]) -> list[str]:
        if self._backend is None:
            self._backend = build_feedback_model(self.args)
        texts = self._backend.generate(conversations)
        if len(texts) != len(conversations):
            raise RuntimeError(
                f"The feedback model returned {len(texts)} texts for {len(conversations)} requests."
            )
        return texts


def build_feedback_model(args) -> FeedbackModel:
    """The backend an MTGRPOConfig asks for: the server when `feedback_server_url` is set, else in process."""
    if args.feedback_server_url:
        logger.info("Feedback model %s behind %s", args.feedback_model_name_or_path, args.feedback_server_url)
        return ServerFeedbackModel(
            args.feedback_server_url,
            args.feedback_model_name_or_path,
            timeout=args.feedback_timeout,
            retries=args.feedback_retries,
            max_new_tokens=args.feedback_max_new_tokens,
            temperature=args.feedback_temperature,
            api_key_env=args.feedback_api_key_env,
        )
    device = None if args.feedback_device == "auto" else args.feedback_device
    if device is None and getattr(args, "use_cpu", False):
        device = "cpu"
    logger.info("Feedback model %s in process (frozen)", args.feedback_model_name_or_path)
    return TransformersFeedbackModel(
        args.feedback_model_name_or_path,
        device=device,
        max_new_tokens=args.feedback_max_new_tokens,
        temperature=args.feedback_temperature,
    )


def problem_messages(rollout, chat=None) -> Conversation:
    """The problem as chat messages: the dataset row's prompt (system + user) when the rollout has its row, else the
    decoded prompt ids (special tokens dropped) as one user message."""
    row = rollout.state.get("row")
    prompt = row.get("prompt") if isinstance(row, dict) else None
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt:
        return [
            {"role": m["role"], "content": m["content"]} for m in prompt if m["role"] in ("system", "user")
        ]
    if chat is None:
        raise ValueError(
            "The feedback model needs the problem: pass the dataset rows to run_episodes, or bind a chat."
        )
    return [
        {
            "role": "user",
            "content": chat.tokenizer.decode(rollout.prompt_ids, skip_special_tokens=True).strip(),
        }
    ]


def ask(model: FeedbackModel, conversations: list[Conversation], owners) -> list[str]:
    """One reply text per conversation. A trainable feedback model (one with `sample`) also leaves each reply's
    FeedbackSample in its owner rollout's `state["feedback_sample"]`, for the feedback model's own update."""
    if not hasattr(model, "sample"):
        return model.generate(conversations)
    samples = model.sample(conversations)
    for owner, sample in zip(owners, samples, strict=True):
        owner.state["feedback_sample"] = sample
    return [s.text for s in samples]


def write_feedback(
    model: FeedbackModel, rollouts, request_for, chat=None, key: str = "model_feedback"
) -> None:
    """One batched call: the feedback model answers [problem, the rollout's first solver turn, request_for(rollout)]
    for every rollout, and each text lands in `rollout.state[key]` (a trainable model's sample, see `ask`)."""
    if not rollouts:
        return
    conversations = [
        [
            *problem_messages(r, chat),
            {"role": "assistant", "content": r.turns("solver")[0].text},
            {"role": "user", "content": request_for(r)},
        ]
        for r in rollouts
    ]
    for rollout, text in zip(rollouts, ask(model, conversations, rollouts), strict=True):
        rollout.state[key] = text
