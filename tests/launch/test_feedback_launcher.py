"""`mtgrpo launch` with a feedback model behind its own vLLM server: the GPU split, the commands, --dry-run."""

import subprocess
import sys
from pathlib import Path

import pytest

from mtgrpo.launch.plan import format_plan, plan_launch

REPO = Path(__file__).resolve().parents[2]
BILEVEL = "recipes/llama-3.2-1b-instruct/math-bilevel.yaml"
FIXED = "recipes/llama-3.2-1b-instruct/math-fixed-feedback.yaml"


def _after(argv, flag):
    return argv[argv.index(flag) + 1]


def test_eight_gpus_one_solver_vllm_one_feedback_vllm_six_training():
    plan = plan_launch(REPO / FIXED, num_gpus=8, python="python")
    assert plan.server.env["CUDA_VISIBLE_DEVICES"] == "0"
    fb = plan.feedback_server
    assert fb.env == {"CUDA_VISIBLE_DEVICES": "1"}  # no dev mode: a frozen model needs no weight transfer
    assert fb.argv[fb.argv.index("serve") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
    assert _after(fb.argv, "--host") == "127.0.0.1" and _after(fb.argv, "--port") == "8001"
    assert _after(fb.argv, "--served-model-name") == "meta-llama/Llama-3.1-8B-Instruct"
    assert "--weight-transfer-config" not in fb.argv
    assert plan.feedback_health_url == "http://127.0.0.1:8001/health"
    assert plan.feedback_server_log.endswith("logs/vllm-feedback-server.log")
    assert plan.train.env["CUDA_VISIBLE_DEVICES"] == "2,3,4,5,6,7"
    assert _after(plan.train.argv, "--num_processes") == "6" and plan.world_size == 6
    text = format_plan(plan)
    assert text.index("feedback model's vLLM server") < text.index("8001/health") < text.index("training:")


def test_too_few_gpus_and_multi_node_loopback_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="need at least 3 GPUs"):
        plan_launch(REPO / BILEVEL, num_gpus=2)
    with pytest.raises(ValueError, match="on loopback, but training spans 2 nodes"):
        plan_launch(REPO / BILEVEL, num_gpus=8, num_nodes=2, node_rank=0, main_address="10.0.0.1")


def test_external_feedback_server_starts_nothing():
    plan = plan_launch(
        REPO / BILEVEL, num_gpus=8, train_overrides=["--feedback_server_url", "http://10.0.0.9:8001"]
    )
    assert plan.feedback_server is None and plan.feedback_health_url is None
    assert plan.train.env["CUDA_VISIBLE_DEVICES"] == "1,2,3,4,5,6,7"
    assert any("10.0.0.9:8001" in note for note in plan.notes)


def test_in_process_feedback_model_starts_no_server():
    recipe = REPO / "recipes/smollm2-135m-instruct/arithmetic-model-feedback.yaml"
    assert plan_launch(recipe, num_gpus=2).feedback_server is None


def test_dry_run_cli_shows_both_servers():
    out = subprocess.run(
        [sys.executable, "-m", "mtgrpo.launch.cli", BILEVEL, "--num-gpus", "8", "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    ).stdout
    servers = [line for line in out.splitlines() if " serve " in line]
    assert len(servers) == 2 and "VLLM_SERVER_DEV_MODE=1" in servers[0] and "--port 8001" in servers[1]
    assert "stop the vLLM servers" in out


def test_trained_feedback_model_gets_a_weight_transfer_server():
    plan = plan_launch(REPO / BILEVEL, num_gpus=8, python="python")
    fb = plan.feedback_server
    assert fb.env == {
        "CUDA_VISIBLE_DEVICES": "1",
        "VLLM_SERVER_DEV_MODE": "1",
    }  # weights are pushed after updates
    assert fb.argv[fb.argv.index("serve") + 1] == "meta-llama/Llama-3.2-1B-Instruct"
    assert _after(fb.argv, "--port") == "8001" and _after(fb.argv, "--host") == "127.0.0.1"
    assert "--weight-transfer-config" in fb.argv
    assert plan.train.env["CUDA_VISIBLE_DEVICES"] == "2,3,4,5,6,7"
    frozen = plan_launch(
        REPO / BILEVEL, num_gpus=8, python="python", train_overrides=["--train_feedback_model", "false"]
    )
    assert "--weight-transfer-config" not in frozen.feedback_server.argv
