"""Language identification with the bundled lite fastText model (no download, no network)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from slm_router.agents.langid import UNDETERMINED, detect_language


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Where is my order? I placed it last week.", "en"),
        ("I want to cancel my subscription, please.", "en"),
        ("Onde está o meu pedido?", "pt"),
        ("Eu quero cancelar meu pedido", "pt"),
        ("Wo ist meine Bestellung?", "de"),
        ("Ich möchte mein Abonnement kündigen.", "de"),
        ("¿Dónde está mi pedido?", "es"),
        ("Quiero cancelar mi suscripción.", "es"),
    ],
)
def test_detects_common_languages(text: str, expected: str) -> None:
    code, score = detect_language(text)
    assert code == expected
    assert 0.5 < score <= 1.0


@pytest.mark.parametrize("text", ["", "   ", "ok", "12345", "!!", "\n\n"])
def test_too_short_is_undetermined(text: str) -> None:
    assert detect_language(text) == (UNDETERMINED, 0.0)


def test_newlines_are_safe() -> None:
    code, score = detect_language("Meu pedido chegou quebrado.\nQuero um reembolso.\r\nObrigado.")
    assert code == "pt"
    assert 0.0 < score <= 1.0


def test_concurrent_first_use_agrees() -> None:
    texts = ["Where is my order?", "Onde está o meu pedido?", "Wo ist meine Bestellung?"] * 8
    with ThreadPoolExecutor(8) as pool:
        codes = [code for code, _ in pool.map(detect_language, texts)]
    assert codes == ["en", "pt", "de"] * 8
