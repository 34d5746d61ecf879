"""SageMaker job submission and container entry point, offline.

Tests marked `aws` talk to AWS APIs through moto's in-process mock (`mock_aws`) and botocore's Stubber, so
they need no credentials or network and run in the default suite; they skip only without sagemaker/moto.
"""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "tests/fixtures/recipes/gpu-server.yaml"
ROLE = "arn:aws:iam::123456789012:role/mtgrpo-sagemaker"
REGION = "us-west-2"
# Generated per run so that no file in the uploaded code channel can contain them by accident.
WANDB_VALUE = f"wandb-secret-{uuid.uuid4().hex}"
HF_VALUE = f"hf-secret-{uuid.uuid4().hex}"
NO_AWS = {
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"sagemaker_training_{name}", REPO / "sagemaker_training" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


launch = _load("launch")
entrypoint = _load("entrypoint")


def _env(**changes):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "WANDB_API_KEY": WANDB_VALUE,
        "HF_TOKEN": HF_VALUE,
    }
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _options(**changes):
    fields = dict(
        recipe=str(RECIPE),
        role=ROLE,
        region=REGION,
        s3_prefix="s3://mtgrpo-test-bucket/jobs",
        instance_type="ml.p4d.24xlarge",
        instance_count=2,
        max_run_hours=10,
        max_wait_hours=20,
        wandb_secret_id="mtgrpo/wandb",
        hf_secret_id="mtgrpo/hf",
        overrides=["--learning_rate", "1.0e-06"],
    )
    return launch.JobOptions(**{**fields, **changes})


def _assert_job_request(request, instance_type="ml.p4d.24xlarge", count=2):
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]
    }
    assert channels["recipe"].endswith("/input/recipe/gpu-server.yaml")
    assert channels["code"].endswith("/input/code")
    assert request["ResourceConfig"]["InstanceType"] == instance_type
    assert request["ResourceConfig"]["InstanceCount"] == count
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 36000, "MaxWaitTimeInSeconds": 72000}
    assert request["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    # Multi-GB models upload as plain files; GZIP would take longer than some trainings.
    assert request["OutputDataConfig"]["CompressionType"] == "NONE"
    assert request["CheckpointConfig"]["S3Uri"].startswith("s3://mtgrpo-test-bucket/jobs/")
    assert request["CheckpointConfig"]["S3Uri"].endswith(f"/{request['TrainingJobName']}/checkpoints")
    assert "pytorch-training" in request["AlgorithmSpecification"]["TrainingImage"]
    text = json.dumps(request, default=str)
    assert WANDB_VALUE not in text and HF_VALUE not in text


# --- dry run, as a user runs it --------------------------------------------------------------------------------


def test_dry_run_cli_offline_without_credentials():
    pytest.importorskip("sagemaker")
    args = [sys.executable, "sagemaker_training/launch.py", "--recipe", str(RECIPE), "--dry-run", "--role", ROLE,
            "--region", REGION, "--s3-prefix", "s3://mtgrpo-test-bucket/jobs", "--instance-type", "ml.p4d.24xlarge",
            "--instance-count", "2", "--max-run-hours", "10", "--max-wait-hours", "20",
            "--wandb-secret-id", "mtgrpo/wandb", "--hf-secret-id", "mtgrpo/hf", "--learning_rate", "1.0e-06"]  # fmt: skip
    run = subprocess.run(args, cwd=REPO, env=_env(**NO_AWS), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    request = json.loads(run.stdout)
    _assert_job_request(request)
    assert WANDB_VALUE not in run.stderr and HF_VALUE not in run.stderr
    container = run.stderr.split("# container runs (from the code channel): ")[1].splitlines()[0]
    assert shlex.split(container)[:3] == ["exec", "python", "sagemaker_training/entrypoint.py"]
    assert shlex.split(container)[3:] == [
        "--recipe-file", "gpu-server.yaml", "--checkpoint-dir", "/opt/ml/checkpoints",
        "--wandb-secret-id", "mtgrpo/wandb", "--hf-secret-id", "mtgrpo/hf", "--learning_rate", "1.0e-06",
    ]  # fmt: skip


def test_dry_run_defaults_p5_spot():
    pytest.importorskip("sagemaker")
    run = subprocess.run(
        [sys.executable, "sagemaker_training/launch.py", "--recipe", str(RECIPE), "--dry-run"],
        cwd=REPO, env=_env(**NO_AWS, AWS_REGION=None, AWS_DEFAULT_REGION=None), capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    request = json.loads(run.stdout)
    assert request["ResourceConfig"] == {
        "InstanceCount": 1,
        "InstanceType": "ml.p5.48xlarge",
        "VolumeSizeInGB": 500,
    }
    assert request["EnableManagedSpotTraining"] is True
    assert (
        request["StoppingCondition"]["MaxWaitTimeInSeconds"]
        >= request["StoppingCondition"]["MaxRuntimeInSeconds"]
    )


@pytest.mark.aws
@pytest.mark.parametrize("instance_type", ["ml.p5.48xlarge", "ml.p4d.24xlarge"])
def test_request_valid_for_the_real_botocore_model(monkeypatch, instance_type):
    pytest.importorskip("sagemaker")
    import botocore.session
    from botocore.stub import Stubber
    from botocore.validate import validate_parameters

    for key, value in NO_AWS.items():
        monkeypatch.delenv(key, raising=False) if value is None else monkeypatch.setenv(key, value)
    request = launch.dry_run_request(_options(instance_type=instance_type))
    _assert_job_request(request, instance_type)
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(request, model.operation_model("CreateTrainingJob").input_shape)
    # Parameter validation does not check enums: check the instance type against the model's list.
    assert instance_type in model.shape_for("TrainingInstanceType").enum
    client = botocore.session.get_session().create_client(
        "sagemaker", region_name=REGION, aws_access_key_id="stub", aws_secret_access_key="stub"
    )
    with Stubber(client) as stubber:
        stubber.add_response(
            "create_training_job", {"TrainingJobArn": f"arn:aws:sagemaker:{REGION}:1:training-job/x"}, request
        )
        client.create_training_job(**request)
        stubber.assert_no_pending_responses()


def test_invalid_options_name_the_fix():
    pytest.importorskip("botocore")  # the instance types come from botocore's service model
    with pytest.raises(ValueError, match="ml.p4d.24xlarge"):
        launch.validate(_options(instance_type="ml.p5.96xlarge"))
    with pytest.raises(ValueError, match="--no-spot"):
        launch.validate(_options(max_run_hours=30, max_wait_hours=20))
    with pytest.raises(ValueError, match="looks like the secret itself"):
        launch.validate(_options(hf_secret_id="hf_abcdefghijklmnopqrstuvwxyz"))
    launch.validate(_options(spot=False, max_run_hours=30, max_wait_hours=20))


# --- a real ModelTrainer.train() against moto ----------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch):
    moto = pytest.importorskip("moto")
    pytest.importorskip("sagemaker")
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    # The launching machine has the secrets in its environment; none of them may reach the job.
    monkeypatch.setenv("WANDB_API_KEY", WANDB_VALUE)
    monkeypatch.setenv("HF_TOKEN", HF_VALUE)
    with moto.mock_aws():
        import boto3

        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket="mtgrpo-test-bucket", CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        secrets = boto3.client("secretsmanager", region_name=REGION)
        secrets.create_secret(Name="mtgrpo/wandb", SecretString=WANDB_VALUE)
        secrets.create_secret(Name="mtgrpo/hf", SecretString=json.dumps({"HF_TOKEN": HF_VALUE}))
        yield boto3


@pytest.mark.aws
def test_moto_job_has_channels_spot_checkpoints_and_no_secret(aws):
    sent = {}
    boto_session = aws.Session(region_name=REGION)
    boto_session.events.register(
        "before-parameter-build.sagemaker.CreateTrainingJob", lambda params, **_: sent.update(params)
    )
    options = _options()
    name = launch.launch(options, sagemaker_session=launch.make_session(options, boto_session))

    described = aws.client("sagemaker", region_name=REGION).describe_training_job(TrainingJobName=name)
    _assert_job_request(described)
    assert described["HyperParameters"] == {}

    # The dry run builds the very request train() sent (same SDK code path), up to the job name.
    dry = launch.dry_run_request(options)
    normalize = lambda request: json.loads(json.dumps(request).replace(request["TrainingJobName"], "JOB"))  # noqa: E731
    assert normalize(dry) == normalize(sent)

    # Nothing uploaded for the job holds a secret value; the container script carries only the secret ids.
    s3 = aws.client("s3", region_name=REGION)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mtgrpo-test-bucket")
        for o in page.get("Contents", [])
    ]
    bodies = {key: s3.get_object(Bucket="mtgrpo-test-bucket", Key=key)["Body"].read() for key in keys}
    for key, body in bodies.items():
        assert WANDB_VALUE.encode() not in body and HF_VALUE.encode() not in body, key
    (train_script,) = [
        body.decode() for key, body in bodies.items() if key.endswith("sm_drivers/sm_train.sh")
    ]
    assert "python sagemaker_training/entrypoint.py --recipe-file gpu-server.yaml" in train_script
    assert "--wandb-secret-id mtgrpo/wandb --hf-secret-id mtgrpo/hf" in train_script
    assert "sagemaker_training/requirements.txt" in train_script
    code = [key.split("/input/code/", 1)[1] for key in keys if "/input/code/" in key]
    assert {"mtgrpo/launch/cli.py", "sagemaker_training/entrypoint.py", "pyproject.toml"} <= set(code)
    assert not [
        k for k in code if k.startswith((".venv/", ".git/", "runs/", "outputs/")) or "__pycache__" in k
    ]


@pytest.mark.aws
def test_entrypoint_loads_secrets_into_the_environment(aws, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("HF_TOKEN")
    loaded = entrypoint.load_secrets({"WANDB_API_KEY": "mtgrpo/wandb", "HF_TOKEN": "mtgrpo/hf"})
    assert loaded == ["WANDB_API_KEY", "HF_TOKEN"]
    assert os.environ["WANDB_API_KEY"] == WANDB_VALUE and os.environ["HF_TOKEN"] == HF_VALUE


# --- the container entry point ------------------------------------------------------------------------------


def _sm_environment(tmp_path, hosts, current, recipe_text=None):
    recipe_dir = tmp_path / "input/data/recipe"
    recipe_dir.mkdir(parents=True)
    (recipe_dir / "gpu-server.yaml").write_text(recipe_text or RECIPE.read_text())
    return {
        "SM_HOSTS": json.dumps(hosts),
        "SM_CURRENT_HOST": current,
        "SM_CURRENT_HOST_RANK": str(sorted(hosts).index(current)),
        "SM_HOST_COUNT": str(len(hosts)),
        "SM_MASTER_ADDR": "algo-1",
        "SM_MASTER_PORT": "7777",
        "SM_NUM_GPUS": "8",
        "SM_CHANNEL_RECIPE": str(recipe_dir),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_OUTPUT_DATA_DIR": str(tmp_path / "output/data"),
        "TRAINING_JOB_NAME": "mtgrpo-qwen-gsm8k-refine-20260101000000",
    }


def _run_entrypoint(tmp_path, hosts, current, *extra, recipe_text=None):
    checkpoints = tmp_path / "checkpoints"
    for step, complete in ((5, True), (10, False)):  # checkpoint-10 was cut off by a spot interruption
        path = checkpoints / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"w")
        (path / "optimizer.pt").write_bytes(b"o")
        if complete:
            (path / "trainer_state.json").write_text("{}")
    args = [sys.executable, "sagemaker_training/entrypoint.py", "--recipe-file", "gpu-server.yaml",
            "--checkpoint-dir", str(checkpoints), "--wandb-secret-id", "mtgrpo/wandb", "--dry-run", *extra,
            "--learning_rate", "1.0e-06"]  # fmt: skip
    environment = _sm_environment(tmp_path, hosts, current, recipe_text)
    run = subprocess.run(
        args, cwd=REPO, env=_env(**environment, HF_HOME=None, PYSERINI_CACHE=None, MTGRPO_CACHE=None),
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert WANDB_VALUE not in run.stdout + run.stderr
    commands = [
        shlex.split(line) for line in run.stdout.splitlines() if line and not line.startswith(("#", "["))
    ]
    return run.stdout, commands, checkpoints


def test_entrypoint_dry_run_one_host(tmp_path):
    out, (server, train), checkpoints = _run_entrypoint(tmp_path, ["algo-1"], "algo-1")
    assert f"resume: {checkpoints / 'checkpoint-5'}" in out
    assert "would set WANDB_API_KEY from Secrets Manager secret mtgrpo/wandb" in out
    assert "serve" in server and server[0] == "CUDA_VISIBLE_DEVICES=0"
    assert train[train.index("--num_processes") + 1] == "7"
    assert train[train.index("--num_machines") + 1] == "1"
    assert train[-4:] == ["--learning_rate", "1.0e-06", "--output_dir", str(checkpoints)]
    assert str(tmp_path / "output/data/logs/vllm-server.log") in out
    assert f"copy the final model from {checkpoints} to {tmp_path / 'model'}" in out


def test_entrypoint_dry_run_two_hosts(tmp_path):
    out, commands, checkpoints = _run_entrypoint(tmp_path, ["algo-1", "algo-2"], "algo-2")
    (train,) = commands  # the vLLM server runs on algo-1 only
    value = lambda flag: train[train.index(flag) + 1]  # noqa: E731
    assert (value("--num_processes"), value("--num_machines"), value("--machine_rank")) == ("14", "2", "1")
    assert (value("--main_process_ip"), value("--main_process_port")) == ("algo-1", "7777")
    assert value("--vllm_server_host") == "127.0.0.1"  # only rank 0, on algo-1, talks to its own server
    assert value("--output_dir") == str(checkpoints)
    assert value("--save_on_each_node") == "true"  # each host's disk holds (and prunes) its own copy
    assert "main node's rendezvous algo-1:7777" in out
    assert "copy the final model" not in out  # only the first host exports the model


def test_cluster_from_resourceconfig(tmp_path):
    config = tmp_path / "resourceconfig.json"
    config.write_text(json.dumps({"current_host": "algo-3", "hosts": ["algo-2", "algo-1", "algo-3"]}))
    cluster = entrypoint.read_cluster({"SM_NUM_GPUS": "8"}, str(config))
    assert (cluster.hosts, cluster.host_rank, cluster.main_address, cluster.main_port) == (
        ["algo-1", "algo-2", "algo-3"], 2, "algo-1", 7777,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="SM_CURRENT_HOST"):
        entrypoint.read_cluster({}, str(tmp_path / "missing.json"))


def test_export_final_model_leaves_checkpoints_behind(tmp_path):
    output, model = tmp_path / "checkpoints", tmp_path / "model"
    (output / "checkpoint-5").mkdir(parents=True)
    (output / "logs").mkdir()
    (output / "model.safetensors").write_bytes(b"w")
    (output / "tokenizer").mkdir()
    (output / "tokenizer" / "tokenizer.json").write_text("{}")
    model.mkdir()
    entrypoint.export_final_model(output, model)
    assert sorted(p.name for p in model.iterdir()) == ["model.safetensors", "tokenizer"]


# --- production runs: caches, Pyserini, the generation node, uncompressed output, the notebook ----------------


def test_entrypoint_caches_on_the_big_volume_and_pyserini_prepared(tmp_path):
    recipe = RECIPE.read_text() + "search_backend: pyserini\n"
    out, (server, train), checkpoints = _run_entrypoint(
        tmp_path, ["algo-1"], "algo-1", "--cache-dir", "/opt/ml/input/mtgrpo-cache", recipe_text=recipe
    )
    assert "[entrypoint] HF_HOME=/opt/ml/input/mtgrpo-cache/huggingface" in out
    assert "PYSERINI_CACHE=/opt/ml/input/mtgrpo-cache/pyserini" in out
    assert str(checkpoints) not in out.split("PYSERINI_CACHE=")[1].splitlines()[0]
    assert "fetch the Pyserini index once on this host (file lock)" in out
    assert out.index("Pyserini index") < out.index("# 1. vLLM server")  # before anything starts
    assert "--save_on_each_node" not in train  # one host: nothing to copy


def test_pyserini_recipe_installs_pyserini():
    pytest.importorskip("yaml")
    pyserini = REPO / "recipes/qwen2.5-7b/triviaqa-search.yaml"
    assert launch.requirements_for(_options(recipe=str(pyserini))) == launch.PYSERINI_REQUIREMENTS
    assert launch.requirements_for(_options()) == launch.REQUIREMENTS
    assert (
        launch.requirements_for(_options(overrides=["--search_backend", "pyserini"]))
        == launch.PYSERINI_REQUIREMENTS
    )
    text = (REPO / launch.PYSERINI_REQUIREMENTS).read_text()
    assert "pyserini" in text.split("-e .[")[1]


@pytest.mark.parametrize("current", ["algo-1", "algo-2", "algo-3"])
def test_entrypoint_generation_node(tmp_path, current):
    out, commands, _ = _run_entrypoint(tmp_path, ["algo-1", "algo-2", "algo-3"], current, "--generation-node")
    if current == "algo-3":  # the last host serves vLLM on all 8 GPUs and trains nothing
        (server,) = commands
        assert server[0] == "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" and "--data-parallel-size" in server
        assert "resume:" not in out and "copy the final model" not in out
        return
    (train,) = commands
    value = lambda flag: train[train.index(flag) + 1]  # noqa: E731
    assert (value("--num_processes"), value("--num_machines")) == ("16", "2")
    assert value("--vllm_server_host") == "algo-3"
    assert ("copy the final model" in out) == (current == "algo-1")


def test_generation_node_needs_two_instances():
    pytest.importorskip("botocore")
    with pytest.raises(ValueError, match="--instance-count 2"):
        launch.validate(_options(instance_count=1, generation_node=True))


def test_deepspeed_env_file_is_never_uploaded():
    assert ".deepspeed_env" in launch._ignore_patterns()


def test_notebook_stays_online_for_a_real_account(tmp_path):
    """The setup cells of the SageMaker notebook, run as Jupyter runs them, without the moto switch: the
    evaluation at the end reads hub datasets, so the notebook must not switch the hub off."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("sagemaker")
    nb = nbformat.read(REPO / "notebooks/launch_sagemaker_job.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"][:2]  # parameters, setup
    probe = "\n".join([*code, "print('HF_HUB_OFFLINE=' + os.environ.get('HF_HUB_OFFLINE', 'unset'))"])
    for mock, expected in (("0", "unset"), ("1", "1")):
        run = subprocess.run(
            [sys.executable, "-c", probe], cwd=REPO / "notebooks", capture_output=True, text=True,
            env=_env(HF_HUB_OFFLINE=None, MTGRPO_NOTEBOOK_MOCK_AWS=mock),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"HF_HUB_OFFLINE={expected}" in run.stdout
