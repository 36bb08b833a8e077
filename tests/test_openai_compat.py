"""The OpenAI-compatible endpoint with the official `openai` client and LangChain's `ChatOpenAI`, against a
real `slm-router` service on 127.0.0.1: the packaged llama.cpp model as the fallback, or the fake
OpenAI-compatible server (tests/fake_llm.py) where a test must see what the fallback received."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from slm_router.policies import Policy
from slm_router.router.runnable import Router
from slm_router.router.service.app import create_app
from tests.conftest import policy_with, serving
from tests.fake_llm import FakeLLM

KEY = "test-key-openai"
GENERAL = "What is the best way to grow tomatoes on a balcony?"
COMPLAINT = "I am really angry, my package arrived broken and nobody answers my emails!"


def _serve(policy: Policy, router: Router) -> Any:
    """The service on its own Router, sharing the session router's models (embedder and specialists),
    loaded first."""
    router.warmup()
    service = Router(policy, pool=router.pool, embedder=router.embedder)
    return serving(create_app(service, policy.server, {KEY}))


@pytest.fixture(scope="module")
def llama_url(default_policy: Policy, router: Router) -> Iterator[str]:
    """The packaged policy: specialists and the in-process llama.cpp fallback (real models)."""
    with _serve(policy_with(default_policy, **{"fallback.max_tokens": 24}), router) as url:
        yield url


@pytest.fixture(scope="module")
def fake_url(default_policy: Policy, router: Router, _fake_llm_server: FakeLLM) -> Iterator[str]:
    """The fallback is the fake OpenAI-compatible server, so tests read what it was sent."""
    policy = policy_with(
        default_policy,
        **{
            "fallback.kind": "openai",
            "fallback.base_url": _fake_llm_server.base_url,
            "fallback.model": "fake",
            "fallback.retries": 0,
        },
    )
    with _serve(policy, router) as url:
        yield url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_completion_has_usage_real_from_the_fallback_estimated_for_a_specialist(llama_url: str) -> None:
    ai = client(llama_url)
    general = ai.chat.completions.create(model="slm-router", messages=[{"role": "user", "content": GENERAL}])
    routed = (general.model_extra or {})["slm_router"]
    assert routed["answered_by"] == "fallback" and general.choices[0].message.content
    usage = general.usage
    assert usage is not None and usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert (usage.model_extra or {})["estimated"] is False
    complaint = ai.chat.completions.create(
        model="slm-router", messages=[{"role": "user", "content": COMPLAINT}]
    )
    assert (complaint.model_extra or {})["slm_router"]["answered_by"] == "sentiment"
    assert complaint.usage is not None and (complaint.usage.model_extra or {})["estimated"] is True
    assert complaint.usage.prompt_tokens == -(-len(COMPLAINT) // 4)  # pricing.chars_per_token: 4


def test_max_tokens_limits_the_fallback_and_reports_length(llama_url: str) -> None:
    short = client(llama_url).chat.completions.create(
        model="slm-router", messages=[{"role": "user", "content": GENERAL}], max_tokens=3, temperature=0
    )
    assert short.usage is not None and short.usage.completion_tokens <= 3
    assert short.choices[0].finish_reason == "length"


def test_official_client_streams_fallback_tokens_and_usage(llama_url: str) -> None:
    ai = client(llama_url)
    chunks = list(
        ai.chat.completions.create(
            model="slm-router",
            messages=[{"role": "user", "content": GENERAL}],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 3  # token by token, not one piece
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and (finals[0].model_extra or {})["slm_router"]["answered_by"] == "fallback"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 24 and finals[0].choices[0].finish_reason == "length"
    # The stream's text is the answer the same request gets without streaming (greedy decoding).
    whole = ai.chat.completions.create(
        model="slm-router", messages=[{"role": "user", "content": GENERAL}], temperature=0
    )
    assert "".join(texts) == whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.prompt_tokens == chunks[-1].usage.prompt_tokens


def test_a_specialist_answer_streams_as_one_chunk(llama_url: str) -> None:
    chunks = list(
        client(llama_url).chat.completions.create(
            model="slm-router", messages=[{"role": "user", "content": COMPLAINT}], stream=True
        )
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(texts) == 1 and "negative" in texts[0].lower()
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models_list_and_a_forced_route(llama_url: str) -> None:
    ai = client(llama_url)
    ids = [m.id for m in ai.models.list()]
    assert ids[0] == "slm-router" and {"slm-router/sentiment", "slm-router/translate"} <= set(ids)
    forced = ai.chat.completions.create(
        model="slm-router/sentiment", messages=[{"role": "user", "content": "Order 12345 is late"}]
    )
    assert forced.model == "slm-router/sentiment"
    assert (forced.model_extra or {})["slm_router"]["route"] == "sentiment"


def test_the_whole_conversation_reaches_the_fallback_redacted(fake_url: str, fake_llm: FakeLLM) -> None:
    answer = client(fake_url).chat.completions.create(
        model="slm-router",
        messages=[
            {"role": "system", "content": "Answer like a pirate."},
            {"role": "user", "content": "My email is jane.doe@example.com, remember it."},
            {"role": "assistant", "content": "Noted, I will write to jane.doe@example.com."},
            {"role": "user", "content": "What should I plant on my balcony this spring?"},
        ],
    )
    assert (answer.model_extra or {})["slm_router"]["answered_by"] == "fallback"
    sent = fake_llm.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"].endswith("Answer like a pirate.")
    assert "[EMAIL_1]" in sent[1]["content"] and "[EMAIL_1]" in sent[2]["content"]
    assert "jane.doe" not in str(sent)
    assert sent[3]["content"] == "What should I plant on my balcony this spring?"
    assert answer.usage is not None and (answer.usage.model_extra or {})["estimated"] is False


def test_sampling_parameters_reach_the_fallback(fake_url: str, fake_llm: FakeLLM) -> None:
    client(fake_url).chat.completions.create(
        model="slm-router",
        messages=[{"role": "user", "content": GENERAL}],
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        stop="END",
        n=1,
        user="someone",
        seed=3,
    )
    sent = fake_llm.requests[-1]
    assert sent.get("max_completion_tokens", sent.get("max_tokens")) == 7
    assert (sent["temperature"], sent["top_p"], sent["stop"]) == (0.5, 0.9, ["END"])
    client(fake_url).chat.completions.create(
        model="slm-router", messages=[{"role": "user", "content": GENERAL}], max_completion_tokens=9
    )
    sent = fake_llm.requests[-1]
    assert sent.get("max_completion_tokens", sent.get("max_tokens")) == 9
    assert sent["temperature"] == 0.2  # the policy's, not the previous call's


def test_streamed_placeholders_are_restored_even_when_split(fake_url: str, fake_llm: FakeLLM) -> None:
    fake_llm.set_mode("ok", reply="I will write to [EMAIL_1] today, [EMAIL_1] again [not a placeholder")
    stream = client(fake_url).chat.completions.create(
        model="slm-router/other",  # the route without a specialist: the fallback answers
        messages=[{"role": "user", "content": "Can you help me? My email is jane.doe@example.com"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "I will write to jane.doe@example.com today, jane.doe@example.com again [not a placeholder"
    assert "jane.doe" not in str(fake_llm.requests[-1])
    usage = chunks[-1].usage
    assert usage is not None and (usage.model_extra or {})["estimated"] is False  # the provider's count


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"extra_body": {"top_k": 5}}, "top_k"),
    ],
)
def test_unsupported_parameters_are_a_400_naming_them(
    fake_url: str, fake_llm: FakeLLM, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(fake_url).chat.completions.create(
            model="slm-router", messages=[{"role": "user", "content": GENERAL}], **extra
        )
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and error["code"] == "unsupported_parameter"
    assert fake_llm.requests == []


def test_out_of_range_values_and_tool_messages_are_refused(fake_url: str) -> None:
    with httpx.Client(base_url=fake_url, headers={"Authorization": f"Bearer {KEY}"}) as http:

        def post(**body: Any) -> httpx.Response:
            return http.post("/v1/chat/completions", json={"model": "slm-router", **body})

        hot = post(messages=[{"role": "user", "content": "hi"}], temperature=3)
        assert hot.status_code == 422 and hot.json()["error"]["param"] == "temperature"
        picture = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
        image = post(messages=[{"role": "user", "content": [picture]}])
        assert image.status_code == 400 and image.json()["error"]["param"] == "messages[0].content[0]"
        tool = post(messages=[{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}])
        assert tool.status_code == 400 and tool.json()["error"]["param"] == "messages[1].role"
        last = post(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
        assert last.status_code == 422 and last.json()["error"]["param"] == "messages"


def test_langchain_chat_openai_invokes_and_streams(fake_url: str, fake_llm: FakeLLM) -> None:
    chat = ChatOpenAI(model="slm-router", base_url=f"{fake_url}/v1", api_key=KEY, max_retries=0)
    conversation = [SystemMessage("Be brief."), HumanMessage(GENERAL)]
    reply = chat.invoke(conversation)
    assert isinstance(reply, AIMessage) and reply.content == f"fake answer: {GENERAL}"
    assert reply.usage_metadata is not None and reply.usage_metadata["total_tokens"] > 0
    pieces = list(chat.stream(conversation))
    assert all(isinstance(p, AIMessageChunk) for p in pieces)
    assert "".join(str(p.content) for p in pieces) == f"fake answer: {GENERAL}"
    assert len([p for p in pieces if p.content]) > 3
    follow_up = chat.invoke([*conversation, reply, HumanMessage("And in winter?")])
    assert [m["role"] for m in fake_llm.requests[-1]["messages"]] == ["system", "user", "assistant", "user"]
    assert follow_up.content == "fake answer: And in winter?"


def test_a_failing_fallback_is_an_error_before_the_stream_starts(fake_url: str, fake_llm: FakeLLM) -> None:
    fake_llm.set_mode("error", status=500)
    with pytest.raises(openai.APIStatusError) as caught:
        list(
            client(fake_url).chat.completions.create(
                model="slm-router", messages=[{"role": "user", "content": GENERAL}], stream=True
            )
        )
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "fallback_unavailable"


def test_a_fallback_that_breaks_off_mid_stream_ends_with_an_error_event(
    fake_url: str, fake_llm: FakeLLM
) -> None:
    """Once chunks are sent the status is 200 and cannot change: the break arrives as an `error` event,
    which the official client raises, after the part of the answer that did arrive."""
    fake_llm.set_mode("cut")
    received: list[str] = []
    with pytest.raises(openai.APIError, match="fallback") as caught:
        for chunk in client(fake_url).chat.completions.create(
            model="slm-router/other", messages=[{"role": "user", "content": GENERAL}], stream=True
        ):
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "".join(received) and f"fake answer: {GENERAL}".startswith("".join(received))
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "fallback_unavailable"
    assert "Traceback" not in str(caught.value.body)


def test_a_rejected_request_is_an_error_not_an_empty_answer(default_policy: Policy, router: Router) -> None:
    with _serve(policy_with(default_policy, **{"fallback.enabled": False}), router) as url:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:  # a stream too: before its first chunk
                client(url).chat.completions.create(
                    model="slm-router", messages=[{"role": "user", "content": GENERAL}], stream=stream
                )
            body = caught.value.body
            assert isinstance(body, dict) and body["code"] == "request_rejected"
            assert body["details"][0]["reason_code"] == "fallback_route"
            assert "fallback disabled" in body["message"]


def test_a_spent_budget_is_a_429_saying_when_to_retry(
    default_policy: Policy, router: Router, fake_llm: FakeLLM
) -> None:
    """Every escalation over budget (max_share 0) and `when_exceeded: reject`: a question only the fallback
    could answer is a 429 `budget_exceeded`, with `Retry-After` when the window has room again."""
    policy = policy_with(
        default_policy,
        fallback=fake_llm.fallback_config(),
        **{
            "escalation.budget": {
                "max_share": 0.0,
                "min_requests": 1,
                "window_s": 300,
                "when_exceeded": "reject",
            },
            "decision_log.enabled": False,
        },
    )
    with _serve(policy, router) as url:
        assert (
            client(url)
            .chat.completions.create(model="slm-router", messages=[{"role": "user", "content": COMPLAINT}])
            .choices[0]
            .message.content
        )
        with pytest.raises(openai.RateLimitError) as caught:
            client(url).chat.completions.create(
                model="slm-router", messages=[{"role": "user", "content": GENERAL}]
            )
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "budget_exceeded"
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 300
    assert GENERAL not in str(fake_llm.requests)  # only the start-up check reached the fallback
