"""A separate, frozen feedback model (feedback_source: model): both backends, the refine episode, config errors.

The server backend is tested against a real HTTP server started by the test: a `http.server.ThreadingHTTPServer`
thread that speaks the OpenAI chat-completions format (POST /v1/chat/completions), since vLLM cannot run here.
"""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from datasets import Dataset
from scripted import TINY_RUN, ScriptedGenerate

from mtgrpo.chat import ChatTurns
from mtgrpo.config import MTGRPOConfig
from mtgrpo.episodes import RefineEpisode, run_episodes
from mtgrpo.feedback.model import (
    FeedbackServerError,
    ServerFeedbackModel,
    TransformersFeedbackModel,
    chat_completions_url,
)
from mtgrpo.transcripts import episode_records

# ---- a tiny OpenAI-compatible server -------------------------------------------------------------------------


class ChatServer:
    """POST /v1/chat/completions answers "Hint: <last user message>"; `mode` switches to failure behaviours."""

    def __init__(self):
        self.mode = "ok"
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.failures_left = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                owner.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if owner.failures_left > 0:
                    owner.failures_left -= 1
                    return self._send(503, {"error": "overloaded"})
                if owner.mode == "slow":
                    time.sleep(1.0)
                if owner.mode == "bad_model":
                    return self._send(404, {"error": f"The model `{body['model']}` does not exist."})
                content = "" if owner.mode == "empty" else f"Hint: {body['messages'][-1]['content'][:40]}"
                self._send(
                    200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
                )

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CONV = [
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "Give feedback."},
    ]
]


def test_chat_completions_url_forms():
    assert chat_completions_url("http://h:8001") == "http://h:8001/v1/chat/completions"
    assert chat_completions_url("http://h:8001/v1/") == "http://h:8001/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_server_backend_answers_in_order_with_the_openai_format(server):
    model = ServerFeedbackModel(server.url, "fb-model", timeout=5, max_new_tokens=17, temperature=0.0)
    convs = [[{"role": "user", "content": f"problem {i}"}] for i in range(5)]
    assert model.generate(convs) == [f"Hint: problem {i}" for i in range(5)]  # concurrent, yet in order
    request = server.requests[0]
    assert request["model"] == "fb-model" and request["max_tokens"] == 17 and request["temperature"] == 0.0
    assert request["messages"][0]["role"] == "user"
    assert model.generate([]) == []


def test_server_backend_retries_a_failing_server(server):
    server.failures_left = 2
    model = ServerFeedbackModel(server.url, "m", timeout=5, retries=2, backoff=0.01)
    assert model.generate(CONV) == ["Hint: Give feedback."]
    assert len(server.requests) == 3


def test_server_down_is_a_clear_error_naming_the_url_and_fix():
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    model = ServerFeedbackModel(url, "m", timeout=2, retries=1, backoff=0.01)
    with pytest.raises(FeedbackServerError, match=r"127\.0\.0\.1.*2 attempt\(s\).*start the server"):
        model.generate(CONV)


def test_server_timeout_is_a_clear_error(server):
    server.mode = "slow"
    model = ServerFeedbackModel(server.url, "m", timeout=0.2, retries=0)
    with pytest.raises(FeedbackServerError, match=r"timed out after 0\.2 s.*feedback_timeout"):
        model.generate(CONV)


def test_server_empty_answer_is_a_clear_error(server):
    server.mode = "empty"
    model = ServerFeedbackModel(server.url, "m", timeout=5, retries=1, backoff=0.01)
    with pytest.raises(FeedbackServerError, match="empty answer"):
        model.generate(CONV)
    assert len(server.requests) == 2  # retried once


def test_server_rejecting_the_model_name_is_not_retried(server):
    server.mode = "bad_model"
    model = ServerFeedbackModel(server.url, "wrong-name", timeout=5, retries=3, backoff=0.01)
    with pytest.raises(FeedbackServerError, match="served model name"):
        model.generate(CONV)
    assert len(server.requests) == 1


def test_server_dying_mid_run_is_a_clear_error(server):
    model = ServerFeedbackModel(server.url, "m", timeout=2, retries=1, backoff=0.01)
    assert model.generate(CONV) == ["Hint: Give feedback."]
    server.stop()
    with pytest.raises(FeedbackServerError, match=server.url.replace(".", r"\.")):
        model.generate(CONV)


def test_api_key_comes_from_the_named_variable_and_is_never_in_errors(server, monkeypatch):
    monkeypatch.setenv("FB_TEST_KEY", "sk-secret-123")
    model = ServerFeedbackModel(server.url, "m", timeout=5, api_key_env="FB_TEST_KEY")
    model.generate(CONV)
    assert server.headers[0]["Authorization"] == "Bearer sk-secret-123"
    server.mode = "empty"
    with pytest.raises(FeedbackServerError) as err:
        ServerFeedbackModel(server.url, "m", timeout=5, retries=0, api_key_env="FB_TEST_KEY").generate(CONV)
    assert "sk-secret" not in str(err.value)
    monkeypatch.delenv("FB_TEST_KEY")
    with pytest.raises(ValueError, match="FB_TEST_KEY.*not set"):
        ServerFeedbackModel(server.url, "m", api_key_env="FB_TEST_KEY")


# ---- the in-process backend ----------------------------------------------------------------------------------


def test_in_process_backend_is_frozen_and_greedy(tiny_model_dir):
    model = TransformersFeedbackModel(str(tiny_model_dir), device="cpu", max_new_tokens=5)
    assert not any(p.requires_grad for p in model.model.parameters()) and not model.model.training
    convs = CONV + [[{"role": "user", "content": "A longer problem, so that the batch needs left padding."}]]
    first = model.generate(convs)
    assert len(first) == 2 and all(isinstance(t, str) for t in first)
    assert model.generate(convs) == first  # greedy: deterministic
    assert model.generate(convs[1:]) == first[1:]  # left padding does not change an answer


# ---- the refine episode with a feedback model ----------------------------------------------------------------


class ScriptedFeedback:
    """A FeedbackModel that records its calls."""

    def __init__(self):
        self.calls = []

    def generate(self, conversations):
        self.calls.append(conversations)
        return [f"Recheck the sum ({i})." for i in range(len(conversations))]


def _rows(n):
    return [
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"What is {i} + 1?"},
            ],
            "answer": str(i + 1),
        }
        for i in range(n)
    ]


def _prompt_ids(tokenizer, rows):
    return [
        tokenizer.apply_chat_template(
            r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for r in rows
    ]


def test_refine_with_model_feedback_masks_it_and_calls_the_model_once(tokenizer):
    feedback = ScriptedFeedback()
    episode = RefineEpisode(
        feedback_source="model",
        feedback_prompt="Review it.",
        refine_prompt="Answer again.",
        feedback_model=feedback,
    )
    rows = _rows(2)
    gen = ScriptedGenerate(tokenizer, [["It is 5.", "It is 5."], ["The answer is 2.", "The answer is 3."]])
    chat = ChatTurns(tokenizer)
    rollouts = run_episodes(episode, _prompt_ids(tokenizer, rows), gen, chat, num_generations=1, rows=rows)
    assert len(gen.calls) == 2 and len(feedback.calls) == 1  # two solver turns, one batched feedback call
    conv = feedback.calls[0][0]
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user"]  # [problem, attempt, request]
    assert (
        conv[1]["content"] == "What is 0 + 1?"
        and conv[2]["content"] == "It is 5."
        and conv[3]["content"] == "Review it."
    )
    r = rollouts[0]
    assert [(s.role, s.policy) for s in r.turns()] == [
        ("solver", "solver"),
        ("feedback", "feedback"),
        ("solver", "solver"),
    ]
    fb = r.turns("feedback")[0]
    assert not fb.trained and fb.credit is None and fb.text == "Recheck the sum (0)."
    assert (
        tokenizer.decode(fb.ids).count("Recheck the sum (0).\n\nAnswer again.") == 1
    )  # in the solver's stream
    assert gen.calls[1][2][0] == r.prompt_ids + [t for s in r.segments[:-1] for t in s.ids]  # refine sees it
    mask, pos = r.tool_mask(), 0
    for seg in r.segments:
        assert set(mask[pos : pos + len(seg.ids)]) <= {int(seg.role == "solver")}
        pos += len(seg.ids)
    assert episode.metrics(rollouts)["feedback/mean_tokens"][0] == chat.text_length("Recheck the sum (0).")


def test_refine_with_a_real_feedback_server(tokenizer, server):
    episode = RefineEpisode(
        feedback_source="model",
        feedback_prompt="Review it.",
        refine_prompt="Again.",
        feedback_model=ServerFeedbackModel(server.url, "m", timeout=5),
    )
    rows = _rows(3)
    gen = ScriptedGenerate(tokenizer, [["It is 5."] * 3, ["The answer is 1."] * 3])
    rollouts = run_episodes(episode, _prompt_ids(tokenizer, rows), gen, ChatTurns(tokenizer), 1, rows=rows)
    assert len(server.requests) == 3
    assert all(r.turns("feedback")[0].text == "Hint: Review it." for r in rollouts)


def test_transcripts_mark_which_policy_wrote_each_turn(tokenizer):
    episode = RefineEpisode(
        feedback_source="model",
        feedback_prompt="Review it.",
        refine_prompt="Again.",
        feedback_model=ScriptedFeedback(),
    )
    rows = _rows(2)
    gen = ScriptedGenerate(tokenizer, [["It is 5."] * 2, ["The answer is 1."] * 2])
    rollouts = run_episodes(episode, _prompt_ids(tokenizer, rows), gen, ChatTurns(tokenizer), 1, rows=rows)
    width = max(len(r.completion_ids()) for r in rollouts)
    rewards = {
        "solve": torch.tensor([0.0, 1.0]),
        "refine": torch.tensor([1.0, 1.0]),
        "feedback": torch.tensor([1.0, 1.0]),
    }
    records = episode_records(
        rows, rollouts, rewards, torch.zeros(2, width), first_index=0, num_generations=1
    )
    assert [t["policy"] for t in records[0]["turns"]] == ["solver", "feedback", "solver"]
    assert json.loads(json.dumps(records[0]))["turns"][1]["trained"] is False


# ---- configuration -------------------------------------------------------------------------------------------


def _config(**fields):
    return MTGRPOConfig(output_dir="/tmp/unused", use_cpu=True, report_to=[], **fields)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"feedback_source": "model"}, "feedback_source=model needs feedback_model_name_or_path"),
        (
            {"feedback_source": "model", "feedback_model_name_or_path": "m", "train_feedback_model": True},
            "train_feedback_model=true needs feedback_temperature > 0",
        ),
        (
            {"feedback_source": "model", "feedback_model_name_or_path": "m", "train_feedback": True},
            "train_feedback: false, or feedback_source: self",
        ),
        ({"feedback_model_name_or_path": "m"}, "Set feedback_source: model"),
        (
            {
                "feedback_source": "model",
                "feedback_model_name_or_path": "m",
                "feedback_server_url": "localhost:8001",
            },
            "must be an http:// or https:// URL",
        ),
        (
            {"feedback_source": "model", "feedback_model_name_or_path": "m", "feedback_retries": -1},
            "feedback_retries",
        ),
        (
            {"feedback_source": "model", "feedback_model_name_or_path": "m", "feedback_timeout": 0},
            "feedback_timeout",
        ),
        ({"episode": "plan", "feedback_source": "template"}, "episode=plan needs a plan writer"),
    ],
)
def test_bad_feedback_model_config_names_the_field_and_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        _config(**fields)


def test_model_feedback_config_builds_a_lazy_episode():
    from mtgrpo.episodes import build_episode

    args = _config(
        feedback_source="model",
        feedback_model_name_or_path="does/not-exist",
        feedback_server_url="http://127.0.0.1:1",
    )
    episode = build_episode(args)  # nothing is loaded or contacted until the first feedback turn
    assert episode.feedback_source == "model" and episode.num_generation_turns == 2


# ---- a real training step ------------------------------------------------------------------------------------


def math_answer_correct(completions, answer, **kwargs):
    return [float(a in c[0]["content"]) for c, a in zip(completions, answer, strict=False)]


def letter_e_reward(completions, **kwargs):
    return [min(c[0]["content"].count("e"), 5) / 5 for c in completions]


def test_one_training_step_with_an_in_process_frozen_feedback_model(tiny_model_dir, tmp_path):
    from mtgrpo import MultiTurnGRPOTrainer

    args = MTGRPOConfig(
        output_dir=str(tmp_path),
        **TINY_RUN,
        episode_log_steps=1,
        feedback_source="model",
        feedback_model_name_or_path=str(tiny_model_dir),
        feedback_max_new_tokens=4,
    )
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)}
            for i in range(8)
        ]
    )
    trainer = MultiTurnGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[letter_e_reward, math_answer_correct],
        args=args,
        train_dataset=dataset,
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    backend = trainer.episode.feedback_model._backend
    assert isinstance(backend, TransformersFeedbackModel)
    assert backend.model is not trainer.model
    # The feedback model is a separate, frozen copy: the policy moved, the feedback model did not.
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in backend.model.state_dict().items())
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"feedback/improvement", "feedback/mean_tokens"} <= logged
    entry = next(e for e in trainer.state.log_history if "feedback/improvement" in e)
    assert entry["feedback/improvement"] == entry["self_correction/incorrect_to_correct"]  # right after wrong
    record = json.loads((tmp_path / "episodes" / "step_000000.jsonl").read_text().splitlines()[0])
    assert [t["policy"] for t in record["turns"]] == ["solver", "feedback", "solver"]


# ---- issue 21, item 14: a feedback turn stops at the feedback template's end-of-turn id -----------------------------


def _base_eos_model(tiny_feedback_model_dir, tmp_path):
    """The tiny feedback model with a base model's EOS (<|endoftext|>) that is not its template's end of turn."""
    import shutil

    from transformers import AutoConfig, AutoTokenizer

    path = tmp_path / "base-eos"
    shutil.copytree(tiny_feedback_model_dir, path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    config.eos_token_id = tok.eos_token_id
    config.save_pretrained(path)
    (path / "generation_config.json").unlink(missing_ok=True)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end != tok.eos_token_id
    return path, tok, end


def test_in_process_feedback_stops_at_the_end_of_turn_when_eos_differs(tiny_feedback_model_dir, tmp_path):
    from mtgrpo.feedback.model import TransformersFeedbackModel

    path, tok, end = _base_eos_model(tiny_feedback_model_dir, tmp_path)
    model = TransformersFeedbackModel(str(path), device="cpu", max_new_tokens=8)
    assert end in model.stops
    header = tok("<|im_start|>system\nYou", add_special_tokens=False)["input_ids"]
    reply = tok("The answer is 19.", add_special_tokens=False)["input_ids"]
    calls = []

    def generate(input_ids, attention_mask=None, **kwargs):  # what a model runs on to without the stop
        calls.append(kwargs)
        tail = torch.tensor([reply + [end] + header] * input_ids.size(0))
        return torch.cat([input_ids, tail], dim=1)

    model.model.generate = generate
    (sample,) = model.sample([[{"role": "user", "content": "What is 12 + 7?"}]])
    assert end in calls[0]["eos_token_id"]  # generation itself stops there
    assert sample.completion_ids == reply + [end] and sample.text == "The answer is 19."


def test_feedback_server_requests_carry_the_end_of_turn_stop(tiny_feedback_model_dir, tmp_path):
    from types import SimpleNamespace

    from mtgrpo.feedback.model import TransformersFeedbackModel
    from mtgrpo.feedback.training import FeedbackPolicy

    path, tok, end = _base_eos_model(tiny_feedback_model_dir, tmp_path)
    backend = TransformersFeedbackModel(str(path), device="cpu", max_new_tokens=8)
    header = tok("<|im_start|>system\nYou", add_special_tokens=False)["input_ids"]
    reply = tok("The answer is 19.", add_special_tokens=False)["input_ids"]
    requests = []

    class Client:  # TRL's VLLMClient.generate, as a vLLM server without the stop answers
        def generate(self, prompts, **kwargs):
            requests.append(kwargs)
            return {"completion_ids": [reply + [end] + header for _ in prompts]}

    policy = FeedbackPolicy.__new__(FeedbackPolicy)
    policy.backend, policy.client = backend, Client()
    policy.args = SimpleNamespace(feedback_temperature=1.0, feedback_max_new_tokens=8, feedback_server_url="http://x")
    (sample,) = policy.sample([[{"role": "user", "content": "What is 12 + 7?"}]])
    assert end in requests[0]["generation_kwargs"]["stop_token_ids"]
    assert sample.completion_ids == reply + [end] and "system" not in sample.text
