"""`router.encoder: onnx-int8`: the packaged int8 ONNX encoder gives the fp32 vectors and decisions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from slm_router.policies import Policy
from slm_router.router.core.embedder import Embedder
from slm_router.router.errors import ModelLoadError
from slm_router.router.runnable import Router
from tests.conftest import policy_with

SENTENCES = [
    "Order 4521 was charged twice, please refund me",
    "Translate 'good morning' into Portuguese",
    "I am really disappointed with the delivery",
    "Send the invoice to anna@example.com before Friday",
    "what is the weather like in Lisbon tomorrow",
    "a",
    "The quarterly report, which the board asked for after the March meeting, is late again " * 8,
]

# Measured on 310 CLINC150 val texts: lowest cosine 0.9969 (mean 0.9995); this leaves margin.
MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def int8() -> Iterator[Embedder]:
    embedder = Embedder(encoder="onnx-int8", micro_batch=(8, 0.01))
    yield embedder
    embedder.close()


def test_int8_vectors_match_fp32(int8: Embedder) -> None:
    fp32, quantised = Embedder(encoder="torch").encode(SENTENCES), int8.encode(SENTENCES)
    assert quantised.shape == fp32.shape == (len(SENTENCES), 384) and quantised.dtype == np.float32
    assert np.allclose(np.linalg.norm(quantised, axis=1), 1.0, atol=1e-5)
    assert (fp32 * quantised).sum(axis=1).min() > MIN_COSINE
    assert not np.allclose(fp32, quantised, atol=1e-6)  # two encoders, not one twice
    assert int8.dimension == 384 and "onnx-int8" in int8.name


def test_batched_single_and_cached_int8_vectors_agree(int8: Embedder) -> None:
    """Length-sorted batches, the micro-batcher and the disk cache all give the same vector per text."""
    batched = int8.encode(SENTENCES)
    singles = np.stack([int8.encode_one(text) for text in SENTENCES])
    assert np.allclose(batched, singles, atol=1e-4)
    assert np.allclose(int8.encode_cached(SENTENCES, "test"), batched, atol=1e-6)
    assert np.allclose(int8.encode_cached(SENTENCES, "test"), batched, atol=1e-6)


def test_cache_keys_on_the_backend(int8: Embedder) -> None:
    """fp32 and int8 vectors of the same texts are cached apart: one never reads the other's."""
    texts = SENTENCES[:3]
    quantised = int8.encode_cached(texts, "backend")
    torch_encoder = Embedder(encoder="torch")
    fp32 = torch_encoder.encode_cached(texts, "backend")
    assert np.allclose(fp32, torch_encoder.encode(texts), atol=1e-6)
    assert not np.allclose(fp32, quantised, atol=1e-6)


def test_int8_router_decides_like_fp32(router: Router, default_policy: Policy) -> None:
    """The default (`auto`) runs int8 for the packaged model; `torch` is the fp32 reference."""
    assert "onnx-int8" in router.embedder.name
    policy = policy_with(default_policy, **{"router.encoder": "torch"})
    fp32_router = Router(policy, pool=router.pool)
    try:
        assert "onnx-int8" not in fp32_router.embedder.name
        messages = [*SENTENCES[:4], "My package never arrived and nobody answers my emails"]
        fp32 = [r.decision for r in fp32_router.decide_many(messages)]
        quantised = [r.decision for r in router.decide_many(messages)]
        assert [(d.action, d.route) for d in quantised] == [(d.action, d.route) for d in fp32]
    finally:
        fp32_router.close()


def test_auto_runs_int8_only_where_an_int8_export_is_known(default_policy: Policy, tmp_path: Path) -> None:
    assert default_policy.router.runs_on() == "onnx-int8"  # the packaged model ships one
    custom = policy_with(default_policy, **{"router.embedder": str(tmp_path)})
    assert custom.router.runs_on() == "torch"  # another model: fp32 unless its export is given
    exported = policy_with(custom, **{"router.encoder_path": str(tmp_path / "model.onnx")})
    assert exported.router.runs_on() == "onnx-int8"
    assert policy_with(default_policy, **{"router.encoder": "torch"}).router.runs_on() == "torch"


def test_bad_encoder_path_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"router\.encoder_path .* is not a file"):
        Embedder(encoder="onnx-int8", encoder_path=tmp_path / "missing.onnx").encode_one("hello")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"cannot load router\.encoder_path"):
        Embedder(encoder="onnx-int8", encoder_path=garbage).encode(["hello"])


def test_packaged_int8_with_another_embedder_is_refused(tmp_path: Path) -> None:
    """The packaged int8 file is all-MiniLM-L6-v2: it cannot stand in for another router.embedder."""
    with pytest.raises(ModelLoadError, match=r"set router\.encoder_path"):
        Embedder(tmp_path, encoder="onnx-int8")


def test_unknown_encoder_is_a_policy_error(default_policy: Policy) -> None:
    with pytest.raises(ValidationError) as info:
        policy_with(default_policy, **{"router.encoder": "int4"})
    message = str(info.value)
    assert "router.encoder" in message and "'auto'" in message and "'onnx-int8'" in message
