"""One copy of each model per process: the router's encoder, the sentiment model and the entity tagger share
MiniLM's tensors, the PII redactor reads with the extraction agent's spaCy pipeline and tagger, and none of
this changes an output."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slm_router.agents.adapted import base_encoder, base_encoder_path, merge_adapter, quantize_int8
from slm_router.agents.entity_tagger import PACKAGED_TAGGER, TokenTagger, build_network, load_tagger
from slm_router.agents.sentiment import CLASSIFIER_FILE, PACKAGED_MODEL, SentimentHead, SentimentModel

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "My order 12345 never arrived and nobody answers my emails!!",
    "thanks so much, Jane from support fixed it in minutes :)",
    "Can I change the delivery address to 10 Downing Street, London?",
    "meh. it's fine I guess",
    "Hi, I'm Jonas Weber, call me at +49 30 1234567 about the refund from Amazon Berlin.",
]


def probe() -> dict[str, Any]:
    """In a fresh process: build the default router, warm it up, let the redactor load its models, and
    report which objects and tensors the process holds."""
    import torch

    from slm_router import Router
    from slm_router.agents.extraction import ExtractionAgent

    torch.set_num_threads(1)
    router = Router.from_policy()
    router.warmup()
    assert router.fallback is not None and router.fallback.redactor is not None
    redactor = router.fallback.redactor
    redactor.redact("Hi, I'm Jane Doe, write to jane@example.com.", "en")
    gc.collect()
    objects = gc.get_objects()
    bert = [o for o in objects if type(o).__name__ == "BertModel"]
    agents = [o for o in objects if isinstance(o, ExtractionAgent)]
    pool_agents = [a for a in agents if a is not redactor.extractor]
    encoder = base_encoder()  # the process's MiniLM, which the embedder loaded through
    ptr = encoder.get_parameter("embeddings.word_embeddings.weight").data_ptr()
    out = {
        "bert_models": len(bert),
        "word_embedding_ptrs": sorted({m.embeddings.word_embeddings.weight.data_ptr() for m in bert}),
        "encoder_ptr": ptr,
        "extraction_agents": len(agents),
        "same_pipeline": all(a.nlp is redactor.extractor.nlp for a in pool_agents),
        "same_tagger": all(
            a.tagger is not None
            and redactor.extractor.tagger is not None
            and a.tagger.model is redactor.extractor.tagger.model
            for a in pool_agents
        ),
    }
    router.close()
    return out


def test_the_default_router_holds_one_copy_of_each_model() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import json, tests.test_shared_models as t; print(json.dumps(t.probe()))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["bert_models"] == 3  # the base MiniLM (the router's encoder on torch), sentiment, the tagger
    assert found["word_embedding_ptrs"] == [found["encoder_ptr"]]
    assert found["extraction_agents"] == 2  # the extraction specialist and the redactor's
    assert found["same_pipeline"] and found["same_tagger"]


def _fresh_base() -> Any:
    """MiniLM loaded on its own, as the agents loaded it before they shared the router's encoder."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(base_encoder_path()))


def _old_sentiment(int8: bool) -> SentimentModel:
    from transformers import AutoTokenizer

    encoder = merge_adapter(_fresh_base(), PACKAGED_MODEL, "sentiment")
    encoder = quantize_int8(encoder) if int8 else encoder
    tokenizer = AutoTokenizer.from_pretrained(str(base_encoder_path()))
    return SentimentModel(tokenizer, encoder, SentimentHead.load(PACKAGED_MODEL / CLASSIFIER_FILE))


@pytest.mark.parametrize("int8", [False, True])
def test_sentiment_outputs_are_those_of_an_unshared_copy(int8: bool) -> None:
    shared = SentimentModel.load(PACKAGED_MODEL, int8=int8)
    assert np.array_equal(shared.probabilities(TEXTS), _old_sentiment(int8).probabilities(TEXTS))


def test_tagger_outputs_are_those_of_an_unshared_copy() -> None:
    from transformers import AutoTokenizer

    shared = load_tagger(PACKAGED_TAGGER)
    network = merge_adapter(build_network(_fresh_base(), len(shared.tags)), PACKAGED_TAGGER, "entities")
    old = TokenTagger(AutoTokenizer.from_pretrained(str(base_encoder_path())), network, shared.tags)
    for (words, probs), (old_words, old_probs) in zip(
        shared.probabilities(TEXTS), old.probabilities(TEXTS), strict=True
    ):
        assert words == old_words
        assert np.array_equal(probs, old_probs)


def test_loading_adapted_models_leaves_the_router_encoder_as_it_was() -> None:
    """The merged weights are the adapted models' own: the shared encoder still embeds as a private copy."""
    from sentence_transformers import SentenceTransformer

    from slm_router.router.core.embedder import Embedder

    SentimentModel.load(PACKAGED_MODEL)
    SentimentModel.load(PACKAGED_MODEL, int8=True)
    load_tagger(PACKAGED_TAGGER)
    private = SentenceTransformer(str(base_encoder_path()), device="cpu", local_files_only=True)
    expected = private.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert np.array_equal(Embedder().encode(TEXTS), np.asarray(expected, dtype=np.float32))
