"""A trained entity tagger: the packaged MiniLM with a LoRA adapter and a token classifier (BIO tags).

spaCy's small model was trained on edited news and misses most names in the short, noisy text support sees
(WNUT-17 F1 0.19). The tagger is fine-tuned on WNUT-17's social-media sentences (`slm-router train
entities`, router/ops/tagger_training.py) and ships as an adapter of about a megabyte on the encoder the
router already depends on. The encoder is uncased, so the classifier also reads a few word-shape features
(capitalised, all caps, digits...): case is the strongest cue for a name, and the uncased vocabulary cannot
see it.

Words are the tokenizer's own pre-tokens (whitespace and punctuation split), each tagged at its first
word-piece; a span runs from its first word to its last, so offsets always select text of the input. Each
span carries the lowest probability of its words' tags, and each text the probability of its whole tag
sequence (the product over words of the chosen tag's probability), which the extraction agent turns into
its confidence.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slm_router.agents.adapted import base_encoder_path, files_key, load_adapted, read_card, shared_model
from slm_router.agents.base import AgentError

if TYPE_CHECKING:
    import torch

PACKAGED_TAGGER = Path(__file__).parent / "weights" / "entity_tagger"
AGENT = "entities"
"""The name errors carry, and the `slm-router train` command that makes a tagger."""

MAX_PIECES = 254
"""Word-pieces per forward window (plus [CLS] and [SEP]); a longer text is read in several windows, cut
between words."""
MAX_WINDOWS = 8
"""Windows read per text (about 2,000 word-pieces); words past them are not tagged. A pasted log or thread
would otherwise cost seconds, and the spaCy model and the patterns still read the whole text."""

FEATURES = ("title", "upper", "lower", "mixed", "digit", "no_letter", "first", "after_at_or_hash", "shouting")
"""Word-shape features, in the order the classifier reads them (see `word_features`)."""


@dataclass(frozen=True)
class TaggedSpan:
    start: int
    end: int
    label: str
    """The tag type as trained, e.g. WNUT-17's `person`, `location`, `corporation`."""
    score: float
    """The lowest probability among the span's word tags."""


@dataclass(frozen=True)
class Tagging:
    """One text's spans and how sure the tagger is of all its words, entity or not."""

    spans: list[TaggedSpan]
    sequence_probability: float
    """Product over the tagged words of the chosen tag's probability (1.0 for a text with no words)."""
    min_word_probability: float
    """The least sure word, an entity or an O: a name the tagger half-saw lowers it."""
    words: int
    word_spans: tuple[tuple[int, int], ...] = ()
    """Character span of each tagged word."""
    entity_probability: tuple[float, ...] = ()
    """Per word, the probability that it is part of an entity of any type (1 - P(O))."""
    word_probability: tuple[float, ...] = ()
    """Per word, the probability of the tag chosen for it."""

    def support(self, start: int, end: int) -> float:
        """The highest entity probability among the words inside [start, end): how much the tagger backs
        another model's span there (0.0 when no tagged word lies inside)."""
        inside = [
            p
            for (s, e), p in zip(self.word_spans, self.entity_probability, strict=True)
            if start <= s and e <= end
        ]
        return max(inside, default=0.0)


def word_features(text: str, words: Sequence[tuple[int, int]]) -> np.ndarray:
    """(words, len(FEATURES)) 0/1 shape features of each word's original text; `shouting` marks a text
    whose letters are mostly capitals (a headline), where the case features say little."""
    letters = [c for c in text if c.isalpha()]
    shouting = len(letters) >= 8 and sum(c.isupper() for c in letters) / len(letters) > 0.7
    rows = np.zeros((len(words), len(FEATURES)), dtype=np.float32)
    for i, (start, end) in enumerate(words):
        word = text[start:end]
        alpha = [c for c in word if c.isalpha()]
        before = text[start - 1] if start > 0 else ""
        rows[i] = (
            bool(alpha) and word[0].isupper() and any(c.islower() for c in alpha[1:]),
            len(alpha) > 1 and all(c.isupper() for c in alpha),
            bool(alpha) and all(c.islower() for c in alpha),
            any(c.isupper() for c in alpha[1:]) and any(c.islower() for c in alpha),
            any(c.isdigit() for c in word),
            not alpha,
            i == 0,
            before in "@#" and before != "",
            shouting,
        )
    return rows


def encode(
    tokenizer: Any, text: str, max_pieces: int = MAX_PIECES, max_windows: int = MAX_WINDOWS
) -> tuple[list[tuple[int, int]], list[tuple[list[int], list[int]]]]:
    """The text's words as character spans, and its windows: (piece ids without [CLS]/[SEP], per piece the
    index of the word it starts or -1). Windows are cut between words; a word longer than a window is cut."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    word_ids = enc.word_ids()
    offsets = enc["offset_mapping"]
    words: list[tuple[int, int]] = []
    first_of: list[int] = []
    for piece, word in enumerate(word_ids):
        start, end = offsets[piece]
        if word is not None and (piece == 0 or word_ids[piece - 1] != word):
            words.append((start, end))
            first_of.append(len(words) - 1)
        else:
            if words:
                words[-1] = (words[-1][0], max(words[-1][1], end))
            first_of.append(-1)
    ids: list[int] = enc["input_ids"]
    windows: list[tuple[list[int], list[int]]] = []
    start = 0
    while start < len(ids) and len(windows) < max_windows:
        stop = min(start + max_pieces, len(ids))
        if stop < len(ids):
            cut = max(
                (p for p in range(start + 1, stop + 1) if p < len(ids) and first_of[p] >= 0), default=stop
            )
            stop = cut
        windows.append((ids[start:stop], first_of[start:stop]))
        start = stop
    return words, windows


class TokenTagger:
    """The network: encoder (adapter merged) -> [token vector, word-shape features] -> tag logits.

    Built as a torch module by `build_network`; this class holds it with its tokenizer and tag names.
    """

    def __init__(self, tokenizer: Any, network: torch.nn.Module, tags: list[str]) -> None:
        self.tokenizer = tokenizer
        self.network = network
        self.tags = tags

    def probabilities(self, texts: Sequence[str]) -> list[tuple[list[tuple[int, int]], np.ndarray]]:
        """Per text: its tagged words (character spans) and (words, tags) probabilities."""
        import torch

        encoded = [encode(self.tokenizer, text) for text in texts]
        windows = [(i, w) for i, (_, ws) in enumerate(encoded) for w in ws]
        out = [np.zeros((0, len(self.tags)), dtype=np.float32) for _ in texts]
        tagged_words = [0] * len(texts)
        if windows:
            feats = [word_features(text, words) for text, (words, _) in zip(texts, encoded, strict=True)]
            batch = collate(
                [
                    (ids, [feats[i][w] if w >= 0 else None for w in first], first)
                    for i, (ids, first) in windows
                ],
                self.tokenizer,
                len(FEATURES),
            )
            with torch.inference_mode():
                logits = self.network(batch["input_ids"], batch["attention_mask"], batch["features"])
                probs = torch.softmax(logits.float(), dim=-1).numpy()
            for row, (i, (_, first)) in enumerate(windows):
                picked = [p + 1 for p, w in enumerate(first) if w >= 0]
                out[i] = np.concatenate([out[i], probs[row, picked]])
                tagged_words[i] += len(picked)
        return [(words[: tagged_words[i]], out[i]) for i, (words, _) in enumerate(encoded)]

    def tag(self, texts: Sequence[str]) -> list[Tagging]:
        return [decode(words, probs, self.tags) for words, probs in self.probabilities(texts)]


def collate(
    rows: Sequence[tuple[list[int], Sequence[np.ndarray | None], Sequence[int]]],
    tokenizer: Any,
    n_features: int,
) -> dict[str, torch.Tensor]:
    """Pad windows into one batch: [CLS] ids [SEP], the attention mask, and per piece its word's features
    (zeros for [CLS], [SEP], padding and non-first pieces, which no tag is read from)."""
    import torch

    length = max(len(ids) for ids, _, _ in rows) + 2
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    features = torch.zeros((len(rows), length, n_features), dtype=torch.float32)
    for r, (ids, feats, _) in enumerate(rows):
        n = len(ids)
        input_ids[r, : n + 2] = torch.tensor([tokenizer.cls_token_id, *ids, tokenizer.sep_token_id])
        mask[r, : n + 2] = 1
        for p, f in enumerate(feats):
            if f is not None:
                features[r, p + 1] = torch.from_numpy(np.asarray(f, dtype=np.float32))
    return {"input_ids": input_ids, "attention_mask": mask, "features": features}


def decode(words: Sequence[tuple[int, int]], probs: np.ndarray, tags: Sequence[str]) -> Tagging:
    """BIO tags -> spans. An I- tag that does not continue a span of its type starts one (the usual
    lenient reading), so a confident I-person after O is not thrown away."""
    best = probs.argmax(axis=1) if len(words) else np.zeros(0, dtype=int)
    chosen = probs[np.arange(len(words)), best] if len(words) else np.zeros(0)
    spans: list[TaggedSpan] = []
    current: tuple[int, int, str, float] | None = None
    for (start, end), tag_index, p in zip(words, best, chosen, strict=True):
        tag = tags[int(tag_index)]
        prefix, _, kind = tag.partition("-")
        if current is not None and prefix == "I" and kind == current[2]:
            current = (current[0], end, kind, min(current[3], float(p)))
            continue
        if current is not None:
            spans.append(TaggedSpan(current[0], current[1], current[2], current[3]))
            current = None
        if prefix in ("B", "I"):
            current = (start, end, kind, float(p))
    if current is not None:
        spans.append(TaggedSpan(current[0], current[1], current[2], current[3]))
    log_p = float(np.log(np.clip(chosen, 1e-12, 1.0)).sum()) if len(words) else 0.0
    outside = list(tags).index("O") if "O" in tags else None
    entity = 1.0 - probs[:, outside] if outside is not None and len(words) else np.ones(len(words))
    return Tagging(
        spans=spans,
        sequence_probability=math.exp(log_p),
        min_word_probability=float(chosen.min()) if len(words) else 1.0,
        words=len(words),
        word_spans=tuple(words),
        entity_probability=tuple(round(float(p), 4) for p in entity),
        word_probability=tuple(round(float(p), 4) for p in chosen),
    )


def build_network(encoder: Any, n_tags: int, n_features: int = len(FEATURES)) -> torch.nn.Module:
    """The tagger network around `encoder` (a transformers BertModel); the adapter's target and
    `modules_to_save` names ("encoder...", "classifier") refer to its attributes."""
    import torch
    from torch import nn

    class Network(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.dropout = nn.Dropout(0.1)
            self.classifier = nn.Linear(int(encoder.config.hidden_size) + n_features, n_tags)

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor
        ) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits: torch.Tensor = self.classifier(self.dropout(torch.cat([hidden, features], dim=-1)))
            return logits

    return Network()


def load_tagger(directory: Path, base: str = "", int8: bool = False) -> TokenTagger:
    """The adapter in `directory` (its training.json names the tags) merged into the base encoder, its
    unchanged tensors shared with the router's encoder. One per process for the same files: the extraction
    agent and the PII redactor's extractor tag with the same one."""
    key = (AGENT, files_key(directory), base, int8)
    return shared_model(key, lambda: _load_tagger(directory, base, int8))


def _load_tagger(directory: Path, base: str, int8: bool) -> TokenTagger:
    from transformers import AutoTokenizer

    card = read_card(directory)
    if not card.get("tags"):
        raise AgentError(AGENT, f"no tagger at {directory} (train one: slm-router train entities)")
    tags = list(card["tags"])
    network = load_adapted(lambda encoder: build_network(encoder, len(tags)), directory, AGENT, base, int8)
    return TokenTagger(AutoTokenizer.from_pretrained(str(base_encoder_path(base))), network, tags)


class EntityTagger:
    """The tagger behind the extraction agent: loaded on first use (thread-safe), batched prediction."""

    def __init__(self, path: str | Path | None = None, base_encoder: str = "", int8: bool = False) -> None:
        self.path = Path(path) if path else PACKAGED_TAGGER
        self._base = base_encoder
        self._int8 = int8
        self._model: TokenTagger | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> TokenTagger:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = load_tagger(self.path, self._base, self._int8)
        return self._model

    @functools.cached_property
    def card(self) -> dict[str, Any]:
        """How the tagger was trained and scored, and the agent's confidence model (read once)."""
        return read_card(self.path)

    def tag(self, texts: Sequence[str]) -> list[Tagging]:
        return self.model.tag(texts) if texts else []
