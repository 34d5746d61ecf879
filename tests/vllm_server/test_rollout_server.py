"""The trainer in vLLM server mode (`use_vllm: true, vllm_mode: server`) against a CPU stand-in of the server.

One 2-step refine run (solve, self-feedback, refine: three generation calls per step) of a tiny model whose EOS
(`<|endoftext|>`) is not its template's end-of-turn token (`<|im_end|>`), against tests/vllm_standin.py: TRL's own
VLLMClient and weight sync, with only the CUDA-bound communicator replaced (weights travel over TCP, not NCCL; see
the stand-in's docstring). The tests then read what the server recorded.

What this cannot show: NCCL, vLLM's own weight loader and kernels, tensor parallelism, throughput (README, GPU).
"""

import math

import pytest
import torch
from datasets import Dataset
from scripted import TINY_RUN
from transformers import TrainerCallback
from vllm_standin import StandIn, free_port, install_tcp_weight_transfer

from mtgrpo import MTGRPOConfig, MultiTurnGRPOTrainer

END_OF_TURN = 2  # <|im_end|>
EOS = 0  # <|endoftext|>


def letter_e_reward(completions, **kwargs):
    return [min(c[0]["content"].count("e"), 5) / 5 for c in completions]


class WeightsAfterEachStep(TrainerCallback):
    """The policy's parameters right after each optimizer step (what the next generation must use)."""

    def __init__(self, model):
        self.model, self.sums = model, []

    def on_step_end(self, args, state, control, **kwargs):
        self.sums.append({n: float(p.detach().double().sum()) for n, p in self.model.named_parameters()})


@pytest.fixture(scope="module")
def run(tmp_path_factory, eot_model_dir):
    tmp = tmp_path_factory.mktemp("rollout-run")
    with pytest.MonkeyPatch.context() as mp:
        install_tcp_weight_transfer(mp)
        server = StandIn(eot_model_dir, tmp / "servers", name="rollout")
        try:
            args = MTGRPOConfig(
                output_dir=str(tmp / "out"),
                **{**TINY_RUN, "max_steps": 2, "max_completion_length": 8},
                use_vllm=True,
                vllm_mode="server",
                vllm_server_base_url=server.url,
                vllm_group_port=free_port(),
                vllm_server_timeout=30,
                episode_log_steps=1,
            )
            dataset = Dataset.from_list(
                [
                    {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)}
                    for i in range(8)
                ]
            )
            trainer = MultiTurnGRPOTrainer(
                model=str(eot_model_dir), reward_funcs=[letter_e_reward], args=args, train_dataset=dataset
            )
            rollouts = []
            original = trainer._rollout

            def keep(prompts, trainer_=None):
                out = original(prompts, trainer_)
                rollouts.append(trainer._rollouts)
                return out

            trainer.rollout_func = keep
            weights = WeightsAfterEachStep(trainer.model)
            trainer.add_callback(weights)
            trainer.train()
            yield {"trainer": trainer, "server": server, "rollouts": rollouts, "weights": weights.sums}
        finally:
            server.stop()


def test_end_of_turn_id_is_in_every_generation_request(run):
    requests = run["server"].requests("/v1/completions")
    assert len(requests) == 2 * 3  # two steps, three turns each
    assert all(r["status"] == 200 for r in requests)
    for r in requests:
        assert END_OF_TURN in (r["body"].get("stop_token_ids") or []), r["body"]


def test_turns_stop_at_the_end_of_turn_token(run):
    """The model writes <|im_end|> often: a completion holding it must end on it (the server stopped there)."""
    completions = [
        c for r in run["server"].requests("/v1/completions") for a in r["answered"] for c in a["completions"]
    ]
    stopped = [c for c in completions if END_OF_TURN in c]
    assert len(stopped) >= len(completions) // 4, "the fixture model should write <|im_end|> often"
    for ids in stopped:
        assert ids.index(END_OF_TURN) == len(ids) - 1, ids
    # And the trainer saw those turns as finished, not truncated: every solver turn ends on a stop id or at the cap.
    for batch in run["rollouts"]:
        for rollout in batch:
            for seg in rollout.turns("solver"):
                assert seg.ids[-1] in (END_OF_TURN, EOS) or len(seg.ids) == 8, seg.ids


def test_every_completion_comes_back_to_its_own_context(run):
    """Each solver turn the trainer kept is one of the completions the server generated for exactly the context
    that preceded the turn (random samples of a random model: two contexts never share a completion)."""
    answered = {}
    for r in run["server"].requests("/v1/completions"):
        for a in r["answered"]:
            answered.setdefault(tuple(a["prompt"]), []).extend(a["completions"])
    checked = 0
    for batch in run["rollouts"]:
        for rollout in batch:
            context = list(rollout.prompt_ids)
            for seg in rollout.segments:
                if seg.role != "user":  # a generated turn (solver or its own feedback)
                    assert seg.ids in answered.get(tuple(context), []), "completion of another context"
                    checked += 1
                context += seg.ids
    assert checked == 2 * 4 * 3


def test_weights_are_pushed_after_each_optimizer_step_before_the_next_generation(run):
    trainer, server = run["trainer"], run["server"]
    routes = [r["route"] for r in server.requests() if r.get("method") != "GET"]
    push = ["/start_weight_update", "/update_weights", "/finish_weight_update", "/reset_prefix_cache"]
    generate = ["/v1/completions"] * 3
    # TRL pushes at its first generation (step 0) and after each step that is followed by a generation.
    assert routes == ["/init_weight_transfer_engine", *push, *generate, *push, *generate], routes
    updates = server.requests("/update_weights")
    assert all(u["status"] == 200 for u in updates), [u.get("refused") for u in updates]
    names = {n for n, _ in trainer.model.named_parameters()}
    for update in updates:
        assert set(update["names"]) == names  # every parameter, under names the server accepted
    # The second push carries the weights of right after step 1, which moved (learning rate 1e-2).
    after_step_1 = run["weights"][0]
    for name in names:
        assert math.isclose(updates[1]["sums"][name], after_step_1[name], rel_tol=1e-6, abs_tol=1e-6), name
    assert any(not math.isclose(updates[0]["sums"][n], after_step_1[n], rel_tol=1e-4) for n in names)


def test_trainer_and_server_logprobs_agree_after_the_push(run):
    """TRL compares its own log-probs of the sampled tokens with the server's on every step
    (sampling/sampling_logp_difference): on step 2 the server samples with the weights pushed after step 1."""
    history = [h for h in run["trainer"].state.log_history if "sampling/sampling_logp_difference/max" in h]
    assert len(history) == 2
    for entry in history:
        assert entry["sampling/sampling_logp_difference/max"] < 1e-3, entry


def test_a_name_the_server_does_not_have_is_refused(run, eot_model_dir, tmp_path, monkeypatch):
    """The stand-in refuses unknown names as vLLM's loader does, so the name check above can fail."""
    from trl.generation.vllm_client import VLLMClient

    install_tcp_weight_transfer(monkeypatch)
    server = StandIn(eot_model_dir, tmp_path, name="refusing")
    try:
        client = VLLMClient(base_url=server.url, group_port=free_port(), connection_timeout=30)
        client.init_communicator(device="cpu")
        with pytest.raises(Exception, match="400"):
            client.update_named_param("base_model.model.lm_head.weight", torch.zeros(2, 2))
    finally:
        server.stop()
