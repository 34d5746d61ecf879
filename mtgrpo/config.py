"""Recipe dataclasses: `MTGRPOConfig` (GRPOConfig + the multi-turn fields) and `ScriptArguments` (data, rewards).

A recipe YAML holds fields of these two dataclasses plus TRL's `ModelConfig`; `mtgrpo.train` parses all three
with TRL's `TrlParser` (YAML defaults, CLI overrides).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import GRPOConfig

logger = logging.getLogger(__name__)

EPISODES = ("refine", "tool")
FEEDBACK_SOURCES = ("self", "template")
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
            "(a tutor that points out problems without solving), 'template' = the fixed `feedback_template` text."
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

    def __post_init__(self):
        _one_of("episode", self.episode, EPISODES)
        _one_of("feedback_source", self.feedback_source, FEEDBACK_SOURCES)
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
        self._check_tool_fields()
        self._fall_back_from_bf16_without_gpu()
        super().__post_init__()

    def _check_tool_fields(self) -> None:
        _one_of("tool_protocol", self.tool_protocol, TOOL_PROTOCOLS)
        _one_of("advantage_mode", self.advantage_mode, ADVANTAGE_MODES)
        _one_of("search_backend", self.search_backend, SEARCH_BACKENDS)
        for name in ("max_tool_calls", "search_top_k", "search_max_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 (recipe field `{name}`).")
        if self.tool_timeout <= 0:
            raise ValueError(f"tool_timeout={self.tool_timeout} must be a positive number of seconds.")

    def _fall_back_from_bf16_without_gpu(self) -> None:
        import torch

        if torch.cuda.is_available() or self.bf16 is False:
            return
        if self.bf16 is True:
            logger.warning("bf16 was requested but this machine has no CUDA GPU; training in fp32 instead.")
        # GRPOConfig turns bf16=None into True, which transformers rejects on a CPU-only machine.
        self.bf16 = False


@dataclass
class ScriptArguments:
    """Data and reward fields of a recipe."""

    dataset_name: str = field(
        default="arithmetic",
        metadata={
            "help": "Hub dataset id, a local .jsonl/.parquet file, 'arithmetic' (procedural) or 'triviaqa-sample' "
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
