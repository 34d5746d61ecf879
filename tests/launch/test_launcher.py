"""Node launcher: GPU split and commands (plan + the real CLI's --dry-run), and the process lifecycle against
real local processes (a fake vLLM server that answers /health late, one that dies, Ctrl-C / SIGTERM)."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import psutil
import pytest

from mtgrpo.launch.plan import Command, LaunchPlan, plan_launch
from mtgrpo.launch.processes import ServerError, _start, execute, stop_process_group, wait_for_server

REPO = Path(__file__).resolve().parents[2]
GPU_RECIPE = "tests/fixtures/recipes/gpu-server.yaml"
CPU_RECIPE = "tests/fixtures/recipes/cpu.yaml"
SUBPROCESS_ENV = {
    **{k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"},
    "PYTHONPATH": str(REPO),
    "HF_HUB_OFFLINE": "1",
    "PYTHON": sys.executable,  # train.sh runs ${PYTHON:-python}: the interpreter under test, with mtgrpo's dependencies
}


def _after(argv, flag):
    return argv[argv.index(flag) + 1]


# --- plans -------------------------------------------------------------------------------------------------


def test_one_node_eight_gpus(monkeypatch):
    monkeypatch.chdir(REPO)
    plan = plan_launch(GPU_RECIPE, num_gpus=8, train_overrides=["--learning_rate", "1.0e-06"])
    server = plan.server.argv
    assert plan.server.env == {"CUDA_VISIBLE_DEVICES": "0", "VLLM_SERVER_DEV_MODE": "1"}
    assert server[server.index("serve") + 1] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert _after(server, "--host") == "127.0.0.1"  # the unauthenticated weight-update routes stay local
    assert "--revision" not in server
    assert _after(server, "--port") == "8000"
    assert _after(server, "--tensor-parallel-size") == "1"
    assert _after(server, "--max-model-len") == "4096"
    assert _after(server, "--weight-transfer-config") == '{"backend": "nccl"}'
    assert _after(server, "--logprobs-mode") == "processed_logprobs"
    assert _after(server, "--max-logprobs") == "-1"
    assert plan.health_url == "http://127.0.0.1:8000/health"
    assert plan.server_log == "runs/test-gpu-server/logs/vllm-server.log"

    train = plan.train.argv
    assert plan.train.env == {
        "CUDA_VISIBLE_DEVICES": "1,2,3,4,5,6,7",
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "100",
    }
    assert train[1:3] == ["-m", "accelerate.commands.launch"]
    assert _after(train, "--config_file").endswith("local_training/zero3.yaml")
    assert _after(train, "--num_processes") == "7"
    assert _after(train, "--num_machines") == "1"
    assert "--main_process_ip" not in train
    module = train[train.index("-m", 3) :]
    assert module == [
        "-m", "mtgrpo.train", "--config", GPU_RECIPE,
        "--vllm_server_host", "127.0.0.1", "--vllm_server_port", "8000",
        "--learning_rate", "1.0e-06",
    ]  # fmt: skip


@pytest.mark.parametrize("rank", [0, 1])
def test_two_nodes_eight_gpus(monkeypatch, rank):
    monkeypatch.chdir(REPO)
    plan = plan_launch(
        GPU_RECIPE, num_gpus=8, num_nodes=2, node_rank=rank, main_address="10.0.0.1", main_port=29500
    )
    train = plan.train.argv
    # Same process count on every node (torchrun's nproc_per_node is uniform): 7 per node.
    assert _after(train, "--num_processes") == "14"
    assert _after(train, "--num_machines") == "2"
    assert _after(train, "--machine_rank") == str(rank)
    assert _after(train, "--main_process_ip") == "10.0.0.1"
    assert _after(train, "--main_process_port") == "29500"
    assert _after(train, "--config_file").endswith("local_training/zero3_multinode.yaml")
    # Only global rank 0 (on node 0) talks to vLLM: the server listens on loopback, nothing else reaches it.
    assert _after(train, "--vllm_server_host") == "127.0.0.1"
    assert plan.train.env["CUDA_VISIBLE_DEVICES"] == "1,2,3,4,5,6,7"
    assert (plan.server is not None) == (rank == 0)
    if rank == 0:
        assert _after(plan.server.argv, "--host") == "127.0.0.1"
        assert plan.health_url == "http://127.0.0.1:8000/health" and plan.peer is None
    else:  # rank 1 waits for, then watches, the main node's rendezvous instead of its (private) server
        assert plan.health_url is None and plan.peer == "10.0.0.1:29500"
    assert plan.world_size == 14


def test_cpu_only_runs_train_directly_without_vllm(monkeypatch):
    monkeypatch.chdir(REPO)
    plan = plan_launch(GPU_RECIPE, num_gpus=0, python="python")
    assert plan.server is None and plan.health_url is None
    assert plan.train.argv == ["python", "-m", "mtgrpo.train", "--config", GPU_RECIPE, "--use_vllm", "false"]
    plan = plan_launch(CPU_RECIPE, num_gpus=0, train_overrides=["--max_steps", "2"], python="python")
    assert plan.train == Command(["python", "-m", "mtgrpo.train", "--config", CPU_RECIPE, "--max_steps", "2"])


def test_overrides_change_the_split(monkeypatch):
    monkeypatch.chdir(REPO)
    plan = plan_launch(
        GPU_RECIPE,
        num_gpus=8,
        train_overrides=["--vllm_tensor_parallel_size", "2", "--vllm_server_port=8011"],
    )
    assert plan.server.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert _after(plan.server.argv, "--tensor-parallel-size") == "2"
    assert _after(plan.server.argv, "--port") == "8011"
    assert plan.train.env["CUDA_VISIBLE_DEVICES"] == "2,3,4,5,6,7"
    assert _after(plan.train.argv, "--num_processes") == "6"
    # The GPUs actually granted (CUDA_VISIBLE_DEVICES) are what gets split.
    plan = plan_launch(GPU_RECIPE, num_gpus=4, visible_devices="4,5,6,7")
    assert plan.server.env["CUDA_VISIBLE_DEVICES"] == "4"
    assert plan.train.env["CUDA_VISIBLE_DEVICES"] == "5,6,7"
    # colocate mode: no server, every GPU trains.
    plan = plan_launch(GPU_RECIPE, num_gpus=2, train_overrides=["--vllm_mode", "colocate"])
    assert plan.server is None and plan.train.env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_impossible_layouts_name_the_fix(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match="vllm_mode: colocate"):
        plan_launch(GPU_RECIPE, num_gpus=1)
    with pytest.raises(ValueError, match="--main-address"):
        plan_launch(GPU_RECIPE, num_gpus=8, num_nodes=2, node_rank=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan_launch("recipes/nope.yaml", num_gpus=8)


def test_trainer_side_flags_exist_in_grpo_config():
    # The overrides the launcher adds must be real GRPOConfig fields, or TrlParser rejects them.
    from trl import GRPOConfig

    names = {f.name for f in fields(GRPOConfig)}
    assert {"use_vllm", "vllm_mode", "vllm_server_host", "vllm_server_port", "output_dir"} <= names


def test_accelerate_accepts_the_training_command(monkeypatch):
    from accelerate.commands.launch import launch_command_parser

    monkeypatch.chdir(REPO)
    argv = plan_launch(GPU_RECIPE, num_gpus=8, num_nodes=2, node_rank=1, main_address="10.0.0.1").train.argv
    args = launch_command_parser().parse_args(argv[3:])
    assert (args.num_processes, args.num_machines, args.machine_rank) == (14, 2, 1)
    assert args.module and args.training_script == "mtgrpo.train"


def test_local_training_configs_load_in_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {
        "single_gpu.yaml": ("NO", None),
        "multi_gpu.yaml": ("MULTI_GPU", None),
        "zero2.yaml": ("DEEPSPEED", 2),
        "zero3.yaml": ("DEEPSPEED", 3),
        "zero3_multinode.yaml": ("DEEPSPEED", 3),
    }
    for name, (distributed_type, stage) in expected.items():
        path = REPO / "local_training" / name
        assert path.read_text().startswith("# "), f"{name} must open with the command that runs it"
        config = load_config_from_file(str(path))
        assert str(config.distributed_type).endswith(distributed_type)
        if stage:
            assert config.deepspeed_config["zero_stage"] == stage
            assert "gradient_accumulation_steps" not in config.deepspeed_config  # "auto": from the recipe
    assert (
        load_config_from_file(str(REPO / "local_training/zero3_multinode.yaml")).deepspeed_config[
            "deepspeed_multinode_launcher"
        ]
        == "standard"
    )


# --- the CLI as a user runs it -------------------------------------------------------------------------------


def _command_lines(output: str) -> list[list[str]]:
    return [shlex.split(line) for line in output.splitlines() if line and not line.startswith("#")]


def test_cli_dry_run_one_node():
    out = subprocess.run(
        [sys.executable, "-m", "mtgrpo.launch.cli", GPU_RECIPE, "--num-gpus", "8", "--dry-run", "--learning_rate", "1.0e-06"],
        cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    server, train = _command_lines(out)
    assert server[:2] == ["CUDA_VISIBLE_DEVICES=0", "VLLM_SERVER_DEV_MODE=1"]
    assert "serve" in server and "Qwen/Qwen2.5-1.5B-Instruct" in server
    assert train[0] == "CUDA_VISIBLE_DEVICES=1,2,3,4,5,6,7"
    assert _after(train, "--num_processes") == "7"
    assert train[-6:] == [
        "--vllm_server_host",
        "127.0.0.1",
        "--vllm_server_port",
        "8000",
        "--learning_rate",
        "1.0e-06",
    ]
    assert "GET http://127.0.0.1:8000/health" in out
    assert "stop the vLLM server" in out


def test_cli_dry_run_second_node_and_train_sh():
    out = subprocess.run(
        ["local_training/train.sh", GPU_RECIPE, "--dry-run", "--num-gpus", "8", "--num-nodes", "2", "--node-rank", "1",
         "--main-address", "10.0.0.1"],
        cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (train,) = _command_lines(out)  # no server on rank 1
    assert _after(train, "--machine_rank") == "1"
    assert _after(train, "--main_process_ip") == "10.0.0.1"
    assert "main node's rendezvous 10.0.0.1:29500" in out
    assert "stop training if 10.0.0.1:29500 stays unreachable" in out


def test_cli_dry_run_cpu_and_errors():
    env = {**SUBPROCESS_ENV, "CUDA_VISIBLE_DEVICES": ""}  # a machine without GPUs
    run = subprocess.run(
        [sys.executable, "-m", "mtgrpo.launch.cli", CPU_RECIPE, "--dry-run", "--max_steps", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert _command_lines(run.stdout) == [
        [sys.executable, "-m", "mtgrpo.train", "--config", CPU_RECIPE, "--max_steps", "2"]
    ]
    bad = subprocess.run(
        [sys.executable, "-m", "mtgrpo.launch.cli", GPU_RECIPE, "--num-gpus", "1", "--dry-run"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "vllm_mode: colocate" in bad.stderr and "Traceback" not in bad.stderr


# --- process lifecycle against real local processes ---------------------------------------------------------

FAKE_SERVER = textwrap.dedent(
    """
    import http.server, os, subprocess, sys, time
    port, delay, mode, pidfile = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
    # Like vLLM's engine-core processes: a child that outlives the server unless its group is killed.
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()} {worker.pid}")
    print("INFO loading weights", flush=True)
    time.sleep(delay)
    if mode == "die":
        print("ERROR torch.OutOfMemoryError: CUDA out of memory", flush=True)
        sys.exit(3)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    print("INFO Application startup complete", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_gone(*pids, within=10.0):
    deadline = time.monotonic() + within
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _running(pid)], "orphaned processes left behind"


def _wait_for_file(path: Path, within=20.0) -> str:
    deadline = time.monotonic() + within
    while not (path.is_file() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    time.sleep(0.05)
    return path.read_text()


@pytest.fixture
def fake_server(tmp_path):
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)

    def make(delay: float, mode: str = "serve"):
        port = _free_port()
        pidfile = tmp_path / f"server-{port}.pid"
        command = Command([sys.executable, str(script), str(port), str(delay), mode, str(pidfile)])
        return (
            command,
            f"http://127.0.0.1:{port}/health",
            str(tmp_path / "logs" / f"vllm-{port}.log"),
            pidfile,
        )

    return make


def test_wait_succeeds_when_health_answers_late(fake_server):
    command, url, log, pidfile = fake_server(delay=1.5)
    process = _start(command, log)
    try:
        started = time.monotonic()
        wait_for_server(url, process, timeout=30, log_path=log, poll_interval=0.2)
        assert time.monotonic() - started >= 1.0
    finally:
        stop_process_group(process)
    _assert_gone(*map(int, pidfile.read_text().split()))


def test_dead_server_error_shows_its_log_and_leaves_no_orphans(fake_server):
    command, url, log, pidfile = fake_server(delay=0.3, mode="die")
    process = _start(command, log)
    try:
        with pytest.raises(ServerError) as error:
            wait_for_server(url, process, timeout=30, log_path=log, poll_interval=0.2)
    finally:
        stop_process_group(process, grace=5)
    message = str(error.value)
    assert "exited with code 3" in message
    assert "CUDA out of memory" in message and "loading weights" in message
    _assert_gone(*map(int, pidfile.read_text().split()))


def test_timeout_error_shows_log(fake_server):
    command, url, log, pidfile = fake_server(delay=600)
    process = _start(command, log)
    try:
        with pytest.raises(ServerError, match="did not answer .* within 1 s") as error:
            wait_for_server(url, process, timeout=1, log_path=log, poll_interval=0.2)
    finally:
        stop_process_group(process, grace=5)
    assert "loading weights" in str(error.value)
    _assert_gone(*map(int, pidfile.read_text().split()))


@pytest.mark.parametrize("train_exit", [0, 3])
def test_execute_stops_server_after_training(fake_server, train_exit):
    command, url, log, pidfile = fake_server(delay=0.5)
    check = f"import sys, urllib.request; urllib.request.urlopen({url!r}); sys.exit({train_exit})"
    plan = LaunchPlan(
        train=Command([sys.executable, "-c", check]), server=command, server_log=log, health_url=url
    )
    assert execute(plan, server_timeout=30) == train_exit
    _assert_gone(*map(int, pidfile.read_text().split()))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_training_and_server(fake_server, tmp_path, sig):
    command, url, log, pidfile = fake_server(delay=0.2)
    train_pidfile = tmp_path / "train.pid"
    training = (
        "import os, signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"open({str(train_pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    )
    runner = textwrap.dedent(
        f"""
        import sys
        from mtgrpo.launch.plan import Command, LaunchPlan
        from mtgrpo.launch.processes import execute
        plan = LaunchPlan(
            train=Command([sys.executable, "-c", {training!r}]),
            server=Command({command.argv!r}), server_log={log!r}, health_url={url!r},
        )
        sys.exit(execute(plan, server_timeout=30))
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", runner], env=SUBPROCESS_ENV, cwd=REPO)
    try:
        train_pid = int(_wait_for_file(train_pidfile))
        launcher.send_signal(sig)
        assert launcher.wait(timeout=60) == 128 + sig
    finally:
        if launcher.poll() is None:
            launcher.kill()
    _assert_gone(train_pid, *map(int, pidfile.read_text().split()))


# --- vLLM layouts, DeepSpeed's env file, exit codes, the peer watch -----------------------------------------


def test_model_revision_reaches_vllm(monkeypatch):
    monkeypatch.chdir(REPO)
    plan = plan_launch(GPU_RECIPE, num_gpus=8, train_overrides=["--model_revision", "0123abc"])
    assert _after(plan.server.argv, "--revision") == "0123abc"


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_dedicated_generation_node(monkeypatch, rank):
    monkeypatch.chdir(REPO)
    plan = plan_launch(
        GPU_RECIPE, num_gpus=8, num_nodes=3, node_rank=rank, main_address="10.0.0.1",
        generation_node="10.0.0.3", train_overrides=["--vllm_tensor_parallel_size", "2"],
    )  # fmt: skip
    if (
        rank == 2
    ):  # the generation node: vLLM on all 8 GPUs (4 x TP 2), reachable by the trainers, no training
        assert plan.train is None
        server = plan.server.argv
        assert plan.server.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
        assert (_after(server, "--tensor-parallel-size"), _after(server, "--data-parallel-size")) == (
            "2",
            "4",
        )
        assert _after(server, "--host") == "0.0.0.0"
        assert plan.peer == "10.0.0.1:29500"  # it stops when the training nodes are gone
        return
    train = plan.train.argv
    assert plan.server is None and plan.train.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert (_after(train, "--num_processes"), _after(train, "--num_machines")) == ("16", "2")
    assert _after(train, "--machine_rank") == str(rank)
    assert _after(train, "--vllm_server_host") == "10.0.0.3"
    assert plan.health_url == "http://10.0.0.3:8000/health"
    assert plan.world_size == 16


def test_generation_node_cli_dry_run_and_errors():
    args = [sys.executable, "-m", "mtgrpo.launch.cli", GPU_RECIPE, "--num-gpus", "8", "--num-nodes", "2",
            "--main-address", "10.0.0.1", "--generation-node", "10.0.0.2", "--dry-run"]  # fmt: skip
    out = subprocess.run([*args, "--node-rank", "1"], cwd=REPO, env=SUBPROCESS_ENV, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    (server,) = _command_lines(out)
    assert "--data-parallel-size" in server and "generation node" in out
    assert "serve until the training nodes' rendezvous 10.0.0.1:29500 goes away" in out
    bad = subprocess.run([*args[:-3], "--generation-node", "10.0.0.2", "--num-nodes", "1", "--dry-run"],
                         cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "--num-nodes >= 2" in bad.stderr and "Traceback" not in bad.stderr


def test_multinode_deepspeed_never_writes_the_environment_to_disk(monkeypatch):
    """accelerate writes every variable (HF_TOKEN, WANDB_API_KEY...) to ./.deepspeed_env when a multi-node
    DeepSpeed launch uses any launcher but `standard`; the ZeRO YAMLs do not name one, so it defaulted to pdsh."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.constants import DEEPSPEED_MULTINODE_LAUNCHERS

    monkeypatch.chdir(REPO)
    for config in ("zero2.yaml", "zero3.yaml", "zero3_multinode.yaml"):
        argv = plan_launch(
            GPU_RECIPE, num_gpus=8, num_nodes=2, node_rank=1, main_address="10.0.0.1",
            accelerate_config=f"local_training/{config}",
        ).train.argv  # fmt: skip
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv[3:]))
        # The exact condition under which accelerate's deepspeed_launcher opens .deepspeed_env:
        writes_env_file = (
            args.num_machines > 1 and args.deepspeed_multinode_launcher != DEEPSPEED_MULTINODE_LAUNCHERS[1]
        )
        assert not writes_env_file, config


def test_main_node_death_is_detected_fast(tmp_path):
    """Two nodes simulated by processes: a listener stands in for the main node's rendezvous store, the
    launcher of node 1 runs a training child that would wait forever (as NCCL would, for 30 minutes)."""
    main_node = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
         "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    port = int(main_node.stdout.readline())
    train_pidfile = tmp_path / "train.pid"
    training = f"import os, time; open({str(train_pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    runner = textwrap.dedent(
        f"""
        import sys
        from mtgrpo.launch.plan import Command, LaunchPlan
        from mtgrpo.launch.processes import execute
        plan = LaunchPlan(train=Command([sys.executable, "-c", {training!r}]), peer="127.0.0.1:{port}")
        sys.exit(execute(plan, peer_timeout=2, poll_interval=0.5))
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", runner], env=SUBPROCESS_ENV, cwd=REPO,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        train_pid = int(_wait_for_file(train_pidfile))
        time.sleep(1.5)
        assert launcher.poll() is None  # the main node answers: keep training
        main_node.kill()
        died = time.monotonic()
        _, err = launcher.communicate(timeout=60)
        assert launcher.returncode == 1
        assert time.monotonic() - died < 30
        assert "main node (rank 0) has stopped or died" in err and "NCCL timeout" in err
    finally:
        for process in (launcher, main_node):
            if process.poll() is None:
                process.kill()
    _assert_gone(train_pid)
