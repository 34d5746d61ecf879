"""Recipe dataclasses: `MTGRPOConfig` (GRPOConfig + the multi-turn fields) and `ScriptArguments` (data, rewards).

A recipe YAML holds fields of these two dataclasses plus TRL's `ModelConfig`; `mtgrpo.train` parses all three
with TRL's `TrlParser` (YAML defaults, CLI overrides).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from trl import GRPOConfig

logger = logging.getLogger(__name__)

EPISODES = ("refine", "tool", "plan", "self_correct", "mutis")
FEEDBACK_SOURCES = ("self", "template", "model", "checker")
TOOL_PROTOCOLS = ("text", "native", "auto")
ADVANTAGE_MODES = ("mt_grpo", "grpo_or", "grpo_mr")
SEARCH_BACKENDS = ("bm25", "pyserini")

DEFAULT_FEEDBACK_PROMPT = (
    "You are now a strict math tutor. Check the attempt above step by step. Point out any mistake and give a "
    "short hint, but do NOT solve the problem and do NOT state the final answer."
)
DEFAULT_FEEDBACK_TEMPLATE = "Check your attempt above step by step: recompute the arithmetic carefully."
DEFAULT_REFINE_PROMPT = (
    "Using the feedback, solve the problem again and finish with 'The answer is N.' where N is your final answer."
)
# episode: plan (the high-level turn of MLMT-RL's context-generator form / ToSCA's strategy level)
DEFAULT_PLAN_PROMPT = (
    "Write a short plan for solving this problem: the steps to take and the pitfalls to avoid. Do NOT carry out the "
    "steps and do NOT state the final answer."
)
DEFAULT_SOLVE_WITH_PLAN_PROMPT = (
    "Follow the plan to solve the problem and finish with 'The answer is N.' where N is your final answer."
)
# ---- self-correction (episode: self_correct / mutis, feedback_reward, turn_kl), see docs/self_correction.md ----
FEEDBACK_REWARDS = ("outcome", "improvement")
# SCoRe's (Kumar et al. 2024) second-attempt instruction for MATH.
DEFAULT_SELF_CORRECT_PROMPT = (
    "There might be an error in the solution above. Please review it carefully and give your final answer."
)
# MuTIS's intervention: the turn ended without an answer, so ask for one in the format the reward parses.
DEFAULT_INTERVENTION_TEXT = (
    "You did not give a final answer. Put your final answer in <answer></answer> tags and try again."
)
# The credit keys (Segment.credit) each built-in episode gives trained tokens; `turn_kl` is keyed by them.
CREDIT_KEYS = {
    "refine": ("solve", "feedback", "refine"),
    "tool": ("pre_tool", "post_tool", "no_tool"),
    "self_correct": ("solve_stage1", "solve", "refine"),
    "mutis": ("solve", "retry"),
    "plan": ("plan", "solve"),
}


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}. Choose one of {list(allowed)} (recipe field `{name}`).")


@dataclass
class MTGRPOConfig(GRPOConfig):
    """GRPOConfig plus the multi-turn fields. Every GRPOConfig field keeps its TRL meaning."""

    episode: str = field(
        default="refine",
        metadata={"help": f"Episode protocol run for each prompt. One of {list(EPISODES)}."},
    )
    feedback_source: str = field(
        default="self",
        metadata={
            "help": "Who writes the feedback turn of a refine episode: 'self' = the policy under `feedback_prompt` "
            "(a tutor that points out problems without solving), 'template' = the fixed `feedback_template` text, "
            "'model' = a separate model (`feedback_model_name_or_path`), frozen or, with train_feedback_model, "
            "trained (see docs/feedback_model.md); 'checker' = a program that checks the first answer "
            "(`feedback_checker`)."
        },
    )
    feedback_checker: str | None = field(
        default=None,
        metadata={
            "help": "feedback_source=checker: the function that writes the feedback from the dataset row (without its "
            "gold answer) and the first answer: a built-in ('arithmetic': recomputes every a op b = c claim and names "
            "the wrong ones; 'code_tests': the visible tests' execution report) or package.module:function."
        },
    )
    train_feedback: bool = field(
        default=False,
        metadata={
            "help": "With feedback_source=self: train the feedback tokens (they get their own advantage from the "
            "final reward, MLMT-RL's high-level reward). When false they are masked out of the loss."
        },
    )
    feedback_prompt: str = field(
        default=DEFAULT_FEEDBACK_PROMPT,
        metadata={"help": "User message that asks the policy for feedback (feedback_source=self). Masked."},
    )
    feedback_template: str = field(
        default=DEFAULT_FEEDBACK_TEMPLATE,
        metadata={"help": "Fixed feedback text (feedback_source=template). Masked."},
    )
    refine_prompt: str = field(
        default=DEFAULT_REFINE_PROMPT,
        metadata={"help": "User message that asks for the refined answer after the feedback. Masked."},
    )
    turn1_reward_weight: float = field(
        default=0.0,
        metadata={
            "help": "w: the turn-1 (solve) advantage comes from w * R(turn 1) + (1 - w) * R(final), group-normalised. "
            "0.0 (default) = MLMT-RL / Bi-NAC: every solver turn is credited with the final outcome. 1.0 with "
            "refine_bonus_alpha > 0 = SCoRe stage II: turn 1 earns its own reward. 1.0 with alpha 0 makes the turns "
            "independent single-turn objectives, the setting in which SCoRe reports collapse."
        },
    )
    refine_bonus_alpha: float = field(
        default=0.0,
        metadata={
            "help": "alpha: the final-turn advantage comes from R(final) + alpha * (R(final) - R(turn 1)), SCoRe's "
            "stage-II shaping (a bonus for improving on turn 1; 0 where either turn is unscorable). 0.0 (default) = "
            "no shaping, as in MLMT-RL's low level; SCoRe uses alpha > 0 together with turn1_reward_weight 1.0."
        },
    )
    correctness_reward: str = field(
        default="math_answer_correct",
        metadata={
            "help": "Name of the reward function (one of reward_funcs) whose value > 0.5 counts as a correct "
            "answer for the turns/* and self_correction/* metrics."
        },
    )
    episode_log_steps: int = field(
        default=0,
        metadata={"help": "Write OUTPUT_DIR/episodes/step_{global_step:06d}.jsonl every N steps; 0 = off."},
    )
    max_prompt_length: int | None = field(
        default=512,
        metadata={"help": "Longest allowed prompt in tokens (after the chat template); longer prompts are an error."},
    )
    # ---- tool episode (episode: tool) ----
    max_tool_calls: int = field(
        default=1,
        metadata={
            "help": "Tool episode: most tool-calling turns per episode. After the last allowed result the policy gets "
            "one more turn to answer; a tool call in that turn is not run (MT-GRPO's step cap). 1 = search once, "
            "then answer (the paper's setup)."
        },
    )
    tool_timeout: float = field(
        default=10.0,
        metadata={"help": "Tool episode: seconds one tool call may run; a slower call returns an error result."},
    )
    tool_protocol: str = field(
        default="text",
        metadata={
            "help": "Tool episode: how the policy calls tools. 'text' = MT-GRPO's <tool>{\"name\": ..., \"args\": "
            "{...}}</tool> -> <result>...</result> (any chat template); 'native' = the chat template's own tool "
            "calls, parsed by TRL (Qwen2.5/Qwen3, Llama 3.1/3.2 and other templates TRL knows); 'auto' = native "
            "when the template supports tool calls, else text."
        },
    )
    advantage_mode: str = field(
        default="mt_grpo",
        metadata={
            "help": "Tool episode credit: 'mt_grpo' = tokens up to the first tool call get A_O + "
            "turn_advantage_coef * A_T, tokens after its result A_O, episodes without a result A_{T+O}; 'grpo_or' = "
            "A_O everywhere (outcome reward only); 'grpo_mr' = A_{T+O} everywhere (merged rewards)."
        },
    )
    turn_advantage_coef: float = field(
        default=1.0,
        metadata={"help": "Tool episode, advantage_mode mt_grpo: lambda, the weight of the turn-level advantage A_T."},
    )
    tools: list[str] | None = field(
        default=None,
        metadata={
            "help": "Tool episode: the tools the policy may call, each a built-in (wiki_search, calculator, python) "
            "or an import path package.module:function (TRL's convention: a plain function with type hints and a "
            "docstring). Unset = [wiki_search]."
        },
    )
    tool_call_prefix: str = field(
        default="",
        metadata={
            "help": "Tool episode, tool_protocol text: text the episode writes at the start of the policy's first "
            "turn (masked, never trained), which the policy continues, e.g. the opening of a call "
            "'<tool>{\"name\": \"calculator\", \"args\": {\"expression\": \"'. A way in for a model that never "
            "writes a call by itself. Training only: evaluation (mtgrpo eval, the demo) runs without it, so it "
            "measures what the policy does by itself. Empty = off."
        },
    )
    tool_call_prefix_rate: float = field(
        default=1.0,
        metadata={
            "help": "Share of episodes (spread evenly over each group) whose first turn gets tool_call_prefix; the "
            "others start from nothing, so a group compares the two."
        },
    )
    tool_call_prefix_trained: bool = field(
        default=False,
        metadata={
            "help": "Train the tool_call_prefix tokens with their turn's advantage, as if the policy had written them "
            "(guided rollouts): the policy learns to open calls itself from the episodes where the written opening "
            "led to a good answer. False = the prefix is masked like any injected text."
        },
    )
    environment_factory: str | None = field(
        default=None,
        metadata={
            "help": "Tool episode: a TRL environment class, package.module:Class (TRL's environment_factory "
            "convention: one instance per episode, reset(**row) may return text appended to the prompt, public "
            "methods are the tools, optional get_reward() scores the episode). Replaces `tools`."
        },
    )
    search_backend: str = field(
        default="bm25",
        metadata={
            "help": "Tool episode: index behind wiki_search. 'bm25' = bm25s over the local `search_corpus` JSONL "
            "(indexed once, cached); 'pyserini' = Pyserini's prebuilt wikipedia-kilt-doc index (pip install "
            "'mtgrpo[pyserini]', Java 21, ~10 GB download on first use)."
        },
    )
    search_corpus: str = field(
        default="wiki-sample",
        metadata={
            "help": "search_backend bm25: a JSONL file of {\"title\", \"text\"} documents, or 'wiki-sample' (the "
            "small corpus bundled with mtgrpo, matching the triviaqa-sample questions)."
        },
    )
    search_top_k: int = field(default=1, metadata={"help": "wiki_search: documents returned per query (MT-GRPO: 1)."})
    search_max_chars: int = field(
        default=1000,
        metadata={"help": "wiki_search: the returned text is cut to this many characters."},
    )
    # ---- a separate feedback / plan model (feedback_source: model; episode: plan), see docs/feedback_model.md ----
    feedback_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "feedback_source=model: the model that writes the feedback (refine) or plan (plan) turn, distinct "
            "from the policy: a hub id, a local path or 'smollm2-135m-instruct' (the bundled model). With "
            "feedback_server_url it is the model name sent to the server (vLLM: the served model name)."
        },
    )
    train_feedback_model: bool = field(
        default=False,
        metadata={
            "help": "false: the feedback model is frozen, Bi-NAC's 'fixed feedback' baseline; its tokens are never "
            "trained. true: bi-level training (MLMT-RL / Bi-NAC): the feedback model is a second policy with its own "
            "AdamW optimizer (feedback_learning_rate), KL (feedback_beta) and schedule (feedback_update_interval), "
            "trained only on its own tokens with its own group-normalised advantage (feedback_reward), see "
            "mtgrpo/feedback_training.py. Needs feedback_source: model and feedback_temperature > 0."
        },
    )
    feedback_learning_rate: float = field(
        default=1.0e-6,
        metadata={"help": "train_feedback_model: the feedback policy's AdamW learning rate (constant)."},
    )
    feedback_beta: float = field(
        default=0.0,
        metadata={
            "help": "train_feedback_model: coefficient of the per-token KL (k3) between the feedback policy and its "
            "own frozen reference (the feedback model as loaded). 0 (default) = no KL and no reference copy."
        },
    )
    feedback_update_interval: int = field(
        default=1,
        metadata={
            "help": "train_feedback_model: the feedback policy takes one update after every solver step whose number "
            "is a multiple of this, on the feedback turns of that step's batch (turns of other steps are not trained "
            "on). 1 = both levels every step; 15 = once per 15 solver steps, the ratio of Bi-NAC's HLT_LLT_RR_1_15 (1 "
            "feedback update per 15 solver updates)."
        },
    )
    feedback_lora: bool = field(
        default=False,
        metadata={
            "help": "train_feedback_model: both roles as two LoRA adapters on ONE base model (memory saving): the "
            "solver is TRL's adapter (use_peft: true), the feedback writer a second adapter with the same LoRA config, "
            "each trained only on its own role's tokens, both with the base model as KL reference. "
            "feedback_model_name_or_path must be the solver's model."
        },
    )
    feedback_vllm_group_port: int = field(
        default=51217,
        metadata={
            "help": "train_feedback_model with feedback_server_url: port of the NCCL group that pushes the feedback "
            "policy's weights to its vLLM server after each update (the solver's is vllm_group_port, 51216)."
        },
    )
    feedback_server_url: str | None = field(
        default=None,
        metadata={
            "help": "feedback_source=model: an OpenAI-compatible server (e.g. `vllm serve`) that serves the feedback "
            "model, e.g. http://127.0.0.1:8001 (POST /v1/chat/completions). Unset: the model runs in this process."
        },
    )
    feedback_api_key_env: str | None = field(
        default=None,
        metadata={
            "help": "Name of the environment variable that holds the feedback server's API key (sent as a Bearer "
            "token, never logged). The key itself never goes into a recipe."
        },
    )
    feedback_timeout: float = field(
        default=120.0, metadata={"help": "Seconds one request to feedback_server_url may take before it is retried."}
    )
    feedback_retries: int = field(
        default=2,
        metadata={"help": "Retries (exponential backoff from 1 s) of a failed, slow or empty feedback server answer."},
    )
    feedback_max_new_tokens: int = field(
        default=256, metadata={"help": "Longest feedback / plan the feedback model writes, in its own tokens."}
    )
    feedback_temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature of the feedback model; 0 = greedy."}
    )
    feedback_device: str = field(
        default="auto",
        metadata={
            "help": "In-process feedback model: 'auto' = the trainer's device (CPU with use_cpu), or a torch device "
            "such as 'cpu' or 'cuda:1'."
        },
    )
    plan_prompt: str = field(
        default=DEFAULT_PLAN_PROMPT,
        metadata={"help": "episode=plan: the request for a plan, after the problem (whoever writes the plan). Masked."},
    )
    solve_with_plan_prompt: str = field(
        default=DEFAULT_SOLVE_WITH_PLAN_PROMPT,
        metadata={"help": "episode=plan: the message after the plan that asks the solver for the answer. Masked."},
    )
    # ---- self-correction: feedback_reward, turn_kl, episode self_correct (SCoRe) and mutis, docs/self_correction.md ----
    feedback_reward: str = field(
        default="outcome",
        metadata={
            "help": "Reward of trained feedback tokens (refine, feedback_source=self, train_feedback=true). 'outcome' "
            "(default) = R(final), the verifier outcome of the refined answer (MLMT-RL / Bi-NAC's high-level reward); "
            "'improvement' = R(final) - R(turn 1) (RL-guided SCoRe; refine only), 0 where only turn 1 is unscorable, so "
            "restating a right first answer earns nothing and only feedback that fixes a wrong one earns the most. In "
            "both modes an unscorable final answer is left out of the group baseline with advantage 0, as in TRL."
        },
    )
    turn_kl: dict | str | None = field(
        default=None,
        metadata={
            "help": "Per-credit-key KL coefficients against the reference model, e.g. {solve: 0.1, refine: 0.0}: "
            "TRL's per-token KL (k3) times the key's coefficient is added to the loss of exactly the tokens with that "
            "credit, so its gradient reaches only them (SCoRe stage I: a strong KL on turn 1). Keys: the episode's "
            "credit keys (refine: solve/feedback/refine; self_correct: solve_stage1/solve/refine; mutis: solve/retry; "
            "tool: pre_tool/post_tool/no_tool). Added to TRL's `beta` (which applies to every trained token). "
            "Unset or all zero (default) = today's loss, bit for bit."
        },
    )
    score_stage1_steps: int = field(
        default=0,
        metadata={
            "help": "episode=self_correct: the first N optimizer steps are SCoRe's stage I (Kumar et al. 2024): only "
            "the second attempt is trained, on r2, while turn 1 earns no advantage and is held near the reference by "
            "turn_kl's `solve_stage1` coefficient (turn 1 is masked out when that coefficient is 0). From step N on, "
            "stage II: turn 1 on r1, turn 2 on r2 + refine_bonus_alpha * (r2 - r1). 0 (default) = stage II from the "
            "start, SCoRe's 'without stage I' ablation (a warning is logged for episode self_correct)."
        },
    )
    self_correct_prompt: str = field(
        default=DEFAULT_SELF_CORRECT_PROMPT,
        metadata={
            "help": "episode=self_correct: the fixed instruction between the two attempts (masked). Default: SCoRe's "
            "MATH instruction (Kumar et al. 2024)."
        },
    )
    intervention_text: str = field(
        default=DEFAULT_INTERVENTION_TEXT,
        metadata={
            "help": "episode=mutis: the message injected (masked) after a turn that ends without a final answer "
            "(MuTIS, EMNLP 2025: put the answer in <answer> tags and try again). Must not be empty."
        },
    )
    max_turns: int = field(
        default=4,
        metadata={
            "help": "episode=mutis: most policy turns per episode, the last included. 4 (default) = MuTIS's published "
            "setting, up to 3 turns plus a final one; an episode whose last turn still has no answer ends and is "
            "scored as it is."
        },
    )
    turn_max_tokens: list[int] | None = field(
        default=None,
        metadata={
            "help": "episode=mutis: token cap of each turn, e.g. [256, 128] (turn i gets entry i; later turns the last "
            "entry). A turn is cut to its cap after generation; max_completion_length still bounds every call. "
            "Unset (default) = max_completion_length only."
        },
    )

    def __post_init__(self):
        _one_of("episode", self.episode, EPISODES)
        _one_of("feedback_source", self.feedback_source, FEEDBACK_SOURCES)
        self._check_feedback_model_fields()
        if self.train_feedback and self.feedback_source != "self":
            raise ValueError(
                "train_feedback=true needs feedback_source=self: template feedback is not written by the policy. "
                "Set feedback_source: self or train_feedback: false."
            )
        if not 0.0 <= self.turn1_reward_weight <= 1.0:
            raise ValueError(f"turn1_reward_weight={self.turn1_reward_weight} must be in [0, 1].")
        if self.refine_bonus_alpha < 0:
            raise ValueError(f"refine_bonus_alpha={self.refine_bonus_alpha} must be >= 0 (0 turns the bonus off).")
        if self.episode == "refine" and self.turn1_reward_weight == 1.0 and self.refine_bonus_alpha == 0.0:
            logger.warning(
                "turn1_reward_weight=1.0 with refine_bonus_alpha=0 trains turn 1 and the final turn as independent "
                "single-turn objectives, the setting in which SCoRe reports collapse (the final turn copies the "
                "first). Set refine_bonus_alpha > 0 (SCoRe stage II) or turn1_reward_weight: 0.0 (MLMT-RL)."
            )
        if self.episode_log_steps < 0:
            raise ValueError(f"episode_log_steps={self.episode_log_steps} must be >= 0 (0 turns transcripts off).")
        if self.max_prompt_length is not None and self.max_prompt_length <= 0:
            raise ValueError(f"max_prompt_length={self.max_prompt_length} must be positive or null.")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            # Named here: TRL would only report its internal generation setting max_new_tokens.
            raise ValueError(
                f"max_completion_length={self.max_completion_length} must be >= 1: it is the most tokens one turn "
                "may generate (recipe field `max_completion_length`)."
            )
        self._check_run_size()
        self._check_tool_fields()
        self._check_self_correction_fields()
        self._fall_back_from_bf16_without_gpu()
        super().__post_init__()

    def _check_run_size(self) -> None:
        # transformers reads any max_steps <= 0 as "train num_train_epochs epochs": -3 would silently run a whole
        # epoch, and a batch of 0 fails only inside torch's sampler once the model is loaded.
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"max_steps={self.max_steps}: give the number of optimizer steps (>= 1), or -1 (the default) to train "
                "num_train_epochs epochs instead (recipe field `max_steps`)."
            )
        if self.per_device_train_batch_size < 1:
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size} must be >= 1: completions per device "
                "and step, a multiple of num_generations (recipe field `per_device_train_batch_size`)."
            )

    def _check_feedback_model_fields(self) -> None:
        """feedback_source: model and episode: plan (docs/feedback_model.md)."""
        self._check_trainable_feedback_model_fields()
        if self.feedback_source == "model":
            if not self.feedback_model_name_or_path:
                raise ValueError(
                    "feedback_source=model needs feedback_model_name_or_path: a hub id, a local path or "
                    "'smollm2-135m-instruct' (with feedback_server_url: the name the server serves it under)."
                )
            if self.train_feedback:
                raise ValueError(
                    "train_feedback=true trains feedback written by the policy (feedback_source=self). Set "
                    "train_feedback: false, or feedback_source: self; train_feedback_model: true trains the separate "
                    "feedback model."
                )
        elif self.feedback_model_name_or_path or self.feedback_server_url:
            raise ValueError(
                f"feedback_model_name_or_path / feedback_server_url are set but feedback_source={self.feedback_source!r}"
                " does not use them. Set feedback_source: model, or remove them."
            )
        if self.feedback_source == "checker" and not self.feedback_checker:
            raise ValueError("feedback_source: checker needs feedback_checker: a built-in (arithmetic, code_tests) or "
                             "an import path package.module:function.")
        if self.feedback_checker and self.feedback_source != "checker":
            raise ValueError(f"feedback_checker is set but feedback_source={self.feedback_source!r} does not use it. Set "
                             "feedback_source: checker, or remove feedback_checker.")
        if self.episode == "plan" and self.feedback_source == "checker":
            raise ValueError("episode=plan has no checker turn; feedback_source: checker works with episode: refine.")
        if self.episode == "plan" and self.feedback_source == "template":
            raise ValueError(
                "episode=plan needs a plan writer: feedback_source: model (a separate model) or self (the policy "
                "under plan_prompt); a fixed template plan is not supported."
            )
        if self.feedback_server_url and not self.feedback_server_url.startswith(("http://", "https://")):
            raise ValueError(
                f"feedback_server_url={self.feedback_server_url!r} must be an http:// or https:// URL, e.g. "
                "http://127.0.0.1:8001."
            )
        if self.feedback_timeout <= 0:
            raise ValueError(f"feedback_timeout={self.feedback_timeout} must be a positive number of seconds.")
        if self.feedback_retries < 0:
            raise ValueError(f"feedback_retries={self.feedback_retries} must be >= 0 (0 = no retry).")
        if self.feedback_max_new_tokens < 1:
            raise ValueError(f"feedback_max_new_tokens={self.feedback_max_new_tokens} must be >= 1.")
        if self.feedback_temperature < 0:
            raise ValueError(f"feedback_temperature={self.feedback_temperature} must be >= 0 (0 = greedy).")

    def _check_trainable_feedback_model_fields(self) -> None:
        """train_feedback_model: bi-level training of the feedback model (mtgrpo/feedback_training.py)."""
        if self.feedback_update_interval < 1:
            raise ValueError(
                f"feedback_update_interval={self.feedback_update_interval} must be >= 1 (1 = update the feedback "
                "model after every solver step, 15 = after every 15th: Bi-NAC's HLT_LLT_RR_1_15 ratio)."
            )
        for name in ("feedback_learning_rate", "feedback_beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        if self.feedback_lora and not self.train_feedback_model:
            raise ValueError(
                "feedback_lora=true makes the TRAINED feedback model a second LoRA adapter on the solver's base model, "
                "but train_feedback_model is false. Set train_feedback_model: true, or remove feedback_lora."
            )
        if not self.train_feedback_model:
            return
        if self.feedback_source != "model":
            raise ValueError(
                f"train_feedback_model=true trains a separate feedback model, but feedback_source="
                f"{self.feedback_source!r}. Set feedback_source: model (with feedback_model_name_or_path), or use "
                "feedback_source: self with train_feedback: true to train feedback the policy writes itself."
            )
        if self.feedback_temperature <= 0:
            raise ValueError(
                "train_feedback_model=true needs feedback_temperature > 0: a policy gradient needs samples from the "
                "feedback policy, and greedy feedback is not one (Bi-NAC samples it at temperature 1.0)."
            )
        if self.feedback_api_key_env:
            raise ValueError(
                "train_feedback_model=true with feedback_api_key_env: a trainable feedback model's server must take "
                "weight updates (TRL's vLLM server, which `mtgrpo launch` starts); a hosted API cannot. Remove "
                "feedback_api_key_env, or set train_feedback_model: false."
            )

    def _check_self_correction_fields(self) -> None:
        """feedback_reward, turn_kl, episode self_correct and mutis (docs/self_correction.md)."""
        _one_of("feedback_reward", self.feedback_reward, FEEDBACK_REWARDS)
        if self.feedback_reward == "improvement" and not (self.train_feedback or self.train_feedback_model):
            raise ValueError(
                "feedback_reward=improvement rewards the feedback writer, but no feedback tokens are trained. Set "
                "feedback_source: self and train_feedback: true (or feedback_source: model and train_feedback_model: "
                "true), or leave feedback_reward: outcome."
            )
        if self.feedback_reward == "improvement" and self.episode != "refine":
            # R(final) - R(turn 1) needs a first answer that the feedback or plan could improve on; a plan comes
            # before any answer, so the setting would be silently ignored.
            raise ValueError(
                f"feedback_reward=improvement credits feedback with R(final) - R(turn 1) of a refine episode; episode "
                f"{self.episode!r} has no first answer the {'plan' if self.episode == 'plan' else 'feedback'} could "
                "improve on. Set feedback_reward: outcome (the plan writer earns R(final)) or episode: refine."
            )
        self.turn_kl = parse_turn_kl(self.turn_kl, self.episode)
        if self.score_stage1_steps < 0:
            raise ValueError(f"score_stage1_steps={self.score_stage1_steps} must be >= 0 (0 = no SCoRe stage I).")
        if self.score_stage1_steps and self.episode != "self_correct":
            raise ValueError(
                f"score_stage1_steps={self.score_stage1_steps} only applies to episode: self_correct (SCoRe); "
                f"episode is {self.episode!r}. Set episode: self_correct or remove score_stage1_steps."
            )
        if self.max_steps > 0 and self.score_stage1_steps > self.max_steps:
            raise ValueError(
                f"score_stage1_steps={self.score_stage1_steps} > max_steps={self.max_steps}: stage II would never "
                "start. Lower score_stage1_steps (SCoRe runs stage I, then stage II) or raise max_steps."
            )
        if self.episode == "self_correct":
            if self.score_stage1_steps == 0:
                logger.warning(
                    "episode=self_correct with score_stage1_steps=0 skips SCoRe's stage I (its ablation: the "
                    "self-correction gain falls from 4.4 to 2.2 points). Set score_stage1_steps > 0."
                )
            elif not self.turn_kl.get("solve_stage1"):
                logger.warning(
                    "episode=self_correct: no turn_kl coefficient for solve_stage1, so stage I masks turn 1 instead "
                    "of holding it near the reference (SCoRe's stage I). Set e.g. turn_kl: {solve_stage1: 1.0}."
                )
            if self.refine_bonus_alpha == 0.0:
                logger.warning(
                    "episode=self_correct with refine_bonus_alpha=0: stage II trains the two attempts as independent "
                    "single-turn objectives, the setting in which SCoRe reports collapse. Set refine_bonus_alpha > 0."
                )
        if self.episode == "mutis":
            if not self.intervention_text.strip():
                raise ValueError(
                    "intervention_text is empty: episode=mutis injects it after a turn without an answer. Set it, e.g. "
                    f"intervention_text: {DEFAULT_INTERVENTION_TEXT!r}."
                )
            if self.max_turns < 1:
                raise ValueError(f"max_turns={self.max_turns} must be >= 1 (MuTIS: 4, up to 3 turns plus a final one).")
        if self.turn_max_tokens is not None and (
            not self.turn_max_tokens or any(int(cap) < 1 for cap in self.turn_max_tokens)
        ):
            raise ValueError(
                f"turn_max_tokens={self.turn_max_tokens} must be a non-empty list of positive token counts, e.g. "
                "[256, 128], or unset."
            )

    def _check_tool_fields(self) -> None:
        _one_of("tool_protocol", self.tool_protocol, TOOL_PROTOCOLS)
        _one_of("advantage_mode", self.advantage_mode, ADVANTAGE_MODES)
        _one_of("search_backend", self.search_backend, SEARCH_BACKENDS)
        for name in ("max_tool_calls", "search_top_k", "search_max_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 (recipe field `{name}`).")
        if self.tool_timeout <= 0:
            raise ValueError(f"tool_timeout={self.tool_timeout} must be a positive number of seconds.")
        if self.tool_call_prefix and self.tool_protocol == "native":
            raise ValueError("tool_call_prefix writes the opening of a text-protocol call (<tool>...); it cannot be "
                             "used with tool_protocol: native. Use tool_protocol: text, or drop tool_call_prefix.")
        if not 0.0 <= self.tool_call_prefix_rate <= 1.0:
            raise ValueError(f"tool_call_prefix_rate={self.tool_call_prefix_rate} must be between 0 and 1.")
        if self.tools is not None and self.environment_factory:
            raise ValueError("Set either tools (functions) or environment_factory (a class whose methods are the "
                             "tools), not both.")

    def _fall_back_from_bf16_without_gpu(self) -> None:
        import torch

        if torch.cuda.is_available() or self.bf16 is False:
            return
        if self.bf16 is True:
            logger.warning("bf16 was requested but this machine has no CUDA GPU; training in fp32 instead.")
        # GRPOConfig turns bf16=None into True, which transformers rejects on a CPU-only machine.
        self.bf16 = False


def parse_turn_kl(value, episode: str) -> dict[str, float]:
    """`turn_kl` as a {credit key: coefficient} dict (a JSON string from the CLI is parsed), checked against the
    episode's credit keys (CREDIT_KEYS; an episode not listed there is not checked)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"turn_kl={value!r} is not valid JSON. Write it as a mapping, e.g. --turn_kl '{{\"solve\": 0.1}}' "
                "on the command line or `turn_kl: {solve: 0.1}` in a recipe."
            ) from err
    if not isinstance(value, dict):
        raise ValueError(f"turn_kl={value!r} must map credit keys to coefficients, e.g. {{solve: 0.1, refine: 0.0}}.")
    known = CREDIT_KEYS.get(episode)
    out = {}
    for key, coef in value.items():
        if known is not None and key not in known:
            raise ValueError(
                f"Unknown credit key {key!r} in turn_kl for episode {episode!r}. Use one of {list(known)} "
                "(recipe field `turn_kl`)."
            )
        if isinstance(coef, bool) or not isinstance(coef, int | float):
            raise ValueError(f"turn_kl[{key!r}]={coef!r} must be a number (a KL coefficient >= 0).")
        if coef < 0:
            raise ValueError(
                f"turn_kl[{key!r}]={coef} is negative: a negative KL coefficient rewards moving away from the "
                "reference. Use a coefficient >= 0 (0 = no KL on those tokens)."
            )
        out[str(key)] = float(coef)
    return out


@dataclass
class ScriptArguments:
    """Data and reward fields of a recipe."""

    dataset_name: str = field(
        default="arithmetic",
        metadata={
            "help": "Hub dataset id, a local .jsonl/.parquet file, 'arithmetic' or 'multiplication' (procedural) or 'triviaqa-sample' "
            "(a small bundled TriviaQA-schema set)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_schema: str = field(
        default="arithmetic",
        metadata={"help": "Column mapping of the dataset: gsm8k, math, arithmetic, prompt_answer or triviaqa."},
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split used for training."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split used for evaluation."})
    num_train_examples: int | None = field(
        default=None, metadata={"help": "Procedural datasets: how many training problems to generate."}
    )
    num_test_examples: int | None = field(
        default=None, metadata={"help": "Procedural datasets: how many held-out problems to generate."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message for every prompt."})
    prompt_template: str = field(
        default="{problem}", metadata={"help": "User message template; `{problem}` is replaced by the problem."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["math_answer_correct", "format_reward"],
        metadata={"help": "Reward function names (see rewards/) or dotted paths `pkg.module.function`."},
    )

    def __post_init__(self):
        for name in ("num_train_examples", "num_test_examples"):
            count = getattr(self, name)
            if count is not None and count < 1:  # 0 rows would surface later as a dataset without columns
                raise ValueError(
                    f"{name}={count} must be >= 1, or unset for the dataset's default (recipe field `{name}`)."
                )
