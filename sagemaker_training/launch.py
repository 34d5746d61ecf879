"""Submit a recipe as a SageMaker training job (SageMaker Python SDK v3 `ModelTrainer`).

    python sagemaker_training/launch.py --recipe recipes/qwen2.5-1.5b-instruct/gsm8k-refine.yaml --dry-run
    python sagemaker_training/launch.py --recipe RECIPE --role arn:aws:iam::ACCOUNT:role/ROLE \
        --s3-prefix s3://BUCKET/mtgrpo --instance-type ml.p4d.24xlarge --instance-count 2 \
        --wandb-secret-id mtgrpo/wandb --hf-secret-id mtgrpo/hf [--field value ...]

The job uploads this repository as the code channel and the recipe as the `recipe` channel, installs
`sagemaker_training/requirements.txt`, and runs sagemaker_training/entrypoint.py on every instance; that calls
the same node launcher as local_training/train.sh. Unknown `--field value` flags are recipe overrides.
Secrets travel as Secrets Manager ids only: the entry point reads the values inside the container, so they
never appear in the job description, hyperparameters, environment, tags or logs.
`--dry-run` prints the CreateTrainingJob request offline, without AWS credentials: the real SDK code path runs
against a botocore session whose calls are answered locally, and the request is captured after botocore has
validated it against the service model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = "/opt/ml/checkpoints"  # SageMaker syncs this directory with CheckpointConfig.s3_uri
# `exec`: the SDK's sm_train.sh runs this through `eval`; without exec that bash stays the container's first process
# and swallows the SIGTERM SageMaker sends 120 s before SIGKILL (stop, spot reclaim), so nothing could save.
ENTRY_POINT = "exec python sagemaker_training/entrypoint.py"
REQUIREMENTS = "sagemaker_training/requirements.txt"
PYSERINI_REQUIREMENTS = "sagemaker_training/requirements-pyserini.txt"  # search_backend: pyserini recipes
# The PyTorch training DLC the SDK resolves; the requirements then install mtgrpo with its vLLM/DeepSpeed pins.
IMAGE_FRAMEWORK, IMAGE_VERSION, IMAGE_PY = "pytorch", "2.10", "py313"
DRY_RUN_ACCOUNT = "000000000000"
# Always left out of the code channel, on top of the simple name patterns of .gitignore.
ALWAYS_IGNORED = [
    ".git",
    ".env",
    ".venv",
    "__pycache__",
    ".DS_Store",
    ".cache",
    ".ipynb_checkpoints",
    "wandb",
    ".deepspeed_env",  # accelerate's pdsh launcher writes the whole environment, tokens included, here
]


@dataclass
class JobOptions:
    """What the job runs on and where its files go. Defaults: one P5 instance, managed spot, 24 h of training."""

    recipe: str
    instance_type: str = "ml.p5.48xlarge"
    instance_count: int = 1
    spot: bool = True
    max_run_hours: float = 24.0
    max_wait_hours: float = 48.0  # spot: time waiting for capacity + running; SageMaker needs >= max_run
    volume_size_gb: int = 500
    role: str | None = None  # None: the SDK resolves the caller's SageMaker execution role
    region: str | None = None
    s3_prefix: str | None = None  # s3://bucket/prefix for code, output and checkpoints (default: SDK bucket)
    checkpoint_s3_uri: str | None = None  # reuse an earlier job's checkpoints to continue it
    image_uri: str | None = None
    wandb_secret_id: str | None = None
    hf_secret_id: str | None = None
    base_job_name: str | None = None
    # Multi-GB models: GZIP makes the upload (and every download) slow; NONE uploads the files of SM_MODEL_DIR
    # as they are, under <output path>/<job>/output/model/.
    compress_output: bool = False
    generation_node: bool = False  # the last instance serves vLLM on all its GPUs, the others train
    overrides: list[str] = field(default_factory=list)


def training_instance_types() -> list[str]:
    """Instance types CreateTrainingJob accepts, from botocore's bundled service model (offline)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return list(model.shape_for("TrainingInstanceType").enum)


def _looks_like_secret_value(secret_id: str) -> bool:
    # HF tokens start with hf_; classic W&B keys are 40 hex chars, new ones start with wandb_v1_.
    return secret_id.startswith(("hf_", "wandb_v1_")) or re.fullmatch(r"[0-9a-f]{40}", secret_id) is not None


def validate(options: JobOptions) -> None:
    """Fail before any AWS call, naming the fix."""
    recipe = Path(options.recipe)
    if not recipe.is_file():
        raise ValueError(
            f"Recipe {recipe} does not exist. Pass --recipe recipes/<model>/<task>-<episode>.yaml."
        )
    valid = training_instance_types()
    if options.instance_type not in valid:
        gpu = ", ".join(t for t in valid if t.startswith(("ml.p4", "ml.p5")))
        raise ValueError(
            f"{options.instance_type!r} is not a SageMaker training instance type. GPU choices: {gpu}."
        )
    if options.instance_count < 1:  # the SDK would pass 0 on to AWS and fail on a negative count with a traceback
        raise ValueError(f"--instance-count {options.instance_count}: a job needs >= 1 instance.")
    if options.generation_node and options.instance_count < 2:
        raise ValueError(
            "--generation-node puts vLLM on an instance of its own and needs --instance-count 2 or more."
        )
    if options.spot and options.max_wait_hours < options.max_run_hours:
        raise ValueError(
            f"--max-wait-hours {options.max_wait_hours} is below --max-run-hours {options.max_run_hours}; SageMaker "
            "requires max wait >= max run for managed spot. Raise --max-wait-hours or pass --no-spot."
        )
    for flag, secret_id in (
        ("--wandb-secret-id", options.wandb_secret_id),
        ("--hf-secret-id", options.hf_secret_id),
    ):
        if secret_id and _looks_like_secret_value(secret_id):
            raise ValueError(
                f"{flag} looks like the secret itself, not its Secrets Manager id. Store it with `aws secretsmanager "
                "create-secret --name mtgrpo/... --secret-string ...` and pass the name or ARN."
            )


def _ignore_patterns() -> list[str]:
    """Name patterns for shutil.ignore_patterns: ALWAYS_IGNORED plus .gitignore's plain entries (outputs/, runs/,
    *.egg-info, ...), so checkpoints and virtual environments never end up in the uploaded code."""
    patterns = list(ALWAYS_IGNORED)
    gitignore = REPO_ROOT / ".gitignore"
    for line in gitignore.read_text().splitlines() if gitignore.is_file() else []:
        line = line.strip().strip("/")
        if line and not line.startswith(("#", "!")) and "/" not in line and line not in patterns:
            patterns.append(line)
    return patterns


def _base_job_name(recipe: Path) -> str:
    # <= 48 characters: the SDK appends "-YYYYmmddHHMMSS" and truncates the whole name at 63.
    name = re.sub(r"[^a-zA-Z0-9]+", "-", f"mtgrpo-{recipe.parent.name}-{recipe.stem}").strip("-").lower()
    return name[:48].rstrip("-")


def _split_s3(uri: str) -> tuple[str, str | None]:
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    if not match:
        raise ValueError(f"--s3-prefix must look like s3://bucket/prefix, got {uri!r}.")
    return match.group(1), match.group(2).strip("/") or None


def requirements_for(options: JobOptions) -> str:
    """The requirements file the container installs: Pyserini only for the recipes that search with it."""
    import yaml

    recipe = yaml.safe_load(Path(options.recipe).read_text()) or {}
    backend = recipe.get("search_backend")
    for i, token in enumerate(options.overrides):
        if token == "--search_backend" and i + 1 < len(options.overrides):
            backend = options.overrides[i + 1]
        elif token.startswith("--search_backend="):
            backend = token.split("=", 1)[1]
    return PYSERINI_REQUIREMENTS if backend == "pyserini" else REQUIREMENTS


def entry_point_args(options: JobOptions) -> list[str]:
    """Arguments of sagemaker_training/entrypoint.py: ids of secrets only, never their values."""
    args = ["--recipe-file", Path(options.recipe).name, "--checkpoint-dir", CHECKPOINT_DIR]
    if options.generation_node:
        args += ["--generation-node"]
    if options.wandb_secret_id:
        args += ["--wandb-secret-id", options.wandb_secret_id]
    if options.hf_secret_id:
        args += ["--hf-secret-id", options.hf_secret_id]
    return [*args, *options.overrides]


def build_model_trainer(options: JobOptions, sagemaker_session):
    """The ModelTrainer for `options` (not submitted). `sagemaker_session` is a sagemaker.core Session."""
    from sagemaker.core import image_uris
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        OutputDataConfig,
        SourceCode,
        StoppingCondition,
    )
    from sagemaker.train.model_trainer import ModelTrainer

    validate(options)
    region = sagemaker_session.boto_region_name
    image = options.image_uri or image_uris.retrieve(
        framework=IMAGE_FRAMEWORK,
        region=region,
        version=IMAGE_VERSION,
        py_version=IMAGE_PY,
        instance_type=options.instance_type,
        image_scope="training",
    )
    return ModelTrainer(
        sagemaker_session=sagemaker_session,
        role=options.role,
        base_job_name=options.base_job_name or _base_job_name(Path(options.recipe)),
        training_image=image,
        source_code=SourceCode(
            source_dir=str(REPO_ROOT),
            requirements=requirements_for(options),
            command=ENTRY_POINT,
            args=entry_point_args(options),
            ignore_patterns=_ignore_patterns(),
        ),
        compute=Compute(
            instance_type=options.instance_type,
            instance_count=options.instance_count,
            volume_size_in_gb=options.volume_size_gb,
            enable_managed_spot_training=options.spot,
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=int(options.max_run_hours * 3600),
            max_wait_time_in_seconds=int(options.max_wait_hours * 3600) if options.spot else None,
        ),
        # s3_uri None: the SDK uses <bucket>/<prefix>/<base job name>/<job name>/checkpoints, stable across the
        # spot restarts of one job, which is what resuming needs.
        checkpoint_config=CheckpointConfig(s3_uri=options.checkpoint_s3_uri, local_path=CHECKPOINT_DIR),
        # s3_output_path None: the SDK's default <bucket>/<prefix>/<base job name>.
        output_data_config=OutputDataConfig(compression_type="GZIP" if options.compress_output else "NONE"),
        input_data_config=[InputData(channel_name="recipe", data_source=str(Path(options.recipe).resolve()))],
    )


def make_session(options: JobOptions, boto_session=None):
    """A sagemaker.core Session in the requested region, with --s3-prefix as its default bucket and prefix."""
    import boto3
    from sagemaker.core.helper.session_helper import Session

    boto_session = boto_session or boto3.Session(region_name=options.region)
    if not boto_session.region_name:
        raise ValueError("No AWS region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION.")
    bucket, prefix = _split_s3(options.s3_prefix) if options.s3_prefix else (None, None)
    return Session(boto_session=boto_session, default_bucket=bucket, default_bucket_prefix=prefix)


def launch(options: JobOptions, sagemaker_session=None, wait: bool = False) -> str:
    """Submit the job and return its name."""
    trainer = build_model_trainer(options, sagemaker_session or make_session(options))
    trainer.train(wait=wait, logs=wait)
    # The SDK's own docs read the submitted job from this attribute; there is no public accessor.
    return trainer._latest_training_job.training_job_name


class _RequestCaptured(Exception):
    pass


# Answers for the few calls the SDK makes before CreateTrainingJob (bucket checks, uploads, role probes).
_OFFLINE_ANSWERS = {
    "GetCallerIdentity": {
        "Account": DRY_RUN_ACCOUNT,
        "Arn": f"arn:aws:iam::{DRY_RUN_ACCOUNT}:user/dry-run",
        "UserId": "dry-run",
    },
    "ListBuckets": {"Buckets": []},
    "CreateMultipartUpload": {"UploadId": "dry-run"},
    "UploadPart": {"ETag": '"dry-run"'},
    "SimulatePrincipalPolicy": {"EvaluationResults": []},
}


def _offline_boto_session(region: str, captured: dict):
    """A boto3 session that sends nothing: every call is answered locally, CreateTrainingJob's parameters are
    copied into `captured` and the call is then aborted (after botocore validated them)."""
    import boto3
    from botocore.awsrequest import AWSResponse

    session = boto3.Session(region_name=region, aws_access_key_id="dry-run", aws_secret_access_key="dry-run")

    def capture(params, **_):
        captured.update(params)

    def answer(model, **_):
        if model.name == "CreateTrainingJob":
            raise _RequestCaptured
        return AWSResponse("https://dry-run", 200, {}, None), _OFFLINE_ANSWERS.get(model.name, {})

    session.events.register("before-parameter-build.sagemaker.CreateTrainingJob", capture)
    session.events.register("before-call", answer)
    return session


def dry_run_request(options: JobOptions) -> dict:
    """The CreateTrainingJob parameters `launch(options)` would send, built offline by the same SDK code."""
    captured: dict = {}
    region = (
        options.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    )
    session = make_session(options, _offline_boto_session(region, captured))
    if options.role is None:
        options = dataclasses.replace(options, role=f"arn:aws:iam::{DRY_RUN_ACCOUNT}:role/dry-run-role")
    # Role validation would call IAM; in a dry run there is no IAM to ask.
    previous = os.environ.get("SAGEMAKER_VALIDATE_ROLE")
    os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"
    try:
        build_model_trainer(options, session).train(wait=False, logs=False)
    except _RequestCaptured:
        return captured
    finally:
        if previous is None:
            del os.environ["SAGEMAKER_VALIDATE_ROLE"]
        else:
            os.environ["SAGEMAKER_VALIDATE_ROLE"] = previous
    raise RuntimeError("The SageMaker SDK returned without calling CreateTrainingJob; nothing to show.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python sagemaker_training/launch.py",
        description="Submit a recipe as a SageMaker training job. Unknown --field value flags are recipe overrides.",
        allow_abbrev=False,
    )
    parser.add_argument("--recipe", required=True)
    parser.add_argument(
        "--instance-type", default=JobOptions.instance_type, help="ml.p5.48xlarge or ml.p4d.24xlarge"
    )
    parser.add_argument("--instance-count", type=int, default=JobOptions.instance_count)
    parser.add_argument(
        "--no-spot", dest="spot", action="store_false", help="on-demand instead of managed spot"
    )
    parser.add_argument("--max-run-hours", type=float, default=JobOptions.max_run_hours)
    parser.add_argument("--max-wait-hours", type=float, default=JobOptions.max_wait_hours)
    parser.add_argument("--volume-size-gb", type=int, default=JobOptions.volume_size_gb)
    parser.add_argument("--role", help="SageMaker execution role ARN (default: resolved by the SDK)")
    parser.add_argument("--region")
    parser.add_argument("--s3-prefix", help="s3://bucket/prefix for code, output and checkpoints")
    parser.add_argument("--checkpoint-s3-uri", help="continue from the checkpoints of an earlier job")
    parser.add_argument("--image-uri", help="training image (default: the PyTorch DLC resolved by the SDK)")
    parser.add_argument("--wandb-secret-id", help="Secrets Manager id of the W&B API key")
    parser.add_argument("--hf-secret-id", help="Secrets Manager id of the Hugging Face token")
    parser.add_argument("--base-job-name")
    parser.add_argument(
        "--compress-output",
        action="store_true",
        help="upload the model as model.tar.gz (default: uncompressed files, faster for multi-GB models)",
    )
    parser.add_argument(
        "--generation-node",
        action="store_true",
        help="the last instance serves vLLM on all its GPUs (data parallel), the others train on all theirs",
    )
    parser.add_argument("--wait", action="store_true", help="stream the job's logs until it ends")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the CreateTrainingJob request, send nothing"
    )
    return parser


def check_before_the_sdk(parser: argparse.ArgumentParser, recipe: str, overrides: list[str]) -> None:
    """Our own checks, before the SageMaker SDK is imported: the whole recipe with its overrides (unknown keys and
    flags with the closest valid name, types), then that the SDK is installed at all."""
    if str(REPO_ROOT) not in sys.path:  # run from a checkout: mtgrpo is importable without installing it
        sys.path.append(str(REPO_ROOT))
    from mtgrpo.recipe import check_recipe

    flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    try:
        check_recipe(recipe, overrides, launcher_flags=flags)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    try:
        import botocore  # noqa: F401
        import sagemaker.train  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f"The SageMaker SDK is not installed ({error}). Install the extra: pip install 'mtgrpo[sagemaker]' (or "
            "pip install -e '.[sagemaker]' in a checkout)."
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    try:
        check_before_the_sdk(parser, args.recipe, overrides)
    except ValueError as error:
        print(f"launch.py: {error}", file=sys.stderr)
        return 2
    options = JobOptions(
        recipe=args.recipe,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        spot=args.spot,
        max_run_hours=args.max_run_hours,
        max_wait_hours=args.max_wait_hours,
        volume_size_gb=args.volume_size_gb,
        role=args.role,
        region=args.region,
        s3_prefix=args.s3_prefix,
        checkpoint_s3_uri=args.checkpoint_s3_uri,
        image_uri=args.image_uri,
        wandb_secret_id=args.wandb_secret_id,
        hf_secret_id=args.hf_secret_id,
        base_job_name=args.base_job_name,
        compress_output=args.compress_output,
        generation_node=args.generation_node,
        overrides=overrides,
    )
    try:
        if args.dry_run:
            request = dry_run_request(options)
            print(json.dumps(request, indent=2, sort_keys=True, default=str))
            command = " ".join([ENTRY_POINT, shlex.join(entry_point_args(options))])
            print(f"# container runs (from the code channel): {command}", file=sys.stderr)
            return 0
        name = launch(options, wait=args.wait)
    except ValueError as error:
        print(f"launch.py: {error}", file=sys.stderr)
        return 2
    print(f"Submitted SageMaker training job {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
