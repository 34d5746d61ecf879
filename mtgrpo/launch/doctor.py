"""Check this machine against what a recipe needs, with a fix for each problem.

    mtgrpo doctor [--config RECIPE] [--min-free-gb GB]
    python -m mtgrpo.launch.doctor --config recipes/qwen2.5-1.5b-instruct/gsm8k-refine.yaml

Exit code 1 when something the recipe requires is missing; warnings (no GPU for a CPU recipe, no HF token,
vLLM server not started yet) keep it 0. Credentials are reported by where they were found, never by value.
"""

from __future__ import annotations

import argparse
import netrc
import os
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from ..recipe import read_recipe
from .processes import is_healthy

# Used when mtgrpo is run from a checkout without being pip-installed; mirrors pyproject.toml (a test checks).
FALLBACK_RANGES = {
    "trl": ">=1.15,<1.17",
    "transformers": ">=5.0,<6",
    "vllm": ">=0.22.0,<=0.31.0",
    "deepspeed": ">=0.17",
}
OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report: `status` is ok / warn / FAIL, `fix` says what to do when it is not ok."""

    name: str
    status: str
    detail: str
    fix: str = ""


def supported_ranges() -> dict[str, str]:
    """Version ranges of trl/transformers/vllm/deepspeed from mtgrpo's installed metadata (extras included)."""
    try:
        requirements = [Requirement(r) for r in metadata.requires("mtgrpo") or []]
    except metadata.PackageNotFoundError:
        return dict(FALLBACK_RANGES)
    ranges = {r.name.lower(): str(r.specifier) for r in requirements if r.name.lower() in FALLBACK_RANGES}
    return {**FALLBACK_RANGES, **ranges}


def needs_gpu(recipe: dict) -> bool:
    return bool(recipe.get("use_vllm")) or not (recipe.get("use_cpu") or recipe.get("bf16") is False)


def uses_vllm_server(recipe: dict) -> bool:
    return bool(recipe.get("use_vllm")) and recipe.get("vllm_mode", "colocate") == "server"


def check_python() -> Check:
    try:
        spec = metadata.metadata("mtgrpo")["Requires-Python"] or ">=3.10"
    except metadata.PackageNotFoundError:
        spec = ">=3.10"
    version = ".".join(map(str, sys.version_info[:3]))
    if SpecifierSet(spec).contains(version):
        return Check("python", OK, f"{version} ({sys.executable})")
    return Check("python", FAIL, f"{version}, mtgrpo needs {spec}", f"create the venv with a Python {spec}")


def check_torch_and_gpus(recipe: dict) -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("torch", FAIL, "not installed", 'pip install torch (CPU: pip install "mtgrpo[cpu]")')]
    cuda = torch.version.cuda
    checks = [Check("torch", OK, f"{torch.__version__}, CUDA build {cuda or 'none (CPU-only build)'}")]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    required = needs_gpu(recipe)
    if count == 0:
        fix = (
            "run on a GPU machine with a CUDA build of torch (torch.version.cuda must not be None), or use a CPU "
            "recipe (use_cpu: true, bf16: false, use_vllm: false)"
        )
        if required:
            return [*checks, Check("gpu", FAIL, "no CUDA GPU visible, but the recipe needs one", fix)]
        return [*checks, Check("gpu", WARN, "no CUDA GPU visible: CPU recipes only", fix)]
    memory = [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(count)]
    detail = f"{count} x {torch.cuda.get_device_name(0)}, {min(memory):.0f} GiB each"
    vllm_gpus = int(recipe.get("vllm_tensor_parallel_size", 1)) if uses_vllm_server(recipe) else 0
    if vllm_gpus and count <= vllm_gpus:
        fix = "use vllm_mode: colocate, or a node with more GPUs"
        return [
            *checks,
            Check("gpu", FAIL, f"{detail}; the vLLM server takes {vllm_gpus}, none left to train", fix),
        ]
    return [*checks, Check("gpu", OK, detail)]


def check_package(name: str, spec: str, required: bool, why: str) -> Check:
    # vllm and deepspeed are mtgrpo extras: installing the extra keeps the pins in one place (pyproject.toml).
    install = (
        f'pip install "mtgrpo[{name}]"' if name in ("vllm", "deepspeed") else f'pip install "{name}{spec}"'
    )
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        status = FAIL if required else WARN
        return Check(name, status, f"not installed ({why})", install)
    if SpecifierSet(spec).contains(version, prereleases=True):
        return Check(name, OK, f"{version} (supported {spec})")
    return Check(
        name, FAIL if required else WARN, f"{version} is outside the supported range {spec}", install
    )


def check_packages(recipe: dict) -> list[Check]:
    ranges = supported_ranges()
    return [
        check_package("trl", ranges["trl"], True, "the trainer"),
        check_package("transformers", ranges["transformers"], True, "models"),
        check_package("vllm", ranges["vllm"], bool(recipe.get("use_vllm")), "fast rollouts, use_vllm: true"),
        check_package("deepspeed", ranges["deepspeed"], False, "local_training/zero*.yaml"),
    ]


def check_java(recipe: dict) -> list[Check]:
    if recipe.get("search_backend") != "pyserini":
        return []
    from ..tasks.search import JAVA_FIX, java_problem

    problem, detail = java_problem()
    return [Check("java", FAIL, problem, JAVA_FIX)] if problem else [Check("java", OK, detail)]


# Bytes per parameter of one full-model checkpoint: DeepSpeed's fp32 master weights + Adam's two moments (12),
# the bf16 module states (2) and the gathered 16-bit model zero3_save_16bit_model writes next to them (2).
CHECKPOINT_BYTES_PER_PARAM = 16
FINAL_MODEL_BYTES_PER_PARAM = 2
_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.IGNORECASE)


def model_parameters(recipe: dict) -> float | None:
    """Parameter count of the recipe's model, without loading it: the size of a local model's weight files,
    else the size in a hub id ("Qwen2.5-7B" -> 7e9); None when neither says."""
    name = str(recipe.get("model_name_or_path") or "")
    local = Path(name).expanduser()
    if local.is_dir():
        weights = [*local.glob("*.safetensors"), *local.glob("*.bin")]
        if weights:  # stored in 16-bit: 2 bytes per parameter
            return sum(w.stat().st_size for w in weights) / 2
    sizes = _SIZE_IN_NAME.findall(name.rsplit("/", 1)[-1])
    if not sizes:
        return None
    number, unit = sizes[-1]
    return float(number) * (1e9 if unit.lower() == "b" else 1e6)


def required_disk_gb(recipe: dict) -> tuple[float, str]:
    """Disk the run's output_dir needs: kept checkpoints x per-checkpoint size + the final model, and why."""
    params = model_parameters(recipe)
    if params is None:
        return (50.0 if needs_gpu(recipe) else 2.0), "model size unknown"
    if recipe.get("use_peft"):
        return 10.0, "LoRA adapters only"
    kept = recipe.get("save_total_limit")
    if not kept:
        steps, every = recipe.get("max_steps"), recipe.get("save_steps")
        kept = -(-int(steps) // int(every)) if steps and every and float(every) >= 1 else 5
    per_checkpoint = params * CHECKPOINT_BYTES_PER_PARAM / 2**30
    need = kept * per_checkpoint + params * FINAL_MODEL_BYTES_PER_PARAM / 2**30
    why = f"{kept} kept checkpoints x {per_checkpoint:.0f} GiB ({params / 1e9:.2g}B params) + the final model"
    return max(need * 1.1, 2.0), why


def check_disk(recipe: dict, min_free_gb: float | None = None) -> Check:
    why = "--min-free-gb"
    if min_free_gb is None:
        min_free_gb, why = required_disk_gb(recipe)
    output_dir = Path(recipe.get("output_dir", "trainer_output")).absolute()
    existing = next(p for p in (output_dir, *output_dir.parents) if p.exists())
    free_gb = shutil.disk_usage(existing).free / 2**30
    if free_gb < min_free_gb:
        fix = f"free space on {existing}, point output_dir at a larger volume, or lower save_total_limit"
        detail = f"{free_gb:.0f} GiB free for {output_dir}, want >= {min_free_gb:.0f} GiB ({why})"
        return Check("disk", FAIL, detail, fix)
    return Check("disk", OK, f"{free_gb:.0f} GiB free for {output_dir}")


def check_vllm_server(recipe: dict, recipe_path: str | None) -> list[Check]:
    if not uses_vllm_server(recipe):
        return []
    host = recipe.get("vllm_server_host", "0.0.0.0")
    base = (
        recipe.get("vllm_server_base_url")
        or f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{recipe.get('vllm_server_port', 8000)}"
    )
    url = f"{base.rstrip('/')}/health"
    if is_healthy(url):
        return [Check("vllm server", OK, f"{url} answers")]
    fix = f"`mtgrpo launch {recipe_path}` starts it; to run mtgrpo.train by hand, start `vllm serve` first (see --dry-run)"
    return [Check("vllm server", WARN, f"{url} does not answer (not started yet?)", fix)]


def _netrc_with(host: str) -> Path | None:
    """The netrc file holding a login for `host`, if any (only its presence is read, never shown)."""
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        found = path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        found = False
    return path if found else None


def check_credentials(recipe: dict) -> list[Check]:
    report_to = recipe.get("report_to", [])
    report_to = [report_to] if isinstance(report_to, str) else list(report_to or [])
    wandb_needed = "wandb" in report_to and os.environ.get("WANDB_MODE") not in ("offline", "disabled")
    if os.environ.get("WANDB_API_KEY"):
        wandb = Check("wandb key", OK, "set in WANDB_API_KEY")
    elif netrc_path := _netrc_with("api.wandb.ai"):
        wandb = Check("wandb key", OK, f"found in {netrc_path}")
    elif wandb_needed:
        fix = "wandb login (or export WANDB_API_KEY; on SageMaker --wandb-secret-id), or WANDB_MODE=offline"
        wandb = Check("wandb key", FAIL, "not found, and the recipe reports to wandb", fix)
    else:
        wandb = Check("wandb key", OK, "not set; not needed (the recipe does not report to wandb)")
    hf_token_file = _hf_token_path()
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        hf = Check("hf token", OK, "set in the environment")
    elif hf_token_file.is_file():
        hf = Check("hf token", OK, f"found in {hf_token_file}")
    else:
        needed = bool(recipe.get("push_to_hub"))
        fix = "hf auth login (or export HF_TOKEN; on SageMaker --hf-secret-id); needed for gated models such as Llama"
        hf = Check("hf token", FAIL if needed else WARN, "not found", fix)
    return [wandb, hf]


def _hf_token_path() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_TOKEN_PATH)
    except ImportError:
        return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "token"


def run_checks(recipe_path: str | None = None, min_free_gb: float | None = None) -> list[Check]:
    """Every check for `recipe_path` (None: the machine alone, as for a CPU recipe)."""
    recipe = read_recipe(recipe_path) if recipe_path else {"use_cpu": True}
    return [
        check_python(),
        *check_torch_and_gpus(recipe),
        *check_packages(recipe),
        *check_java(recipe),
        check_disk(recipe, min_free_gb),
        *check_vllm_server(recipe, recipe_path),
        *check_credentials(recipe),
    ]


def format_report(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{check.status:5} {check.name:12} {check.detail}")
        if check.status != OK and check.fix:
            lines.append(f"{'':18} fix: {check.fix}")
    failures = sum(c.status == FAIL for c in checks)
    warnings = sum(c.status == WARN for c in checks)
    lines.append(f"{len(checks)} checks: {failures} failed, {warnings} warnings")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtgrpo doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="recipe to check the machine against")
    parser.add_argument(
        "--min-free-gb",
        type=float,
        help="free disk wanted for output_dir (default: estimated from the model size and save_total_limit)",
    )
    args = parser.parse_args(argv)
    try:
        checks = run_checks(args.config, args.min_free_gb)
    except (FileNotFoundError, ValueError) as error:
        print(f"mtgrpo doctor: {error}", file=sys.stderr)
        return 2
    print(format_report(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
