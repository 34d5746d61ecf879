"""Task datasets: a hub id, a local file in a known schema, or procedural arithmetic, all in one row format.

    load_task_dataset("openai/gsm8k", "gsm8k", dataset_config="main", limit=200)
    load_task_dataset("data/my_problems.jsonl", "prompt_answer")
    load_task_dataset("arithmetic", "arithmetic", split="test")

Every dataset comes back with the columns the episodes and rewards read: ``prompt`` (chat messages),
``answer`` (the gold answer as a string) and ``problem`` (the raw problem text); the triviaqa schema adds
``aliases`` (every accepted answer).
"""

import hashlib
import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..registry import _load_rewards_package
from .code import CODE_SCHEMAS, load_code_dataset
from .files import read_jsonl

logger = logging.getLogger(__name__)

ARITHMETIC = "arithmetic"
# Two-digit products ("What is 47 * 83?"): the bundled model mostly fails them alone, a calculator solves them.
MULTIPLICATION = "multiplication"
_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_ARITHMETIC_SIZES = {"train": 2000, "test": 100}
# Operands 0..20: the bundled 135M model solves about half of single-digit sums, so this range keeps
# GRPO groups mixed (some right, some wrong) while leaving room to improve.
_ARITHMETIC_MAX_OPERAND = 20
_ARITHMETIC_TEST_SHARE = 4  # one problem in 4 (by hash of its text) is held out for "test"


def _plain_gold(value) -> str | None:
    return str(value).strip() or None


def _gsm8k_gold(solution: str) -> str | None:
    # GSM8K answers are worked solutions that end in "#### 1,234".
    _, marker, gold = solution.rpartition("####")
    return (gold.strip().replace(",", "") or None) if marker else None


def _boxed_gold(solution: str) -> str | None:
    # MATH solutions put the final answer in their last \boxed{}.
    return _load_rewards_package().last_boxed(solution)


def _triviaqa_gold(answer: dict) -> str | None:
    return _plain_gold(answer.get("value", "")) if isinstance(answer, dict) else None


def _triviaqa_aliases(row: dict) -> dict:
    # Rewards accept any of these strings; the normalized aliases are TriviaQA's own gold for exact match.
    answer = row["answer"]
    return {"aliases": list(answer.get("normalized_aliases") or answer.get("aliases") or [answer["value"]])}


@dataclass(frozen=True)
class _Schema:
    """Where one dataset family keeps its problem and its gold answer."""

    problem_columns: tuple[str, ...]  # the first of these present holds the problem text
    gold_columns: dict[str, Callable[[str], str | None]]  # first present column -> its gold (None: no gold)
    extra_columns: Callable[[dict], dict] | None = None  # more columns from a raw row (e.g. aliases)


SCHEMAS: dict[str, _Schema] = {
    "gsm8k": _Schema(("question",), {"answer": _gsm8k_gold}),
    # MATH-500 has a clean `answer` column; MATH / MATH-lighteval only the full `solution`.
    "math": _Schema(("problem",), {"answer": _plain_gold, "solution": _boxed_gold}),
    "prompt_answer": _Schema(("problem", "question"), {"answer": _plain_gold}),
    ARITHMETIC: _Schema(("problem",), {"answer": _plain_gold}),
    # mandarjoshi/trivia_qa (rc.nocontext): `answer` is a dict; `answer` becomes its value, `aliases` the gold list.
    "triviaqa": _Schema(("question",), {"answer": _triviaqa_gold}, _triviaqa_aliases),
}
# Small datasets shipped with mtgrpo (written for it), addressed by name like the procedural "arithmetic".
BUNDLED_DATASETS = {"triviaqa-sample": Path(__file__).resolve().parent / "assets" / "trivia_qa_sample.jsonl"}


def load_task_dataset(
    dataset_name: str,
    schema: str,
    split: str = "train",
    *,
    dataset_config: str | None = None,
    system_prompt: str | None = None,
    prompt_template: str = "{problem}",
    limit: int | None = None,
    seed: int = 0,
    num_examples: int | None = None,
) -> datasets.Dataset:
    """Load ``dataset_name`` and map it through ``schema`` to the ``prompt`` / ``answer`` / ``problem`` columns.

    Args:
        dataset_name: a Hugging Face hub id, a local ``.jsonl``/``.json``/``.parquet`` file (one split, so
            ``split`` is ignored), ``"arithmetic"`` for the procedural CPU demo task, or a name in
            ``BUNDLED_DATASETS`` (``"triviaqa-sample"``).
        schema: column layout of the data: one of ``SCHEMAS``.
        split: hub split; for arithmetic ``"train"`` or ``"test"``, which never share a problem.
        dataset_config: hub config name (``"main"`` for openai/gsm8k).
        system_prompt: if given, a system message placed before the user message.
        prompt_template: user message, formatted with ``problem=`` (write literal braces doubled: ``\\boxed{{}}``).
        limit: keep only the first ``limit`` rows.
        seed, num_examples: arithmetic: sampling seed and size (default 2000 train, 100 test); other datasets:
            num_examples caps the size like ``limit``.
    """
    if schema not in SCHEMAS and schema not in CODE_SCHEMAS:
        raise ValueError(
            f"Unknown dataset_schema {schema!r}. Valid schemas: {', '.join([*SCHEMAS, *CODE_SCHEMAS])}."
        )
    _check_template(prompt_template)
    if schema in CODE_SCHEMAS:  # tests instead of a gold answer: see mtgrpo/code_data.py
        caps = [x for x in (limit, num_examples) if x is not None]
        return load_code_dataset(
            dataset_name,
            schema,
            split,
            dataset_config=dataset_config,
            system_prompt=system_prompt,
            prompt_template=prompt_template,
            limit=min(caps) if caps else None,
            load_raw=_load_raw,
        )
    if dataset_name in (ARITHMETIC, MULTIPLICATION):
        raw = _arithmetic(split, seed, num_examples, products=dataset_name == MULTIPLICATION)
    else:
        raw = _load_raw(dataset_name, split, dataset_config)
        # For a fixed dataset the size fields of a recipe only cap it, so an override of dataset_name keeps working.
        limit = min(x for x in (limit, num_examples) if x is not None) if (limit or num_examples) else None

    problem_column = _first_present(SCHEMAS[schema].problem_columns, raw, dataset_name, schema)
    gold_column = _first_present(tuple(SCHEMAS[schema].gold_columns), raw, dataset_name, schema)
    to_gold = SCHEMAS[schema].gold_columns[gold_column]

    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    # Built in Python rather than with Dataset.map, which would keep an int `answer` column's type.
    rows, dropped = [], 0
    for row in raw:
        if limit is not None and len(rows) >= limit:
            break
        gold = to_gold(row[gold_column])
        if gold is None:
            dropped += 1
            continue
        problem = str(row[problem_column])
        user = {"role": "user", "content": prompt_template.format(problem=problem)}
        extra = SCHEMAS[schema].extra_columns(row) if SCHEMAS[schema].extra_columns else {}
        rows.append({"prompt": [*system, user], "answer": gold, "problem": problem, **extra})
    if dropped:
        logger.warning(
            "%s: skipped %d rows with no gold answer in column %r.", dataset_name, dropped, gold_column
        )
    if not rows and not dropped:
        raise ValueError(f"Dataset {dataset_name!r} (split {split!r}) has no rows. Pass a dataset with problems in it.")
    if dropped and not rows:
        raise ValueError(
            f"Dataset {dataset_name!r}: no row has a gold answer that dataset_schema {schema!r} can read from "
            f"column {gold_column!r}. Choose the dataset_schema that matches the data ({', '.join(SCHEMAS)})."
        )
    return datasets.Dataset.from_list(rows)


def _check_template(prompt_template: str) -> None:
    # Fail before loading anything: str.format reads every {...}, so "\boxed{}" in a template breaks it.
    try:
        prompt_template.format(problem="")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"prompt_template {prompt_template!r} cannot be formatted ({err!r}). It may only use the field "
            "{problem}; write literal braces doubled, e.g. \\boxed{{}}."
        ) from err
    if "{problem}" not in prompt_template:
        raise ValueError(
            f"prompt_template {prompt_template!r} must contain {{problem}}, where the problem goes."
        )


def _first_present(columns: tuple[str, ...], raw: datasets.Dataset, dataset_name: str, schema: str) -> str:
    for column in columns:
        if column in raw.column_names:
            return column
    raise ValueError(
        f"Dataset {dataset_name!r} has no {' or '.join(map(repr, columns))} column, which dataset_schema "
        f"{schema!r} needs; its columns are {raw.column_names}. Choose the dataset_schema that matches the "
        f"data ({', '.join(SCHEMAS)}) or rename the column."
    )


def _load_raw(dataset_name: str, split: str, dataset_config: str | None) -> datasets.Dataset:
    path = BUNDLED_DATASETS.get(dataset_name) or Path(dataset_name).expanduser()
    if path.is_dir():  # e.g. a downloaded hub repository
        return datasets.load_dataset(str(path), dataset_config, split=split)
    if path.is_file():
        if path.suffix not in _LOCAL_FORMATS:
            raise ValueError(f"Unsupported dataset file {path}: use one of {', '.join(_LOCAL_FORMATS)}.")
        if path.suffix == ".jsonl":
            read_jsonl(path)  # an empty file or a malformed row: an error naming the file and the line
        elif path.stat().st_size == 0:
            raise ValueError(f"Dataset file {path} is empty: it has no rows.")
        try:
            return datasets.load_dataset(_LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        except datasets.exceptions.DatasetGenerationError as err:
            raise ValueError(
                f"Dataset file {path} cannot be read as {path.suffix} ({err.__cause__ or err}). Fix the file or "
                "convert it to JSON Lines (one JSON object per line)."
            ) from None
    if path.suffix in _LOCAL_FORMATS or dataset_name.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"Dataset file {path} does not exist (relative paths start from {Path.cwd()}). "
            f"Pass an existing {'/'.join(_LOCAL_FORMATS)} file or a Hugging Face hub id."
        )
    try:
        return datasets.load_dataset(dataset_name, dataset_config, split=split)
    # Offline or unknown id: ConnectionError, or DatasetNotFoundError (a FileNotFoundError).
    except OSError as err:
        raise FileNotFoundError(
            f"Could not load dataset {dataset_name!r} (config {dataset_config!r}, split {split!r}) from the "
            f"Hugging Face hub or its cache: {err}. Download it first (with internet access, or "
            f"`huggingface-cli download --repo-type dataset {dataset_name}`), or pass a local "
            ".jsonl/.json/.parquet file with the same columns."
        ) from err


def _is_test_problem(problem: str) -> bool:
    # A stable hash (Python's hash() is salted per process) makes the split a property of the problem text,
    # so no seed or size can move a test problem into train.
    return int(hashlib.sha256(problem.encode()).hexdigest(), 16) % _ARITHMETIC_TEST_SHARE == 0


def _arithmetic(split: str, seed: int, num_examples: int | None, products: bool = False) -> datasets.Dataset:
    """Two-term sums and non-negative differences such as "What is 7 + 5?", or (`products`) two-digit products
    such as "What is 47 * 83?"."""
    name = MULTIPLICATION if products else ARITHMETIC
    if split not in _ARITHMETIC_SIZES:
        raise ValueError(f"The {name} dataset has splits {', '.join(_ARITHMETIC_SIZES)}, not {split!r}.")
    if products:
        factors = range(11, 100)
        problems = [(f"What is {a} * {b}?", a * b) for a in factors for b in factors if a % 10 and b % 10]
    else:
        operands = range(_ARITHMETIC_MAX_OPERAND + 1)
        problems = [(f"What is {a} + {b}?", a + b) for a in operands for b in operands]
        problems += [(f"What is {a} - {b}?", a - b) for a in operands for b in operands if a >= b]
    pool = [p for p in problems if _is_test_problem(p[0]) == (split == "test")]
    random.Random(seed).shuffle(pool)
    size = _ARITHMETIC_SIZES[split] if num_examples is None else num_examples
    # Cycling the shuffled pool keeps a small split free of repeats and repeats a large one evenly.
    rows = [{"problem": q, "answer": str(a)} for q, a in itertools.islice(itertools.cycle(pool), size)]
    return datasets.Dataset.from_list(rows)


def load_recipe_split(script_args, which: str, seed: int, limit: int | None = None) -> datasets.Dataset:
    """The recipe's training (`which="train"`) or evaluation (`which="test"`) split, as training, the demo and
    `mtgrpo eval` all load it."""
    train = which == "train"
    return load_task_dataset(
        script_args.dataset_name,
        script_args.dataset_schema,
        script_args.dataset_train_split if train else script_args.dataset_test_split,
        dataset_config=script_args.dataset_config,
        system_prompt=script_args.system_prompt,
        prompt_template=script_args.prompt_template,
        limit=limit,
        num_examples=script_args.num_train_examples if train else script_args.num_test_examples,
        seed=seed,
    )
