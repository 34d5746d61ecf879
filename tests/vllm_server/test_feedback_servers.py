"""The feedback model's server next to the rollout server, both CPU stand-ins (tests/vllm_standin.py), with the
trainer in vLLM server mode.

- frozen (`feedback_server_url`, not trained): the chat-completions endpoint, one request per episode, under the
  served model's name; no weights are ever pushed to it.
- trained, a separate model (`train_feedback_model`): it samples through TRL's VLLMClient on its own server and
  pushes its own weights there after each update (TCP stand-in for the CUDA-bound communicator); the server then
  scores like the trainer's copy.
- trained, `feedback_lora`: the feedback server gets the base model with the feedback adapter merged, the rollout
  server the base model with the solver's adapter merged, each under the base model's names.
"""

import math

import pytest
import torch
from datasets import Dataset
from scripted import TINY_RUN
from transformers import TrainerCallback
from vllm_standin import StandIn, free_port, install_tcp_weight_transfer

from mtgrpo import MTGRPOConfig, MultiTurnGRPOTrainer

END_OF_TURN = 2  # <|im_end|>: the feedback template's end-of-turn token


def letter_e_reward(completions, **kwargs):
    return [min(c[0]["content"].count("e"), 5) / 5 for c in completions]


def _dataset():
    return Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)}
            for i in range(8)
        ]
    )


def _config(tmp, rollout, **fields):
    return MTGRPOConfig(
        **{
            **TINY_RUN,
            "output_dir": str(tmp / "out"),
            "max_completion_length": 8,
            "use_vllm": True,
            "vllm_mode": "server",
            "vllm_server_base_url": rollout.url,
            "vllm_group_port": free_port(),
            "vllm_server_timeout": 30,
            "feedback_source": "model",
            "feedback_max_new_tokens": 8,
            "feedback_timeout": 60,
            **fields,
        }
    )


def _sums(named) -> dict:
    return {n: float(t.detach().double().sum()) for n, t in named}


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


# ---- frozen feedback model behind the chat endpoint -----------------------------------------------------------------


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory, tiny_model_dir, tiny_feedback_model_dir):
    tmp = tmp_path_factory.mktemp("frozen-feedback")
    servers = []
    with pytest.MonkeyPatch.context() as mp:
        install_tcp_weight_transfer(mp)
        try:
            rollout = StandIn(tiny_model_dir, tmp / "servers", name="rollout")
            servers.append(rollout)
            feedback = StandIn(
                tiny_feedback_model_dir, tmp / "servers", name="feedback", served_model_name="tiny-feedback"
            )
            servers.append(feedback)
            args = _config(
                tmp,
                rollout,
                feedback_model_name_or_path="tiny-feedback",
                feedback_server_url=f"{feedback.url}/v1",
                feedback_temperature=1.0,  # greedy, the random model writes only newlines: an empty reply
            )
            trainer = MultiTurnGRPOTrainer(
                model=str(tiny_model_dir), reward_funcs=[letter_e_reward], args=args, train_dataset=_dataset()
            )
            rollouts = []
            original = trainer._rollout

            def keep(prompts, trainer_=None):
                out = original(prompts, trainer_)
                rollouts.extend(trainer._rollouts)
                return out

            trainer.rollout_func = keep
            trainer.train()
            yield {"rollout": rollout, "feedback": feedback, "rollouts": rollouts}
        finally:
            for server in servers:
                server.stop()


def test_frozen_feedback_server_gets_one_chat_request_per_episode_under_its_served_name(frozen_run):
    feedback, rollouts = frozen_run["feedback"], frozen_run["rollouts"]
    posts = [r for r in feedback.requests() if r.get("method") != "GET"]
    assert {r["route"] for r in posts} == {"/v1/chat/completions"}  # no weights, no token-id completions
    assert len(posts) == len(rollouts) == 4
    assert all(r["status"] == 200 and r["body"]["model"] == "tiny-feedback" for r in posts)
    # Each episode's feedback turn is the reply to a conversation holding its own first answer.
    replies = {r["body"]["messages"][1]["content"]: r["answered"]["texts"][0] for r in posts}
    for rollout in rollouts:
        attempt = rollout.turns("solver")[0].text
        assert [
            m["role"]
            for m in next(
                r["body"]["messages"] for r in posts if r["body"]["messages"][1]["content"] == attempt
            )
        ] == ["user", "assistant", "user"]
        assert rollout.turns("feedback")[0].text == replies[attempt].strip()  # the client strips replies
    # The solver's server got the solver's turns and weights; the feedback model's stayed out of it.
    assert len(frozen_run["rollout"].requests("/v1/completions")) == 2  # solve, refine
    assert len(frozen_run["rollout"].requests("/update_weights")) == 1


FEEDBACK_CONVERSATIONS = [
    [
        {"role": "user", "content": f"What is {i} + {i}?"},
        {"role": "assistant", "content": f"{2 * i}"},
        {"role": "user", "content": "Point out any mistake."},
    ]
    for i in range(4)
]


def _ask_frozen(server, model_name):
    """The frozen client as the refine episode calls it; the server's record of what it generated."""
    from mtgrpo.feedback.model import FeedbackServerError, ServerFeedbackModel

    client = ServerFeedbackModel(f"{server.url}/v1", model_name, max_new_tokens=8, temperature=1.0, retries=0)
    try:
        client.generate(FEEDBACK_CONVERSATIONS)
    except FeedbackServerError:
        pass  # a reply of an end-of-turn token only decodes to nothing; the record tells what was generated
    return server.requests("/v1/chat/completions")


def test_frozen_feedback_replies_stop_at_the_feedback_end_of_turn(eot_model_dir, standins):
    """A feedback model whose EOS (<|endoftext|>) is not its template's end-of-turn (<|im_end|>), which it writes
    often, served under its own path (as `mtgrpo launch` serves feedback_model_name_or_path): its tokenizer is on this
    machine, so the requests carry vLLM's `stop_token_ids` and no reply runs on past <|im_end|>."""
    name = str(eot_model_dir)
    requests = _ask_frozen(standins(eot_model_dir, name="feedback", served_model_name=name), name)
    assert requests and all(r["body"].get("stop_token_ids") == [END_OF_TURN] for r in requests)
    completions = [ids for r in requests for ids in r["answered"]["completions"]]
    assert any(END_OF_TURN in ids for ids in completions), "the fixture model should write <|im_end|> often"
    for ids in completions:
        assert END_OF_TURN not in ids[:-1], ids


def test_frozen_feedback_requests_to_a_name_only_the_server_knows_carry_no_extra_field(eot_model_dir, standins):
    """A served name with no tokenizer on this machine (a hosted API's model, an alias): only OpenAI's fields, since
    such an API may refuse vLLM's `stop_token_ids`."""
    server = standins(eot_model_dir, name="feedback", served_model_name="tiny-feedback")
    requests = _ask_frozen(server, "tiny-feedback")
    assert requests and all(set(r["body"]) == {"model", "messages", "max_tokens", "temperature"} for r in requests)


def test_only_a_local_model_whose_end_of_turn_is_not_an_eos_gets_stop_token_ids(eot_model_dir, tiny_model_dir):
    from mtgrpo.feedback.model import end_of_turn_stop_ids

    assert end_of_turn_stop_ids(str(eot_model_dir)) == [END_OF_TURN]
    assert end_of_turn_stop_ids(str(tiny_model_dir)) == []  # EOS <|im_end|>: the server stops there anyway
    assert end_of_turn_stop_ids("gpt-4o-mini") == []  # a hosted API's name: no tokenizer here, nothing downloaded


# ---- a trained feedback model on its own server -------------------------------------------------------------------


class SolverWeightsAfterEachStep(TrainerCallback):
    """The solver's weights as its vLLM server must hold them after each step: the solver's adapter merged when it is
    a LoRA model, under the base model's names."""

    def __init__(self, model):
        self.model, self.sums = model, []

    def on_step_end(self, args, state, control, **kwargs):
        from accelerate.utils import is_peft_model

        if not is_peft_model(self.model):
            self.sums.append(_sums(self.model.named_parameters()))
            return
        self.model.merge_adapter()  # the active adapter: the solver's
        try:
            self.sums.append(
                _sums(
                    (n.removeprefix("base_model.model.").replace(".base_layer", ""), p)
                    for n, p in self.model.named_parameters()
                    if "lora_" not in n
                )
            )
        finally:
            self.model.unmerge_adapter()


def _trained_run(tmp, servers, rollout_dir, feedback_dir, peft_config=None, **fields):
    """Train with both servers; `servers` collects them as they start (the caller stops them)."""
    rollout = StandIn(rollout_dir, tmp / "servers", name="rollout")
    servers.append(rollout)
    feedback = StandIn(feedback_dir, tmp / "servers", name="feedback")
    servers.append(feedback)
    args = _config(
        tmp,
        rollout,
        **{"max_steps": 2, **fields},
        feedback_model_name_or_path=str(feedback_dir),
        feedback_server_url=f"{feedback.url}/v1",
        feedback_vllm_group_port=free_port(),
        train_feedback_model=True,
        feedback_temperature=1.0,
        feedback_learning_rate=1e-2,
    )
    trainer = MultiTurnGRPOTrainer(
        model=str(rollout_dir),
        reward_funcs=[letter_e_reward],
        args=args,
        train_dataset=_dataset(),
        peft_config=peft_config,
    )
    solver = SolverWeightsAfterEachStep(trainer.model)
    trainer.add_callback(solver)
    trainer.train()
    return trainer, rollout, feedback, solver.sums


def _server_matches_trainer_logprobs(server, model, tokenizer):
    """Sample from the server through TRL's client and score the same tokens with the trainer's copy."""
    from trl.generation.vllm_client import VLLMClient

    from mtgrpo.feedback.model import FeedbackSample
    from mtgrpo.feedback.training import completion_logps

    client = VLLMClient(base_url=server.url, connection_timeout=10)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Check 2 + 2 = 4."}], add_generation_prompt=True, return_dict=False
    )
    out = client.generate([list(prompt)], n=1, temperature=1.0, max_tokens=6, logprobs=0)
    ids = out["completion_ids"][0]
    sample = FeedbackSample(text="", prompt_ids=list(prompt), completion_ids=ids)
    with torch.no_grad():
        mine, _ = completion_logps(model, [sample], tokenizer.pad_token_id, torch.device("cpu"), 1.0)
    theirs = torch.tensor([lp[0] for lp in out["logprobs"][0]])
    return (mine[0] - theirs).abs().max().item()


def test_trained_feedback_model_samples_and_pushes_its_own_weights_to_its_server(
    tmp_path, tiny_model_dir, tiny_feedback_model_dir, tcp_weights
):
    servers = []
    try:
        trainer, rollout, feedback, solver_sums = _trained_run(
            tmp_path, servers, tiny_model_dir, tiny_feedback_model_dir
        )
        policy = trainer.feedback_policy
        routes = [r["route"] for r in feedback.requests() if r.get("method") != "GET"]
        push = ["/start_weight_update", "/update_weights", "/finish_weight_update", "/reset_prefix_cache"]
        assert routes == ["/init_weight_transfer_engine", *(["/v1/completions", *push] * 2)], routes
        for request in feedback.requests("/v1/completions"):  # one sample per episode, in one request
            assert len(request["body"]["prompt"]) == 4 and request["body"]["n"] == 1
        feedback_names = {n for n, _ in policy.model.named_parameters()}
        solver_names = {n for n, _ in trainer.model.named_parameters()}
        updates = feedback.requests("/update_weights")
        assert all(u["status"] == 200 and set(u["names"]) == feedback_names for u in updates)
        current = _sums(policy.model.named_parameters())
        assert all(_close(updates[-1]["sums"][n], current[n]) for n in feedback_names)
        # The rollout server got the solver's weights, never the feedback model's.
        for update in rollout.requests("/update_weights"):
            assert set(update["names"]) == solver_names
        assert all(
            _close(rollout.requests("/update_weights")[-1]["sums"][n], solver_sums[0][n])
            for n in solver_names
        )
        # After the last push the server scores like the trainer's feedback model.
        assert _server_matches_trainer_logprobs(feedback, policy.model, policy.backend.tokenizer) < 1e-3
    finally:
        for server in servers:
            server.stop()


def test_trained_feedback_requests_carry_the_feedback_end_of_turn(tmp_path, eot_model_dir, tcp_weights):
    servers = []
    try:
        trainer, rollout, feedback, _ = _trained_run(
            tmp_path, servers, eot_model_dir, eot_model_dir, max_steps=1
        )
        for request in feedback.requests("/v1/completions"):
            assert END_OF_TURN in (request["body"].get("stop_token_ids") or []), request["body"]
    finally:
        for server in servers:
            server.stop()


def test_feedback_lora_pushes_each_merged_adapter_to_its_own_server(tmp_path, tiny_model_dir, tcp_weights):
    from peft import LoraConfig

    from mtgrpo.feedback.weights import FEEDBACK_ADAPTER

    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    servers = []
    try:
        trainer, rollout, feedback, solver_sums = _trained_run(
            tmp_path,
            servers,
            tiny_model_dir,
            tiny_model_dir,
            peft_config=lora,
            feedback_lora=True,
            feedback_device="auto",
        )
        policy = trainer.feedback_policy
        base_names = {n for n, _ in trainer.model.get_base_model().named_parameters() if "lora_" not in n}
        base_names = {n.replace(".base_layer", "") for n in base_names}
        feedback_now = _sums(policy.weights.vllm_weights().tensors)
        rollout_pushes, feedback_pushes = (
            rollout.requests("/update_weights"),
            feedback.requests("/update_weights"),
        )
        assert len(rollout_pushes) == 2 and len(feedback_pushes) == 2
        for update in rollout_pushes + feedback_pushes:
            assert (
                update["status"] == 200 and set(update["names"]) == base_names
            )  # base names, no adapter names
        # Feedback server: base + feedback adapter (after its last update); rollout server: base + solver adapter
        # (after step 1, the weights step 2 generated with).
        assert all(_close(feedback_pushes[-1]["sums"][n], feedback_now[n]) for n in base_names)
        assert all(_close(rollout_pushes[-1]["sums"][n], solver_sums[0][n]) for n in base_names)
        adapted = [n for n in base_names if "q_proj" in n or "v_proj" in n]
        assert all(not _close(feedback_pushes[-1]["sums"][n], rollout_pushes[-1]["sums"][n]) for n in adapted)
        assert trainer.model.active_adapter != FEEDBACK_ADAPTER
        assert (
            _server_matches_trainer_logprobs(feedback, _FeedbackView(trainer.model), policy.backend.tokenizer)
            < 1e-3
        )
    finally:
        for server in servers:
            server.stop()


class _FeedbackView(torch.nn.Module):
    """The solver's PeftModel with the feedback adapter active, as a plain callable model."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, **kwargs):
        from trl.trainer.utils import use_adapter

        from mtgrpo.feedback.weights import FEEDBACK_ADAPTER

        with use_adapter(self.peft_model, FEEDBACK_ADAPTER):
            return self.peft_model(**kwargs)
