"""SageMaker container entry point: SM_* variables -> the node launcher (the same one local_training/train.sh uses).

    python sagemaker_training/entrypoint.py --recipe-file gsm8k-refine.yaml --checkpoint-dir /opt/ml/checkpoints \
        [--wandb-secret-id ID] [--hf-secret-id ID] [--generation-node] [--dry-run] [--field value ...]

sagemaker_training/launch.py puts this command in the job. On every instance it reads the host list and this
host's rank, loads the W&B / HF secrets from Secrets Manager into the process environment (values never
printed), trains with `--output_dir <checkpoint dir>` so SageMaker syncs checkpoints to S3 (mtgrpo.train resumes
from the newest complete one after a spot interruption), and on the first host copies the final model to
SM_MODEL_DIR, which SageMaker uploads. Caches (HF, Pyserini, mtgrpo) go to --cache-dir on the instance's large
volume, never under the checkpoint directory, which SageMaker copies to S3. A recipe with `search_backend:
pyserini` gets Java 21 (apt-get, when the image lacks it) and its index downloaded once per instance, under a
file lock, before training starts. With several instances every node saves its own copy of each checkpoint
(`--save_on_each_node true`), so each also prunes its own disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# The code channel is this repository; make `mtgrpo` importable even where it was not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtgrpo.launch.checkpoints import latest_checkpoint  # noqa: E402
from mtgrpo.launch.plan import _setting, detect_gpus, format_plan, plan_launch  # noqa: E402
from mtgrpo.launch.processes import execute  # noqa: E402
from mtgrpo.recipe import read_recipe  # noqa: E402

RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"
# On the instance's ML volume (EBS or NVMe, the whole disk) and outside /opt/ml/checkpoints, which is synced to S3.
DEFAULT_CACHE_DIR = "/opt/ml/input/mtgrpo-cache"
CACHE_ENV = {"HF_HOME": "huggingface", "PYSERINI_CACHE": "pyserini", "MTGRPO_CACHE": "mtgrpo"}
JAVA_PACKAGE = "openjdk-21-jdk-headless"
SECRET_ENV = {"wandb_secret_id": "WANDB_API_KEY", "hf_secret_id": "HF_TOKEN"}


@dataclass(frozen=True)
class Cluster:
    """This host's place in the job, from SageMaker's environment."""

    hosts: list[str]
    current_host: str
    host_rank: int
    main_address: str
    main_port: int
    num_gpus: int
    recipe_dir: str
    model_dir: str
    log_dir: str


def read_cluster(environ=os.environ, resource_config: str = RESOURCE_CONFIG) -> Cluster:
    """Multi-node coordinates from SM_* variables, falling back to resourceconfig.json for the host list."""
    config = {}
    if Path(resource_config).is_file():
        config = json.loads(Path(resource_config).read_text())
    hosts = sorted(json.loads(environ["SM_HOSTS"]) if "SM_HOSTS" in environ else config.get("hosts", []))
    current = environ.get("SM_CURRENT_HOST") or config.get("current_host")
    if not hosts or current not in hosts:
        raise RuntimeError(
            f"Cannot tell this host's rank: SM_CURRENT_HOST={current!r}, hosts={hosts}. Run inside a SageMaker "
            f"training job, or set SM_HOSTS and SM_CURRENT_HOST (or provide {resource_config})."
        )
    # SageMaker ranks hosts in sorted order (algo-1 is rank 0); the SDK's SM_CURRENT_HOST_RANK says the same.
    rank = int(environ.get("SM_CURRENT_HOST_RANK", hosts.index(current)))
    return Cluster(
        hosts=hosts,
        current_host=current,
        host_rank=rank,
        main_address=environ.get("SM_MASTER_ADDR", hosts[0]),
        main_port=int(environ.get("SM_MASTER_PORT", 7777)),
        num_gpus=int(environ["SM_NUM_GPUS"]) if "SM_NUM_GPUS" in environ else detect_gpus(),
        recipe_dir=environ.get("SM_CHANNEL_RECIPE", "/opt/ml/input/data/recipe"),
        model_dir=environ.get("SM_MODEL_DIR", "/opt/ml/model"),
        log_dir=str(Path(environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")) / "logs"),
    )


def load_secrets(secret_ids: dict[str, str]) -> list[str]:
    """Put each Secrets Manager secret into os.environ under its variable name; return the names set.

    A secret may be a plain string or a JSON object holding the variable name as a key (the console's
    key/value form)."""
    import boto3

    # Training containers set AWS_REGION, which boto3 itself does not read (it reads AWS_DEFAULT_REGION).
    client = boto3.client("secretsmanager", region_name=os.environ.get("AWS_REGION"))
    loaded = []
    for env_name, secret_id in secret_ids.items():
        value = client.get_secret_value(SecretId=secret_id)["SecretString"]
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            if env_name not in parsed:
                raise RuntimeError(f"Secret {secret_id} is a JSON object without the key {env_name}; add it.")
            value = parsed[env_name]
        os.environ[env_name] = value
        loaded.append(env_name)
    return loaded


def export_final_model(output_dir: str | Path, model_dir: str | Path) -> None:
    """Copy what mtgrpo.train saved at the end (weights, tokenizer, config) into SM_MODEL_DIR, without the
    intermediate checkpoints and logs that only the checkpoint sync needs."""
    for item in Path(output_dir).iterdir():
        if item.name.startswith("checkpoint-") or item.name == "logs":
            continue
        target = Path(model_dir) / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)


def set_caches(cache_dir: str | Path, environ=os.environ) -> dict[str, str]:
    """Point the HF, Pyserini and mtgrpo caches at `cache_dir` unless the job's environment already chose."""
    chosen = {name: str(Path(cache_dir) / sub) for name, sub in CACHE_ENV.items() if name not in environ}
    environ.update(chosen)
    return chosen


def ensure_java(dry_run: bool = False) -> str | None:
    """Install Java 21 for Pyserini when the image lacks it; return what was (or would be) run, else None."""
    from mtgrpo.launch.doctor import FAIL, check_java

    if all(check.status != FAIL for check in check_java({"search_backend": "pyserini"})):
        return None
    command = f"apt-get update -q && apt-get install -y -q --no-install-recommends {JAVA_PACKAGE}"
    if not dry_run:
        subprocess.run(["bash", "-c", command], check=True)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagemaker_training/entrypoint.py", allow_abbrev=False)
    parser.add_argument("--recipe-file", required=True, help="file name inside the `recipe` channel")
    parser.add_argument("--checkpoint-dir", required=True, help="CheckpointConfig.local_path, synced with S3")
    parser.add_argument("--wandb-secret-id")
    parser.add_argument("--hf-secret-id")
    parser.add_argument(
        "--generation-node", action="store_true", help="the last host serves vLLM, the others train"
    )
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="HF / Pyserini / mtgrpo caches")
    parser.add_argument("--dry-run", action="store_true", help="print what would run; no secrets fetched")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    cluster = read_cluster()
    recipe = Path(cluster.recipe_dir) / args.recipe_file
    secret_ids = {SECRET_ENV[key]: value for key, value in vars(args).items() if key in SECRET_ENV and value}
    # A spot restart is the same job: keep logging into the same W&B run.
    if "TRAINING_JOB_NAME" in os.environ:
        os.environ.setdefault("WANDB_RUN_ID", os.environ["TRAINING_JOB_NAME"])
        os.environ.setdefault("WANDB_RESUME", "allow")
    for name, path in set_caches(args.cache_dir).items():
        print(f"[entrypoint] {name}={path}", flush=True)
    # Each host's /opt/ml/checkpoints is its own disk: every node writes its copy (and prunes it).
    per_node = ["--save_on_each_node", "true"] if len(cluster.hosts) > 1 else []
    try:
        pyserini = _setting(read_recipe(recipe), overrides, "search_backend") == "pyserini"
        plan = plan_launch(
            recipe,
            num_gpus=cluster.num_gpus,
            num_nodes=len(cluster.hosts),
            node_rank=cluster.host_rank,
            main_address=cluster.main_address,
            main_port=cluster.main_port,
            # Last, so it wins over a recipe override: checkpoints must land in the directory SageMaker syncs.
            train_overrides=[*per_node, *overrides, "--output_dir", args.checkpoint_dir],
            log_dir=cluster.log_dir,
            generation_node=cluster.hosts[-1] if args.generation_node else None,
        )
        resume = latest_checkpoint(args.checkpoint_dir, world_size=plan.world_size or None)
    except (ValueError, FileNotFoundError) as error:  # CheckpointError included
        print(f"entrypoint: {error}", file=sys.stderr)
        return 2
    print(f"[entrypoint] {json.dumps(asdict(cluster))}", flush=True)
    if plan.train is not None:
        print(f"[entrypoint] resume: {resume or 'none, starting from step 0'}", flush=True)
    java = ensure_java(dry_run=True) if pyserini and plan.train is not None else None
    if args.dry_run:
        for env_name, secret_id in secret_ids.items():
            print(f"[entrypoint] would set {env_name} from Secrets Manager secret {secret_id}")
        if java:
            print(f"# install Java 21 for Pyserini: {java}")
        if pyserini and plan.train is not None:
            print(
                f"# fetch the Pyserini index once on this host (file lock) into {os.environ['PYSERINI_CACHE']}"
            )
        print(format_plan(plan))
        if cluster.host_rank == 0 and plan.train is not None:
            print(f"# then: copy the final model from {args.checkpoint_dir} to {cluster.model_dir}")
        return 0
    for env_name in load_secrets(secret_ids):
        print(f"[entrypoint] {env_name} set from Secrets Manager", flush=True)
    if pyserini and plan.train is not None:
        from mtgrpo.tasks.search import fetch_pyserini_index

        ensure_java()
        print(f"[entrypoint] Pyserini index ready at {fetch_pyserini_index()}", flush=True)
    returncode = execute(plan)
    if returncode == 0 and cluster.host_rank == 0 and plan.train is not None:
        export_final_model(args.checkpoint_dir, cluster.model_dir)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
