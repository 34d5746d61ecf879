"""MultiTurnGRPOTrainer: GRPOTrainer whose rollouts are multi-turn episodes.

What is overridden, and why (everything else — losses, KL, vLLM weight sync, logging — is TRL's):
- the rollout: TRL's own `rollout_func` hook runs our episodes, each turn ONE call to
  `_generate_single_turn` (TRL's backend dispatch: vLLM server/colocate or transformers);
  tokens the policy did not write go into TRL's `tool_mask` as 0;
- `_generate`: the completion handed to reward functions is the episode's final answer, not the stream;
- `_calculate_rewards`: also scores the other turns the episode asks for (e.g. turn 1), and passes the
  episode's per-episode `reward_kwargs` (e.g. tool calls made) to the reward functions; what reward functions
  log through TRL's `log_metric` / `log_extra` while scoring a turn other than the final one goes under
  `<turn>/<name>` (e.g. `turn1/...`), so turn-1 and final values never mix;
- `_generate_and_score_completions`: replaces the (B,) advantages with (B, T) per-turn advantages (also in the
  completions table), logs the per-turn metrics and writes episode transcripts;
- `_compute_loss` (only with a positive `turn_kl` coefficient, mtgrpo/turn_kl.py): adds a per-credit-key KL term
  on TRL's own reference log-probs and per-token KL; for SCoRe (mtgrpo/score_stages.py) it first takes the credit
  and mask of the stage of the optimizer step being trained;
- checkpoint save / load and `save_model` (only with `train_feedback_model`, mtgrpo/feedback_training.py): also the
  feedback policy's weights, optimizer and update count.
"""

from __future__ import annotations

import logging
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.data_utils import is_conversational

from .advantages import token_advantages
from .chat import ChatTurns, check_prompt_lengths
from .config import MTGRPOConfig
from .episodes import build_episode, run_episodes
from .feedback.training import FeedbackPolicyMixin
from .history import LogHistoryCallback
from .metrics import self_correction_metrics
from .score_stages import ScoreStageMixin
from .transcripts import episode_records, write_transcripts
from .turn_kl import TurnKLMixin

logger = logging.getLogger(__name__)


# TurnKLMixin: per-credit-key KL (`turn_kl`), mtgrpo/turn_kl.py; ScoreStageMixin: SCoRe's stage per optimizer step,
# mtgrpo/score_stages.py; FeedbackPolicyMixin: bi-level training (`train_feedback_model`), mtgrpo/feedback/training.py.
class MultiTurnGRPOTrainer(FeedbackPolicyMixin, ScoreStageMixin, TurnKLMixin, GRPOTrainer):
    """GRPO over multi-turn episodes. Takes GRPOTrainer's arguments plus an optional `episode` object
    (default: the protocol named by `args.episode`)."""

    def __init__(self, *args, episode=None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, MTGRPOConfig):
            raise TypeError("MultiTurnGRPOTrainer needs an MTGRPOConfig (GRPOConfig plus the multi-turn fields).")
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "MultiTurnGRPOTrainer normalises each turn's summed reward within its group; set "
                "multi_objective_aggregation: sum_then_normalize."
            )
        if self.rollout_func is not None or self.tools:
            raise ValueError("MultiTurnGRPOTrainer runs its own episodes; do not pass rollout_func or tools.")
        self.episode = episode or build_episode(self.args)
        # One object builds prompts and turn boundaries for training and for `mtgrpo eval` (same template choice,
        # template kwargs and tool schemas); TRL's own template uses follow it.
        self.chat_turns = ChatTurns.for_training(self._tokenizer, self.chat_template_kwargs)
        self.chat_template = self.chat_turns.chat_template
        if hasattr(self.episode, "bind"):
            self.episode.bind(self.chat_turns)  # now: a protocol this tokenizer cannot run fails early
        self._stop_at_end_of_turn()
        # Before any step, on every process alike: a prompt too long for the rollout fails here, not mid-run on
        # one process (which would leave the others waiting in a collective).
        for split, dataset in (("training", self.train_dataset), ("evaluation", self.eval_dataset)):
            check_prompt_lengths(self.chat_turns, dataset, self.args.max_prompt_length, self._chat_tools(), split)
        self._init_feedback_policy()  # train_feedback_model: the feedback model as a second policy (after the checks)
        names = list(self.reward_func_names)
        self._correctness_index = names.index(self.args.correctness_reward) if self.args.correctness_reward in names else None
        if self._correctness_index is None:
            logger.warning(
                "correctness_reward %r is not among reward_funcs %s: turns/* and self_correction/* metrics are off.",
                self.args.correctness_reward,
                names,
            )
        # TRL's hook for custom rollouts: it syncs weights to vLLM before calling it, and treats the returned
        # env_mask as tool_mask (0 = attended to, not trained).
        self.rollout_func = self._rollout
        # Training curves survive runs without checkpoints (save_strategy "no"): `mtgrpo plot` reads this file.
        self.add_callback(LogHistoryCallback())
        self.generation_calls = 0  # generation calls made by this process (benchmarks and tests read it)
        self._rollouts = None
        self._scored_rewards = None
        self._batch_rows = None

    # ---- rollout -------------------------------------------------------------------------------------------

    def _num_generations(self) -> int:
        return self.num_generations if self.model.training else self.num_generations_eval

    def _stop_at_end_of_turn(self) -> None:
        """Stop generation at the template's end-of-turn token too (a base model's EOS may be another token), and
        count a turn ended by it as finished, not truncated."""
        end = self.chat_turns.end_of_turn_id
        if end is None or end in self.eos_token_ids:
            return
        self.eos_token_ids = [*self.eos_token_ids, end]
        if self.use_vllm:
            kwargs = self.vllm_generation.generation_kwargs
            kwargs["stop_token_ids"] = sorted({*(kwargs.get("stop_token_ids") or []), end})
        else:
            self.generation_kwargs["eos_token_id"] = self.eos_token_ids
            self.generation_config.eos_token_id = self.eos_token_ids

    def _chat_tools(self) -> list | None:
        return getattr(self.episode, "chat_tools", None) or None

    def _rollout(self, prompts, trainer=None) -> dict:
        prompt_ids = self.chat_turns.prompt_ids(prompts, tools=self._chat_tools())
        self._rollouts = run_episodes(
            self.episode,
            prompt_ids,
            self._generate_turn,
            self.chat_turns,
            self._num_generations(),
            max_over_processes=self._max_over_processes,
            # The batch's dataset rows (e.g. a code task's visible tests), in the order TRL passes their prompts.
            rows=self._batch_rows if self._batch_rows is not None and len(self._batch_rows) == len(prompts) else None,
        )
        has_logprobs = any(seg.logprobs is not None for r in self._rollouts for seg in r.segments)
        return {
            "prompt_ids": [list(p) for p in prompt_ids],
            "completion_ids": [r.completion_ids() for r in self._rollouts],
            "logprobs": [r.logprobs() for r in self._rollouts] if has_logprobs else None,
            "env_mask": [r.tool_mask() for r in self._rollouts],
        }

    def _generate_turn(self, prompt_ids, num_generations):
        self.generation_calls += 1
        return self._generate_single_turn(prompt_ids, None, {}, num_generations)

    def _max_over_processes(self, count: int) -> int:
        if self.accelerator.num_processes == 1:
            return count
        return int(self.accelerator.gather(torch.tensor([count], device=self.accelerator.device)).max().item())

    def _generate(self, prompts):
        prompt_ids, completion_ids, tool_mask, _, logprobs, extra, images, tool_images = super()._generate(prompts)
        # Reward functions score the episode's final answer, not the whole stream with feedback in it.
        finals = [self.episode.scored_turns(r)["final"].text for r in self._rollouts]
        completions = _as_completions(prompts, finals)
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra, images, tool_images

    # ---- rewards and advantages ----------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self._rollouts is None:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        scored = [self.episode.scored_turns(r) for r in self._rollouts]
        if hasattr(self.episode, "reward_kwargs"):
            # TRL hands every column of the input rows except the prompt to reward functions as kwargs, so per-episode
            # facts (e.g. tool calls made, the first search result) travel as extra columns.
            extra = self.episode.reward_kwargs(self._rollouts)
            inputs = [{**row, **{k: v[i] for k, v in extra.items()}} for i, row in enumerate(inputs)]
        # Same keys, same order on every process: each call below is a collective (it gathers the rewards).
        self._scored_rewards = {}
        for key in scored[0]:
            with self._reward_logs_under(None if key == "final" else key):
                self._scored_rewards[key] = super()._calculate_rewards(
                    inputs,
                    prompts,
                    _as_completions(prompts, [s[key].text for s in scored]),
                    [s[key].ids for s in scored],
                )
        return self._scored_rewards["final"]

    @contextmanager
    def _reward_logs_under(self, prefix: str | None):
        """While scoring a turn other than the final one, what reward functions log through TRL's `log_metric` and
        `log_extra` hooks goes under `<prefix>/<name>`: the final turn keeps TRL's names and columns, and no column
        gets two values per completion. TRL reads the hooks from these attributes when it builds reward kwargs."""
        if prefix is None:
            yield
            return
        log_metric, log_extra = self._log_metric, self._log_completion_extra
        self._log_metric = lambda name, value: log_metric(f"{prefix}/{name}", value)
        self._log_completion_extra = lambda column, values: log_extra(f"{prefix}/{column}", values)
        try:
            yield
        finally:
            del self._log_metric, self._log_completion_extra  # back to the class's bound methods

    def _generate_and_score_completions(self, inputs):
        self._batch_rows = inputs  # TRL's rollout hook gets only the prompts; episodes may need the rows
        if hasattr(self.episode, "set_step"):  # e.g. SCoRe's stage switch (episode self_correct)
            self.episode.set_step(self.state.global_step)
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._batch_rows = None
        mode = "train" if self.model.training else "eval"
        device = self.accelerator.device
        rewards = self._weighted_rewards(device)
        num_generations = self._num_generations()
        global_adv = self.episode.advantages(rewards, num_generations, self.scale_rewards)
        start = self.accelerator.process_index * len(inputs)
        local_adv = {k: v[start : start + len(inputs)].cpu() for k, v in global_adv.items()}
        width = output["completion_ids"].size(1)
        output["advantages"] = token_advantages(self._rollouts, local_adv, width).to(device)
        if mode == "train":  # a batch sampled in SCoRe's stage I may be trained in stage II (mtgrpo/score_stages.py)
            self._add_stage2_view(output, rewards, start, len(inputs), num_generations)
        self._collect_feedback_samples(self._rollouts, local_adv)
        self._log_turn_advantages(local_adv)
        self._log_turn_metrics(mode, device)
        if mode == "train" and self.args.episode_log_steps and self.state.global_step % self.args.episode_log_steps == 0:
            records = episode_records(
                inputs,
                self._rollouts,
                self.episode.turn_rewards({k: v[start : start + len(inputs)] for k, v in rewards.items()}),
                output["advantages"],
                first_index=start,
                num_generations=num_generations,
                **self._feedback_transcript_fields(local_adv),
            )
            records = gather_object(records)
            if self.accelerator.is_main_process:
                write_transcripts(self.args.output_dir, self.state.global_step, records)
        self._rollouts, self._scored_rewards = None, None
        return output

    def _log_turn_advantages(self, local_adv: dict[str, torch.Tensor]) -> None:
        """The completions table's advantage column: the per-turn advantages that are trained (e.g. "solve=+0.71
        refine=-0.23"), replacing the single advantage TRL logged for each episode of this batch."""
        labels = [
            " ".join(f"{seg.credit}={local_adv[seg.credit][b].item():+.2f}" for seg in r.turns() if seg.trained and seg.credit)
            for b, r in enumerate(self._rollouts)
        ]
        labels = gather_object(labels)
        logged = self._logs["advantages"]
        for offset, label in enumerate(labels, start=len(logged) - len(labels)):
            if offset >= 0:
                logged[offset] = label

    def _weighted_rewards(self, device) -> dict[str, torch.Tensor]:
        """Weighted reward sums per scored turn: `key` over all reward functions, and `key/turn`, `key/outcome`
        over the functions of that level (a function's `reward_level` attribute, default "outcome")."""
        weights = self.reward_weights.to(device)
        levels = [getattr(f, "reward_level", "outcome") for f in self.reward_funcs]
        selections = {"": [True] * len(levels), "/turn": [lv == "turn" for lv in levels],
                      "/outcome": [lv == "outcome" for lv in levels]}
        rewards = {}
        for key, per_func in self._scored_rewards.items():
            for suffix, chosen in selections.items():
                chosen = torch.tensor(chosen, device=device)
                total = (per_func[:, chosen] * weights[chosen].unsqueeze(0)).nansum(dim=1)
                total[torch.isnan(per_func).all(dim=1)] = torch.nan  # unscorable, as in TRL
                rewards[key + suffix] = total
        return rewards

    def _log_turn_metrics(self, mode: str, device) -> None:
        metrics = self._metrics[mode]
        if self._correctness_index is not None and "turn1" in self._scored_rewards:
            first = self._scored_rewards["turn1"][:, self._correctness_index] > 0.5
            final = self._scored_rewards["final"][:, self._correctness_index] > 0.5
            for name, value in self_correction_metrics(first.tolist(), final.tolist()).items():
                metrics[name].append(value)
            if getattr(self.episode, "feedback_source", None) in ("model", "self", "template"):
                # The feedback writer's effect (MLMT-RL): share of episodes whose refined answer is right and first
                # answer wrong (the same events as self_correction/incorrect_to_correct, under the feedback name).
                metrics["feedback/improvement"].append((final & ~first).float().mean().item())
        # Episode metrics are means over per-episode (or per-turn) values of every process. Sorted names, so that
        # every rank gathers in the same order; a rank without values for a name still joins with (0, 0).
        local = self.episode.metrics(self._rollouts)
        for name in sorted(set(gather_object(list(local)))):
            values = local.get(name, [])
            stats = torch.tensor([float(sum(values)), float(len(values))], device=device)
            total, count = self.accelerator.gather(stats).view(-1, 2).sum(dim=0).tolist()
            if count:
                metrics[name].append(total / count)


def _as_completions(prompts, texts: list[str]):
    """Texts in the form TRL hands to reward functions: messages for conversational prompts, else strings."""
    if is_conversational({"prompt": prompts[0]}):
        return [[{"role": "assistant", "content": t}] for t in texts]
    return list(texts)


def build_trainer(script_args, training_args, model_args, trainer_cls=None):
    """Everything `main` does before `train()`: resolve the model, load data and rewards, build the trainer.

    `trainer_cls` (default MultiTurnGRPOTrainer) lets a benchmark build TRL's plain GRPOTrainer from the same recipe.
    """
    from trl import get_peft_config

    from .models import resolve_model_path

    reward_funcs, train_dataset = check_training_inputs(script_args, training_args, model_args)
    # The episode's parts (tools, feedback checker, environment) are resolved before the model is loaded, so a
    # misspelled tool fails in seconds; the trainer takes this episode instead of building its own.
    own_episode = {"episode": build_episode(training_args)} if trainer_cls is None else {}
    model_path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_path, model_args)
    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    make_output_dir(training_args.output_dir)  # the Trainer would make it only after loading the model
    with rollout_server_errors(training_args):
        return (trainer_cls or MultiTurnGRPOTrainer)(
            model=model_path,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
            **own_episode,
        )


def load_tokenizer(model_path: str, model_args):
    """The model's tokenizer, padding with EOS where it has no pad token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    except OSError as err:  # a hub id that is neither cached nor reachable
        raise ValueError(
            f"Could not load model_name_or_path {model_args.model_name_or_path!r} ({err}). Download it first "
            "(`hf download ID`), or pass a local folder saved by save_pretrained."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_training_inputs(script_args, training_args, model_args):
    """build_trainer's cheap checks, so a bad recipe fails before any model is loaded or file is written (the demo
    runs them before its first evaluation). Returns (the reward functions, the training split)."""
    from .episodes import episode_reward_columns
    from .models import check_model_path
    from .registry import check_reward_columns, get_reward_func, get_reward_funcs
    from .tasks.data import load_recipe_split

    if Path(training_args.output_dir).is_file():
        raise ValueError(
            f"output_dir {training_args.output_dir!r} is a file; the run writes checkpoints and the model into a "
            "folder there. Pass a folder path (recipe field / flag `output_dir`)."
        )
    check_model_path(model_args.model_name_or_path)
    if training_args.use_vllm and not _trl_finds_vllm():  # TRL would fail only after loading the model
        raise ValueError(
            "use_vllm: true generates with vLLM, which is not installed here. On a CUDA machine install the vllm "
            "extra (pip install 'mtgrpo[vllm]'); on a CPU, set use_vllm: false (flag --use_vllm false)."
        )
    if training_args.feedback_source == "model" and not training_args.feedback_server_url:
        check_model_path(training_args.feedback_model_name_or_path, "feedback_model_name_or_path")
    reward_funcs = get_reward_funcs(script_args.reward_funcs)
    if training_args.correctness_reward:  # a misspelled name would only turn the accuracy metrics off, with a warning
        get_reward_func(training_args.correctness_reward, "correctness_reward")
    train_dataset = load_recipe_split(script_args, "train", seed=training_args.seed)
    columns = [*train_dataset.column_names, *episode_reward_columns(training_args.episode)]
    check_reward_columns(reward_funcs, columns, script_args.dataset_name)
    return reward_funcs, train_dataset


def make_output_dir(path: str | Path, name: str = "output_dir") -> None:
    """Create the folder a run writes into before the expensive part: a path where no folder can be made (below a
    file, on a read-only or virtual file system) fails in seconds, not after the model is loaded or the work is done."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or err
        raise ValueError(f"{name} {str(path)!r} cannot be created ({reason}). Pass a folder you can write to.") from None


def _trl_finds_vllm() -> bool:
    from trl.generation import vllm_generation  # the check TRL's generation makes, where TRL makes it

    return vllm_generation.is_vllm_available()


class RolloutServerError(RuntimeError):
    """The rollout vLLM server (`vllm_mode: server`) cannot be reached or cannot take the trainer's weight updates."""


@contextmanager
def rollout_server_errors(args):
    """TRL's refusal of the rollout server while the trainer is built, as one RolloutServerError naming the URL and the
    fix. TRL connects in `VLLMGeneration._init_vllm`, where VLLMClient checks the server itself (its /health wait,
    then in `init_communicator` the development endpoints, the weight-transfer engine and a CUDA device); only an
    error VLLMClient raises there is translated, so a bug anywhere else (NCCL's included) keeps its traceback."""
    try:
        yield
    except (OSError, RuntimeError) as error:  # requests' ConnectionError is an OSError
        if not (args.use_vllm and args.vllm_mode == "server" and _vllm_client_refused(error)):
            raise
        raise RolloutServerError(_rollout_server_problem(args, error)) from None


def _vllm_client_refused(error: BaseException) -> bool:
    """Whether VLLMClient itself raised `error` while TRL's VLLMGeneration connected to the server."""
    from trl.generation import vllm_client, vllm_generation

    frames = traceback.extract_tb(error.__traceback__)
    connecting = any(f.name == "_init_vllm" and f.filename == vllm_generation.__file__ for f in frames)
    return connecting and frames[-1].filename == vllm_client.__file__


def _rollout_server_problem(args, error: BaseException) -> str:
    url = args.vllm_server_base_url or f"http://{args.vllm_server_host}:{args.vllm_server_port}"
    # TRL's first sentence, without the URL this line already names; the rest is its advice, replaced by ours.
    reason = str(error).split(". ")[0].removeprefix(f"The vLLM server at {url} ")
    if isinstance(error, OSError):
        return (
            f"The rollout vLLM server at {url} cannot be reached (waited vllm_server_timeout={args.vllm_server_timeout:g}"
            " s). Fix: start it first (`mtgrpo launch RECIPE` does; by hand `trl vllm-serve --model MODEL`), check "
            "vllm_server_base_url, or raise vllm_server_timeout if it is still loading."
        )
    if isinstance(error, NotImplementedError):  # TRL's NCCL weight transfer on a trainer without CUDA
        return (
            f"The trainer cannot push weights to the rollout vLLM server at {url} ({reason}). Fix: train on a CUDA "
            "machine, or set use_vllm: false to generate with transformers."
        )
    return (
        f"The rollout vLLM server at {url} cannot take the trainer's weight updates ({reason}). "
        "Fix: start it as TRL needs it, with `mtgrpo launch RECIPE` or `trl vllm-serve --model MODEL`, i.e. "
        """`VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --weight-transfer-config '{"backend": "nccl"}'`."""
    )
