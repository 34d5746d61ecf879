"""mtgrpo doctor: exit codes, a fix for every failure, credentials reported but never printed."""

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from mtgrpo.launch import doctor

REPO = Path(__file__).resolve().parents[2]
WANDB_SECRET = "0123456789abcdef0123456789abcdef-doctor"
HF_SECRET = "hf_doctorSecretValue123"


def _recipe(tmp_path, **fields):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "report_to": "none", **fields}))
    return str(path)


def _by_name(checks):
    return {check.name: check for check in checks}


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(doctor, "_hf_token_path", lambda: tmp_path / "no-hf-token")


def test_every_failure_and_warning_has_a_fix(tmp_path, no_credentials):
    recipe = _recipe(
        tmp_path, use_vllm=True, vllm_mode="server", vllm_server_port=1, report_to="wandb", bf16=True
    )
    checks = doctor.run_checks(recipe, min_free_gb=1e9)
    assert [c for c in checks if c.status != doctor.OK and not c.fix] == []
    named = _by_name(checks)
    assert named["disk"].status == doctor.FAIL
    assert named["wandb key"].status == doctor.FAIL
    assert named["vllm server"].status == doctor.WARN  # the launcher starts it: not a failure


def test_cpu_recipe_passes_without_gpu(tmp_path, no_credentials, capsys):
    assert doctor.main(["--config", _recipe(tmp_path, use_cpu=True, bf16=False)]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_gpu_recipe_fails_on_a_cpu_machine(tmp_path, no_credentials, capsys):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert doctor.main(["--config", _recipe(tmp_path, use_vllm=True, vllm_mode="server")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  gpu" in out and "fix:" in out


def test_version_ranges():
    assert doctor.check_package("trl", ">=1.14,<1.17", True, "x").status == doctor.OK
    too_old = doctor.check_package("trl", ">=99", True, "the trainer")
    assert too_old.status == doctor.FAIL and 'pip install "trl>=99"' in too_old.fix
    missing = doctor.check_package("surely-not-installed-pkg", ">=1", False, "why")
    assert missing.status == doctor.WARN and "not installed" in missing.detail


def test_fallback_ranges_match_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for requirement in declared:
        if requirement.name in doctor.FALLBACK_RANGES:
            assert (
                requirement.specifier == Requirement(f"x{doctor.FALLBACK_RANGES[requirement.name]}").specifier
            )


def _fake_java(tmp_path, version):
    bin_dir = tmp_path / f"java{version}"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2024-01-16' >&2\n")
    java.chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize(
    ("version", "status"), [("17.0.15", doctor.FAIL), ("21.0.2", doctor.OK), (None, doctor.FAIL)]
)
def test_java_21_for_pyserini(tmp_path, monkeypatch, version, status):
    monkeypatch.setenv("PATH", _fake_java(tmp_path, version) if version else str(tmp_path))
    (check,) = doctor.check_java({"search_backend": "pyserini"})
    assert check.status == status
    if status == doctor.FAIL:
        assert "21" in check.fix
    assert doctor.check_java({"search_backend": "bm25s"}) == []


def test_vllm_server_health(tmp_path):
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        recipe = {"use_vllm": True, "vllm_mode": "server", "vllm_server_port": server.server_address[1]}
        (check,) = doctor.check_vllm_server(recipe, "r.yaml")
        assert check.status == doctor.OK
    finally:
        server.shutdown()
    (check,) = doctor.check_vllm_server(recipe, "r.yaml")
    assert check.status == doctor.WARN and "mtgrpo launch r.yaml" in check.fix
    assert doctor.check_vllm_server({"use_vllm": True, "vllm_mode": "colocate"}, "r.yaml") == []


def test_credentials_found_but_never_printed(tmp_path):
    # As a user runs it, in a subprocess: the values must appear nowhere in stdout or stderr.
    recipe = _recipe(tmp_path, use_cpu=True, bf16=False, report_to=["wandb"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_API_KEY": WANDB_SECRET, "HF_TOKEN": HF_SECRET}
    env.pop("WANDB_MODE", None)
    run = subprocess.run(
        [sys.executable, "-m", "mtgrpo.launch.doctor", "--config", recipe], env=env, capture_output=True, text=True
    )
    output = run.stdout + run.stderr
    assert "set in WANDB_API_KEY" in output and "hf token" in output
    assert WANDB_SECRET not in output and HF_SECRET not in output

    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {WANDB_SECRET}\n")
    netrc.chmod(0o600)
    env = {**env, "NETRC": str(netrc)}
    del env["WANDB_API_KEY"]
    run = subprocess.run(
        [sys.executable, "-m", "mtgrpo.launch.doctor", "--config", recipe], env=env, capture_output=True, text=True
    )
    assert f"found in {netrc}" in run.stdout
    assert WANDB_SECRET not in run.stdout + run.stderr


def test_disk_estimate_scales_with_model_size_and_kept_checkpoints(tmp_path):
    # A 7B ZeRO-3 run keeping 3 checkpoints needs hundreds of GiB, not the flat 50 GiB asked before.
    big = yaml.safe_load((REPO / "recipes/qwen2.5-7b/triviaqa-search.yaml").read_text())
    need, why = doctor.required_disk_gb(big)
    assert need > 300 and "3 kept checkpoints" in why
    assert doctor.required_disk_gb({**big, "save_total_limit": 1})[0] < need / 2
    assert doctor.required_disk_gb({**big, "model_name_or_path": "Qwen/Qwen2.5-1.5B-Instruct"})[0] < need / 3
    check = doctor.check_disk({**big, "output_dir": str(tmp_path / "out")})
    free = doctor.shutil.disk_usage(tmp_path).free / 2**30
    assert (check.status == doctor.FAIL) == (free < need)
    if check.status == doctor.FAIL:
        assert "save_total_limit" in check.fix and "kept checkpoints" in check.detail
    # A local model directory is measured by its weight files (16-bit: 2 bytes per parameter).
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 2_000_000)
    assert doctor.model_parameters({"model_name_or_path": str(model)}) == 1_000_000
