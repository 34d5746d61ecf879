"""Bi-level training (MLMT-RL / Bi-NAC): the feedback model as a second policy with its own optimizer and schedule.

    mtgrpo train --config recipes/smollm2-135m-instruct/arithmetic-bilevel.yaml

`train_feedback_model: true` (with `feedback_source: model`, episode refine or plan). The solver is TRL's policy and
is trained by TRL on its own tokens only (the feedback is a masked message in its stream). The feedback model is
trained here, on its own tokens only: the prompt and completion ids it sampled, in ITS tokenizer (FeedbackSample),
never the re-tokenised text.

One feedback update (`FeedbackPolicy.update`), after every solver step whose number is a multiple of
`feedback_update_interval`:
- data: the feedback samples of every generation batch TRL sampled during that optimizer step (several when
  steps_per_generation < gradient_accumulation_steps; one generation spanning several steps is trained once, at the
  first update due after it), each with the episode's feedback advantage (refine: `feedback`, the group-normalised
  R(final), or R(final) - R(turn 1) with `feedback_reward: improvement`; plan: `plan`, the group-normalised
  R(final)), computed over the gathered batch like the solver's advantages. Samples of steps without an update are
  dropped, and a batch is trained on at most once;
- loss per feedback token t: -min(r_t A, clip(r_t, 1 - epsilon, 1 + epsilon_high) A) + feedback_beta * KL_t, with
  TRL's k3 KL to the feedback model's own frozen reference (loaded only when feedback_beta > 0), averaged over all
  feedback tokens of the update on every process (DAPO-style token mean). The feedback weights change only here, so
  every sample was drawn by the current weights and its old log-prob is the detached current one (what TRL does
  without stored old log-probs): the ratio is 1 at the update's single optimizer step and the gradient is REINFORCE
  with a group baseline, Bi-NAC's estimator for its high level;
- one AdamW step (feedback_learning_rate, constant; betas, eps, weight decay and max_grad_norm are the solver's),
  gradients summed over processes first, so every process keeps an identical copy;
- with `feedback_server_url`: generation goes through that vLLM server (token ids in and out, TRL's VLLMClient) and
  the new weights are pushed to it after the update, the way TRL syncs the solver.

Checkpoints: `checkpoint-N/feedback_model/` (weights, tokenizer, optimizer.pt, feedback_state.json written last),
saved before transformers writes trainer_state.json, so a checkpoint it considers complete has them; the final
`save_model` writes the weights to `output_dir/feedback_model/`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch
from transformers import TrainerCallback

from .model import (
    Conversation,
    FeedbackSample,
    FeedbackServerError,
    TransformersFeedbackModel,
    cut_at_stop,
    render_prompt_ids,
)
from .weights import AdapterFeedbackModel, AdapterWeights, SeparateWeights, check_adapter_setup

logger = logging.getLogger(__name__)

FEEDBACK_DIR = "feedback_model"  # under checkpoint-N/ and output_dir/
_STATE_FILE = "feedback_state.json"
_OPTIMIZER_FILE = "optimizer.pt"


class FeedbackPolicy:
    """The trainable feedback model. Episodes use it as their feedback model (`generate` / `sample`); the trainer
    hands it each training batch's samples with their advantages (`collect`) and calls `maybe_update` after every
    solver step (FeedbackSchedule)."""

    def __init__(self, backend: TransformersFeedbackModel, args, accelerator, client=None, weights=None):
        self.backend, self.model, self.args, self.accelerator = backend, backend.model, args, accelerator
        self.device = backend.device
        # Its own full model (SeparateWeights) or the "feedback" LoRA adapter on the solver's (AdapterWeights).
        self.weights = weights or SeparateWeights(backend.model, args, self.device)
        self.optimizer = torch.optim.AdamW(
            self.weights.params,
            lr=args.feedback_learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )
        self.client = client  # TRL's VLLMClient (or a stand-in with its methods) when a server generates
        self.updates = 0
        self._batch: list[tuple[FeedbackSample, float]] = []
        self._batch_step: int | None = None  # the solver's optimizer step at which `_batch` was collected

    @classmethod
    def from_config(cls, args, accelerator, solver=None) -> FeedbackPolicy:
        """`solver`: the trainer's (unwrapped) model, which feedback_lora puts the feedback adapter on."""
        device = None if args.feedback_device == "auto" else args.feedback_device
        options = dict(max_new_tokens=args.feedback_max_new_tokens, temperature=args.feedback_temperature)
        weights = None
        if args.feedback_lora:
            check_adapter_setup(args, solver, accelerator)
            weights = AdapterWeights(solver, args)
            backend = AdapterFeedbackModel(
                args.feedback_model_name_or_path, device=accelerator.device, model=solver, **options
            )
        else:
            backend = TransformersFeedbackModel(
                args.feedback_model_name_or_path,
                device=device or accelerator.device,
                trainable=True,
                **options,
            )
        client = connect_vllm(args, accelerator) if args.feedback_server_url else None
        return cls(backend, args, accelerator, client, weights)

    # ---- the FeedbackModel interface the episodes use -----------------------------------------------------------

    def generate(self, conversations: list[Conversation]) -> list[str]:
        return [s.text for s in self.sample(conversations)]

    def sample(self, conversations: list[Conversation]) -> list[FeedbackSample]:
        if self.client is None:
            return self.backend.sample(conversations)
        return self._sample_from_server(conversations)

    def _sample_from_server(self, conversations: list[Conversation]) -> list[FeedbackSample]:
        """Ids in, ids out (no re-tokenisation): the prompts rendered by the feedback tokenizer, sampled by vLLM."""
        if not conversations:
            return []
        tokenizer = self.backend.tokenizer
        prompts = [render_prompt_ids(tokenizer, c) for c in conversations]
        try:
            out = self.client.generate(
                prompts=prompts,
                n=1,
                temperature=self.args.feedback_temperature,
                top_p=1.0,
                top_k=0,
                max_tokens=self.args.feedback_max_new_tokens,
                # Stop at the feedback template's end-of-turn id, as the in-process path and the solver's turns do.
                generation_kwargs={"stop_token_ids": sorted(self.backend.stops)},
            )
        except Exception as error:  # requests' errors, vLLM's HTTP errors: say which server and how to fix it
            raise FeedbackServerError(
                f"The feedback model's vLLM server at {self.args.feedback_server_url} failed to generate ({error}). "
                "Check that it is up (`mtgrpo launch` starts it) and serves feedback_model_name_or_path."
            ) from error
        samples = []
        for prompt, ids in zip(prompts, out["completion_ids"], strict=True):
            ids = cut_at_stop(list(ids), self.backend.stops)
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            samples.append(FeedbackSample(text=text, prompt_ids=prompt, completion_ids=ids))
        return samples

    # ---- training -------------------------------------------------------------------------------------------------

    def collect(self, rollouts, advantages: torch.Tensor, step: int) -> None:
        """The samples of a generation batch with their advantages, sampled at solver step `step` (the trainer's
        global_step, the number of optimizer steps done). Generations of the same optimizer step accumulate, as the
        solver's gradient does; the first of a later step starts a fresh batch, dropping one no update trained on."""
        if step != self._batch_step:
            self._batch, self._batch_step = [], step
        self._batch += [
            (r.state["feedback_sample"], float(advantages[b]))
            for b, r in enumerate(rollouts)
            if "feedback_sample" in r.state
        ]

    def maybe_update(self, step: int) -> dict[str, float]:
        """After solver step `step`: one update when the schedule says so and a batch is waiting; its metrics."""
        if step % self.args.feedback_update_interval or not self._batch:
            return {}
        metrics = self.update(self._batch)
        self._batch = []
        return metrics

    def update(self, batch: list[tuple[FeedbackSample, float]]) -> dict[str, float]:
        """One optimizer step on `batch` (see the module docstring); every process calls it together."""
        with self.weights.training():
            metrics, kl_sum, total_tokens = self._step(batch)
        self.updates += 1
        self.sync_weights()
        metrics["feedback/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        if self.weights.has_reference:
            metrics["feedback/kl"] = self._sum_over_processes(kl_sum).item() / total_tokens
        return metrics

    def _step(self, batch: list[tuple[FeedbackSample, float]]):
        self.optimizer.zero_grad(set_to_none=False)
        local_tokens = sum(len(s.completion_ids) for s, _ in batch)
        total_tokens = max(self._sum_over_processes(torch.tensor(float(local_tokens))).item(), 1.0)
        loss_sum = torch.zeros((), device=self.device)
        kl_sum = torch.zeros((), device=self.device)
        size = max(self.args.per_device_train_batch_size, 1)
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            samples = [s for s, _ in chunk]
            advantages = torch.tensor([a for _, a in chunk], device=self.device).unsqueeze(1)
            logps, mask = self._completion_logps(self.model, samples)
            ratio = torch.exp(logps - logps.detach())
            high = self.args.epsilon if self.args.epsilon_high is None else self.args.epsilon_high
            clipped = torch.clamp(ratio, 1 - self.args.epsilon, 1 + high)
            per_token = -torch.min(ratio * advantages, clipped * advantages)
            if self.weights.has_reference:
                with torch.no_grad(), self.weights.reference_model() as reference:
                    ref_logps, _ = self._completion_logps(reference, samples)
                diff = ref_logps - logps
                kl = torch.exp(diff) - diff - 1  # TRL's k3 estimator
                per_token = per_token + self.args.feedback_beta * kl
                kl_sum += (kl.detach() * mask).sum()
            loss = (per_token * mask).sum() / total_tokens
            loss.backward()
            loss_sum += loss.detach()
        self._sum_gradients_over_processes()
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.weights.params, self.args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"feedback/loss": self._sum_over_processes(loss_sum).item()}, kl_sum, total_tokens

    def _completion_logps(self, model, samples: list[FeedbackSample]):
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=bool(self.args.bf16)):
            pad = self.backend.tokenizer.pad_token_id
            return completion_logps(model, samples, pad, self.device, self.args.feedback_temperature)

    def _sum_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return value
        return self.accelerator.reduce(value.to(self.accelerator.device), reduction="sum").to(self.device)

    def _sum_gradients_over_processes(self) -> None:
        if self.accelerator.num_processes == 1:
            return
        for p in self.weights.params:
            if p.grad is None:  # this process had no token reaching it; it still joins the collective
                p.grad = torch.zeros_like(p)
            p.grad = self._sum_over_processes(p.grad)

    def sync_weights(self) -> None:
        """Push the weights to the feedback model's vLLM server (main process), as TRL pushes the solver's."""
        if self.client is None:
            return
        if self.accelerator.is_main_process:
            weights = self.weights.vllm_weights()
            self.client.update_named_params(weights.metadata, weights.tensors)
            self.client.reset_prefix_cache()
        self.accelerator.wait_for_everyone()  # nobody samples from the server before it has the new weights

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def save(self, directory: str | Path, optimizer: bool = True) -> None:
        """Weights and tokenizer; with `optimizer`, also its state and the update count (written last)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.weights.save(directory)
        self.backend.tokenizer.save_pretrained(directory)
        if optimizer:
            torch.save(self.optimizer.state_dict(), directory / _OPTIMIZER_FILE)
            (directory / _STATE_FILE).write_text(json.dumps({"updates": self.updates}))

    def load(self, directory: str | Path) -> None:
        """Back to a checkpoint's feedback weights, optimizer and update count (and push them to the server)."""
        directory = Path(directory)
        if not (directory / _STATE_FILE).is_file():
            raise ValueError(
                f"{directory.parent} has no complete {FEEDBACK_DIR}/ (the feedback policy's weights, optimizer and "
                "state): it was saved by a run without train_feedback_model. Resume with the settings that saved it, "
                "or start in a new output_dir."
            )
        self.weights.load(directory)
        state = torch.load(directory / _OPTIMIZER_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state)
        self.updates = json.loads((directory / _STATE_FILE).read_text())["updates"]
        self.sync_weights()


def completion_logps(model, samples: list[FeedbackSample], pad_id: int, device, temperature: float):
    """(B, C) log-probs of each sample's completion ids under `model` (logits / temperature, as sampled) and the
    (B, C) mask of real completion tokens. Prompts are left-padded and completions right-padded, so the logits of
    the last C + 1 positions are the only ones computed."""
    from trl.trainer.utils import selective_log_softmax

    width = max(len(s.prompt_ids) for s in samples)
    length = max(len(s.completion_ids) for s in samples)
    ids, attention, mask = [], [], []
    for s in samples:
        left, right = width - len(s.prompt_ids), length - len(s.completion_ids)
        ids.append([pad_id] * left + s.prompt_ids + s.completion_ids + [pad_id] * right)
        attention.append([0] * left + [1] * (len(s.prompt_ids) + len(s.completion_ids)) + [0] * right)
        mask.append([1] * len(s.completion_ids) + [0] * right)
    ids = torch.tensor(ids, device=device)
    attention = torch.tensor(attention, device=device)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # as generate numbers a left-padded prompt
    logits = model(
        input_ids=ids, attention_mask=attention, position_ids=position_ids, logits_to_keep=length + 1
    ).logits
    logits = logits[:, :-1].float() / temperature
    logps = selective_log_softmax(logits, ids[:, width:])
    return logps, torch.tensor(mask, device=device, dtype=logps.dtype)


def connect_vllm(args, accelerator):
    """TRL's VLLMClient for the feedback server; the main process also opens the weight-update group."""
    try:
        from trl.generation.vllm_client import VLLMClient

        client = VLLMClient(
            base_url=args.feedback_server_url.rstrip("/").removesuffix("/v1"),
            group_port=args.feedback_vllm_group_port,
            connection_timeout=args.feedback_timeout,
        )
        if accelerator.is_main_process:
            client.init_communicator(device=accelerator.device)
    except (ImportError, ConnectionError, RuntimeError, NotImplementedError) as error:
        raise FeedbackServerError(
            f"Cannot use the feedback model's vLLM server at {args.feedback_server_url} for a trainable feedback "
            f"model ({error}). It must be TRL's kind of vLLM server (weight transfer on, which `mtgrpo launch` "
            "starts for train_feedback_model), reachable from here, on a CUDA machine with vLLM installed; or unset "
            "feedback_server_url to generate in process."
        ) from error
    return client


class FeedbackSchedule(TrainerCallback):
    """After each solver step: the feedback policy's update when due; its metrics join the trainer's."""

    def __init__(self, policy: FeedbackPolicy, metrics: defaultdict):
        self.policy, self.metrics = policy, metrics

    def on_step_end(self, args, state, control, **kwargs):
        for name, value in self.policy.maybe_update(state.global_step).items():
            self.metrics[name].append(value)


class FeedbackPolicyMixin:
    """The trainer's side of bi-level training: builds the feedback policy, hands it each training batch, and keeps
    it in checkpoints. Without train_feedback_model every method is the trainer's own."""

    feedback_policy: FeedbackPolicy | None = None

    def _init_feedback_policy(self) -> None:
        if not self.args.train_feedback_model:
            return
        if not hasattr(self.episode, "feedback_credit"):
            raise ValueError(
                f"train_feedback_model=true needs an episode with a feedback model (refine or plan), not "
                f"{type(self.episode).__name__}."
            )
        self.feedback_policy = FeedbackPolicy.from_config(self.args, self.accelerator, solver=self.model)
        self.episode.feedback_model = self.feedback_policy  # the episode asks it; it keeps its samples
        self.add_callback(FeedbackSchedule(self.feedback_policy, self._metrics["train"]))

    def _collect_feedback_samples(self, rollouts, local_advantages: dict[str, torch.Tensor]) -> None:
        if self.feedback_policy is not None and self.model.training:
            credit = local_advantages[self.episode.feedback_credit]
            self.feedback_policy.collect(rollouts, credit, self.state.global_step)

    def _feedback_transcript_fields(self, local_advantages: dict[str, torch.Tensor]) -> dict:
        """episode_records' arguments that show the feedback model's turns as trained by its own update."""
        if self.feedback_policy is None:
            return {}
        credit = self.episode.feedback_credit
        return {"feedback_credit": credit, "feedback_advantages": local_advantages[credit]}

    def _save_checkpoint(self, model, trial):
        if self.feedback_policy is not None and self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = (
                Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self.feedback_policy.save(
                folder / FEEDBACK_DIR
            )  # before trainer_state.json, which marks it complete
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.feedback_policy is not None:
            self.feedback_policy.load(Path(checkpoint) / FEEDBACK_DIR)

    def save_model(self, output_dir=None, _internal_call=False):
        super().save_model(output_dir, _internal_call)
        if self.feedback_policy is not None and not _internal_call and self.args.should_save:
            self.feedback_policy.save(
                Path(output_dir or self.args.output_dir) / FEEDBACK_DIR, optimizer=False
            )
