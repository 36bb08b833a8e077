"""The shared encoder: normalised vectors, and micro-batched single calls equal to unbatched ones."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from slm_router.router.core.embedder import Embedder
from slm_router.router.errors import ModelLoadError
from slm_router.router.runnable import Router

TEXTS = [f"Order {i} was charged twice, please refund me" for i in range(12)]


def test_vectors_are_unit_length(router: Router) -> None:
    vectors = router.embedder.encode(TEXTS[:3])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


class _Counting(Embedder):
    """The real encoder, counting forward passes."""

    calls = 0

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        return super().encode(texts, show_progress)


def test_concurrent_single_calls_are_batched_and_correct(router: Router) -> None:
    batched = _Counting(router.embedder.model_ref, micro_batch=(8, 0.05))
    try:
        with ThreadPoolExecutor(8) as pool:
            vectors = list(pool.map(batched.encode_one, TEXTS))
    finally:
        batched.close()
    assert batched.calls < len(TEXTS)
    expected = batched.encode(TEXTS)  # the same encoder (torch), unbatched
    assert np.allclose(np.stack(vectors), expected, atol=1e-5)


def test_bad_model_path_is_a_load_error(tmp_path: object) -> None:
    with pytest.raises(ModelLoadError, match="cannot load embedder"):
        Embedder(str(tmp_path), micro_batch=(4, 0.0)).encode_one("hello")
