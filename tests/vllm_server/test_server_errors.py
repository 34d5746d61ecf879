"""A rollout vLLM server the trainer cannot use ends `mtgrpo train` in one line naming its URL and the fix, exit
status 2, no traceback (issue 21, item 15): TRL's VLLMClient refuses it while the trainer is built.

Driven through the CLI's `main` as `mtgrpo train --config RECIPE --flag value ...` runs it, with TRL's client believing
vLLM is installed (tests/vllm_standin.py's `install_tcp_weight_transfer`, as every server test here)."""

import pytest
from trl.generation import vllm_client
from vllm_standin import free_port

DEMO = "recipes/smollm2-135m-instruct/arithmetic-refine.yaml"
TRL_INIT_COMMUNICATOR = vllm_client.VLLMClient.init_communicator  # before any test replaces it


def _train(url, model_dir, output_dir) -> int:
    from mtgrpo.train import main

    flags = {
        "model_name_or_path": model_dir,
        "num_train_examples": 16,
        "use_vllm": "true",
        "vllm_mode": "server",
        "vllm_server_base_url": url,
        "vllm_server_timeout": 1,  # TRL retries an unreachable server every 2 s until this runs out
        "output_dir": output_dir,
    }
    return main(["--config", DEMO, *(str(part) for k, v in flags.items() for part in (f"--{k}", v))])


@pytest.mark.parametrize(
    "server, says",
    [
        ("without development mode", "development endpoints"),  # `vllm serve` without VLLM_SERVER_DEV_MODE=1
        ("dead port", "cannot be reached"),
        ("trainer without CUDA", "CUDA"),  # TRL's own init_communicator: NCCL needs a CUDA device
    ],
)
def test_a_rollout_server_the_trainer_cannot_use_ends_in_one_line(
    server, says, tmp_path, tiny_model_dir, standins, tcp_weights, monkeypatch, capsys
):
    if server == "dead port":
        url = f"http://127.0.0.1:{free_port()}"
    else:
        url = standins(tiny_model_dir, dev_mode=server != "without development mode").url
    if server == "trainer without CUDA":
        monkeypatch.setattr(vllm_client.VLLMClient, "init_communicator", TRL_INIT_COMMUNICATOR)
        # vLLM's, which TRL imports only when vLLM is installed (it is not, here)
        monkeypatch.setattr(vllm_client, "get_ip", lambda: "127.0.0.1", raising=False)
    status = _train(url, tiny_model_dir, tmp_path / "run")
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    ours = [line for line in err.splitlines() if line.startswith("mtgrpo ")]
    assert len(ours) == 1 and url in ours[0] and says in ours[0], err


def test_an_error_elsewhere_in_building_the_trainer_keeps_its_traceback(
    tmp_path, tiny_model_dir, standins, tcp_weights, monkeypatch
):
    """Only VLLMClient's refusals are translated: a RuntimeError from a bug while TRL connects is not."""

    def broken(self, device=0):
        raise RuntimeError("a bug")

    monkeypatch.setattr(vllm_client.VLLMClient, "init_communicator", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        _train(standins(tiny_model_dir).url, tiny_model_dir, tmp_path / "run")
