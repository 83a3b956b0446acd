"""The documentation's commands run, and its links and Python examples point at real things.

Every command in a ``bash`` (or ``sh``/``shell``/``console``) fenced block of README.md and
docs/*.md is extracted (and, in other blocks, any line that starts like a command). An
``edgedistill ...`` command is run for real, at a smoke size, in a subprocess (``python -m
edgedistill``), from a sandbox folder in tmp_path that holds what the docs' placeholders name:
``./my-llama`` (a tiny trained llama, conftest's trained_llama recipe), ``corpus.txt``,
``prompts.jsonl`` (prompts only), ``my-device.yaml`` and ``my-profiles/``; the run folders
the docs make (``runs/...``) are made there. Every other command is listed in LEFT_OUT with
the reason it does not run here. A command added to the docs that is neither run nor listed
fails ``test_every_documented_command_is_run_or_left_out``.

Smoke size: ``--steps 2 --batch-size 2 --seq-len 32`` for training, ``--new-tokens 4
--repeats 1`` for benchmarks, one quantization (``--quant``) per export, and, where no
``--teacher`` is named (the bundled 22.7M-parameter MiniLM), a tiny BERT sentence embedder
instead. The slow test runs them all in about 2.5 minutes on 2 shared cores.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Commands that are not run here, by prefix (a key ending in "$" matches only that exact
# command), with the reason.
LEFT_OUT = {
    "make setup": "creates .venv and installs into it (pip, and a 3-minute llama-cpp-python "
                  "build); these tests run inside that .venv",
    "make demo": "the main job at full size (about 7.5 minutes on 2 cores); its command, "
                 "'edgedistill export --target laptop --out runs/demo', runs here at smoke size",
    "make test": "the whole test suite, this file included (make test and make test-fast)",
    "edgedistill calibrate": "measures for --budget-s seconds by design (at least 60, default "
                             "600); tests/test_calibrate.py runs a real calibration",
    "edgedistill plan --teacher Qwen/": "a hub id: needs the network, which tests do not use",
    "edgedistill bench runs/r1 --target consumer-gpu$":
        "without a GPU it measures the same CPU rows as 'edgedistill bench runs/r1 --target "
        "laptop' (run here); its GPU rows need a CUDA GPU (tests/test_gpu.py)",
    "pip install qai-hub": "installs the optional Qualcomm AI Hub client and stores an account's "
                           "API token (network)",
    "edgedistill bench runs/npu --target phone-npu --qai-hub":
        "profiles on a real phone through Qualcomm AI Hub (an account's token and the network); "
        "tests/test_qaihub.py and test_npu.py drive the same path with responses written from "
        "the client's documented schemas",
    "accelerate launch": "two training processes; tests/test_distill.py runs the same "
                         "launch on 2 CPU processes (gloo)",
    ".venv/bin/python benchmarks/": "benchmark scripts record figures over minutes to hours "
                                    "(they train models and time every artifact); "
                                    "gpu_runtimes.py and llama_cuda_probe.py need a CUDA GPU",
    "benchmarks/offline_gpu_bundle.sh": "downloads wheels and llama-cpp-python's source "
                                        "(network)",
    "benchmarks/offline_gpu_run.sh": "for a GPU machine: builds llama.cpp with CUDA and runs "
                                     "the GPU benchmark",
    "benchmarks/offline_gpu_train.sh": "for a GPU machine: the distillation benchmarks "
                                       "(minutes of GPU training)",
    "pip install trl": "installs TRL, only for benchmarks/train_throughput.py's comparison "
                       "(network)",
}


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


# Documented exit codes other than 0: {command prefix: (expected code here, why)}.
EXPECTED_EXIT = {
    "edgedistill bench runs/r1 --target consumer-gpu --runtime torch-cuda":
        (lambda: 0 if _cuda() else 2, "a GPU runtime that cannot run here is exit 2"),
    "edgedistill export --student runs/demo/student --target phone-npu":
        (lambda: 0 if importlib.util.find_spec("onnxruntime_qnn") else 3,
         "without onnxruntime-qnn the NPU graphs are reported failed: exit 3"),
}

TRAIN_SMOKE = {"--steps": "2", "--batch-size": "2", "--seq-len": "32"}
BENCH_SMOKE = {"--new-tokens": "4", "--repeats": "1"}
# Offline, and one intra-op thread for torch: tiny models on 2 shared cores run several times
# faster so (the runtimes' own thread counts, which bench reports, are set explicitly).
SMOKE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
COMMAND_START = re.compile(r"^(\$ |edgedistill |make |python3? |\.venv/bin/|accelerate |"
                           r"benchmarks/\S+\.(sh|py)\b)")
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass
class Command:
    text: str               # the command without its comment, words joined by one space
    env: dict
    argv: list              # words after the environment assignments
    where: list             # "README.md:40" for each place it appears

    @property
    def runnable(self) -> bool:
        return self.argv[0] == "edgedistill" and left_out(self.text) is None


def left_out(text: str) -> str | None:
    for key, reason in LEFT_OUT.items():
        if (text == key[:-1]) if key.endswith("$") else text.startswith(key):
            return reason
    return None


def _blocks(page: Path):
    """(language, first line number, lines) of each fenced block."""
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(```|~~~)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start, body = m.group(1), m.group(2).lower(), i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        yield lang, start, body


def extract() -> list[Command]:
    found: dict[str, Command] = {}
    for page in PAGES:
        rel = page.relative_to(ROOT).as_posix()
        for lang, start, body in _blocks(page):
            if lang == "python":
                continue
            shell = lang in SHELL_LANGS
            n = 0
            while n < len(body):
                line, at = body[n], start + n
                while line.rstrip().endswith("\\") and n + 1 < len(body):
                    n += 1
                    line = line.rstrip()[:-1] + " " + body[n].strip()
                n += 1
                line = line.strip()
                if line.startswith("$ "):
                    line = line[2:]
                elif not shell and not COMMAND_START.match(line):
                    continue  # output shown in a text block
                words = shlex.split(line, comments=True)
                if not words:
                    continue
                env = {}
                while words and ENV.match(words[0]):
                    k, v = words.pop(0).split("=", 1)
                    env[k] = v
                text = " ".join(f"{k}={v}" for k, v in env.items())
                text = (text + " " if text else "") + " ".join(words)
                cmd = found.setdefault(text, Command(text, env, words, []))
                cmd.where.append(f"{rel}:{at}")
    return list(found.values())


COMMANDS = extract()


def _opt(argv: list, flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _set(argv: list, flag: str, value: str) -> None:
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


def _phase(cmd: Command) -> int:
    """Run order: what makes a run folder before what reads it."""
    verb, args = cmd.argv[1], cmd.argv[2:]
    if verb == "export" and "--student" not in args:
        return 0
    if verb == "distill":
        return 2 if "--resume" in args else 1
    return {"export": 3, "bench": 4, "report": 5}.get(verb, 6)


RUNNABLE = sorted((c for c in COMMANDS if c.runnable), key=_phase)


def producers(cmd: Command) -> list[Command]:
    """The documented commands that make the run folders ``cmd`` reads (run first, so that
    each case also runs alone, e.g. with -k)."""
    out, runs = _opt(cmd.argv, "--out"), []
    for word in cmd.argv[2:]:
        m = re.match(r"^runs/[^/]+", word)
        if m and (word != out or "--resume" in cmd.argv) and m.group(0) not in runs:
            runs.append(m.group(0))
    made = []
    for run in runs:
        maker = [p for p in RUNNABLE if _opt(p.argv, "--out") == run
                 and "--resume" not in p.argv and p is not cmd]
        assert maker, f"{cmd.where[0]}: no documented command makes {run} ({cmd.text})"
        made.append(maker[0])
    return made


# -- the fast checks ------------------------------------------------------------------------

def test_every_documented_command_is_run_or_left_out():
    assert len(RUNNABLE) >= 10, [c.text for c in COMMANDS]
    unknown = [f"{c.where[0]}: {c.text}" for c in COMMANDS
               if c.argv[0] != "edgedistill" and left_out(c.text) is None]
    assert not unknown, ("commands in the docs that this file neither runs nor lists in "
                         f"LEFT_OUT: {unknown}")
    unused = [k for k in LEFT_OUT
              if not any(left_out(c.text) == LEFT_OUT[k] and
                         ((c.text == k[:-1]) if k.endswith("$") else c.text.startswith(k))
                         for c in COMMANDS)]
    assert not unused, f"LEFT_OUT entries that no documented command matches: {unused}"
    for c in RUNNABLE:
        out = _opt(c.argv, "--out")
        assert out is None or not Path(out).is_absolute(), f"{c.where[0]}: absolute --out"
        assert not any(w.startswith(("/", "~")) for w in c.argv[1:]), \
            f"{c.where[0]}: an absolute path would leave the sandbox: {c.text}"
        producers(c)  # every run folder read is made by a documented command
    # each expected exit code names a documented command
    for key in EXPECTED_EXIT:
        assert any(c.text.startswith(key) for c in RUNNABLE), key


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, flags=re.M)}


def _links(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", lambda m: "x" * len(m.group(0)) if "](" not in m.group(0)
                  else m.group(0), text)
    for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        yield m.group(1)


def test_relative_links_point_at_files_that_exist():
    bad = []
    for page in PAGES:
        rel = page.relative_to(ROOT).as_posix()
        for link in _links(page):
            if re.match(r"^[a-z]+:", link):
                continue  # http(s), mailto
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                bad.append(f"{rel}: {link} (no such file)")
                continue
            if anchor and target.suffix == ".md" and anchor not in _anchors(target):
                bad.append(f"{rel}: {link} (no heading with that anchor)")
    assert not bad, bad


def _python_blocks():
    for page in PAGES:
        for lang, start, body in _blocks(page):
            if lang == "python":
                yield f"{page.relative_to(ROOT).as_posix()}:{start}", "\n".join(body)


def _resolve(node, ns):
    """The object a Name / Attribute chain names in ``ns``, or None."""
    if isinstance(node, ast.Name):
        return ns.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, ns)
        return getattr(base, node.attr, None) if base is not None else None
    return None


def test_python_examples_import_and_call_real_api():
    """Every import in the docs' Python blocks works; every attribute of an imported module
    exists; every call of an imported function or config binds to its signature."""
    problems = []
    for where, code in _python_blocks():
        tree = ast.parse(code)
        ns: dict = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                try:
                    exec(compile(ast.Module([node], []), where, "exec"), ns)
                except ImportError as e:
                    problems.append(f"{where}: {ast.unparse(node)}: {e}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name,
                                                                           ast.Attribute)):
                base = _resolve(node.value, ns)
                if inspect.ismodule(base) and not hasattr(base, node.attr):
                    problems.append(f"{where}: {ast.unparse(node)} does not exist")
            if isinstance(node, ast.Call):
                fn = _resolve(node.func, ns)
                if fn is None or not callable(fn):
                    continue
                try:
                    inspect.signature(fn).bind(*[None] * len(node.args),
                                               **{k.arg: None for k in node.keywords if k.arg})
                except TypeError as e:
                    if node.args or node.keywords:
                        problems.append(f"{where}: {ast.unparse(node)[:80]}: {e}")
    assert not problems, problems


def _configs() -> dict:
    from edgedistill.bench import BenchConfig
    from edgedistill.calibrate import CalibrateConfig
    from edgedistill.distill import DataConfig, DistillConfig, KDConfig, TrainConfig
    from edgedistill.export import ExportConfig
    from edgedistill.pipeline import RunConfig
    from edgedistill.plan import PlanConfig
    return {c.__name__: c for c in (PlanConfig, CalibrateConfig, KDConfig, TrainConfig,
                                    DataConfig, DistillConfig, ExportConfig, BenchConfig,
                                    RunConfig)}


def _check_fields(where: str, cls, given: dict, complete: bool) -> list[str]:
    """``given``: {field: value text or ""} as the docs state them; where they list every
    field (``complete``), the values are the defaults."""
    out, real = [], {f.name: f for f in fields(cls)}
    if set(given) - set(real):
        out.append(f"{where}: {cls.__name__} has no {sorted(set(given) - set(real))}")
    if complete and set(real) - set(given):
        out.append(f"{where}: {cls.__name__} fields not listed: {sorted(set(real) - set(given))}")
    for name, text in given.items():
        f = real.get(name)
        if not complete or not text or f is None or f.default is dataclasses.MISSING:
            continue
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            continue
        if value != f.default:
            out.append(f"{where}: {cls.__name__}.{name} defaults to {f.default!r}, not {text}")
    return out


def test_documented_config_fields_and_defaults_are_real():
    """``XConfig(name=...)`` in the docs' prose names real fields; docs/api.md's signatures
    (3 fields or more) and its table list every field, with its real default."""
    configs, problems = _configs(), []
    for page in PAGES:
        rel = page.relative_to(ROOT).as_posix()
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for span in re.findall(r"`([^`]+)`", text):
            for name, args in re.findall(r"\b(\w+Config)\(([^()]*)\)", span):
                if name in configs and "=" in args:
                    given = dict((k, v.strip()) for k, v in
                                 re.findall(r"(\w+)=([^,]*)", args.replace("\n", " ")))
                    problems += _check_fields(rel, configs[name], given,
                                              rel == "docs/api.md" and len(given) >= 3)
    rows = re.findall(r"^\| `(\w+Config)` \| (.*) \|$", (ROOT / "docs" / "api.md").read_text(),
                      flags=re.M)
    assert {"KDConfig", "TrainConfig", "DataConfig", "DistillConfig"} <= {n for n, _ in rows}
    for name, cell in rows:
        given = dict(re.findall(r"`(\w+)=([^`]*)`", cell))  # `steps=None`
        given.update({k: "" for k in re.findall(r"`(\w+)`", cell)
                      if k in {f.name for f in fields(configs[name])}})  # `kd`
        problems += _check_fields("docs/api.md table", configs[name], given, True)
    assert not problems, problems


def test_architecture_md_lists_the_import_linter_layers():
    """docs/architecture.md's numbered list is pyproject.toml's layers contract, in order."""
    import tomllib

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = [" | ".join(m.strip().removeprefix("edgedistill.") for m in layer.split("|"))
              for layer in contract["contracts"][0]["layers"]]
    page = (ROOT / "docs" / "architecture.md").read_text()
    listed = re.findall(r"^\d+\. `([^`]+)`$", page, flags=re.M)
    assert listed == layers


def test_cli_md_documents_every_flag_and_no_other():
    """docs/cli.md's section of each verb names each of its flags (--json: once, for all);
    every flag the page names exists."""
    from edgedistill.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    flags = {verb: {o for a in p._actions for o in a.option_strings
                    if o.startswith("--") and o not in ("--help", "--json")}
             for verb, p in sub.choices.items()}
    page = (ROOT / "docs" / "cli.md").read_text()
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", page, flags=re.M | re.S))
    missing = {v: sorted(f - set(re.findall(r"--[\w-]+", sections.get(v, ""))))
               for v, f in flags.items()}
    assert not any(missing.values()), missing
    known = set().union(*flags.values()) | {"--json", "--version", "--help"}
    invented = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", page)) - known
    assert not invented, invented


# -- the commands, run --------------------------------------------------------------------

class Sandbox:
    def __init__(self, root: Path, tiny_bert: Path):
        self.root, self.tiny_bert, self.done = root, tiny_bert, {}

    def _smoke(self, cmd: Command) -> list[str]:
        args = list(cmd.argv[1:])
        verb = args[0]
        whole_chain = verb == "export" and "--student" not in args
        if verb == "distill" or whole_chain:
            if "--teacher" not in args:
                args += ["--teacher", str(self.tiny_bert)]
                # a speedup asked of the bundled MiniLM: the tiny stand-in's smallest
                # student reaches 1.14x, so it plans at the profile's own latency target
                if "--speedup" in args:
                    i = args.index("--speedup")
                    del args[i:i + 2]
            for flag, value in TRAIN_SMOKE.items():
                _set(args, flag, value)
        if whole_chain or verb == "bench":
            for flag, value in BENCH_SMOKE.items():
                _set(args, flag, value)
        if verb == "export":
            _set(args, "--quant", self._quant(args))
        return args

    def _quant(self, args: list) -> str:
        """One quantization the profile allows, quick to make and verify: Q8_0 for causal
        LMs (GGUF), int8 for encoders (ONNX; llama.cpp's BERT is slow here), the first QDQ
        scheme on an NPU."""
        from edgedistill import load_profile
        prof = load_profile(_opt(args, "--target") or "laptop")
        model = self.root / (_opt(args, "--student") or _opt(args, "--teacher"))
        encoder = json.loads((model / "config.json").read_text())["model_type"] == "bert"
        formats = (_opt(args, "--formats") or ",".join(prof.formats)).split(",")
        if prof.constraints.static_shapes:
            return prof.formats["onnx"][0]
        quant = "int8" if encoder or "gguf" not in formats else "q8_0"
        assert any(quant in prof.formats.get(f, []) for f in formats), (quant, prof.name)
        return quant

    def run(self, cmd: Command) -> subprocess.CompletedProcess:
        if cmd.text in self.done:
            return self.done[cmd.text]
        for dep in producers(cmd):
            r = self.run(dep)
            assert r.returncode == _expected(dep), f"{dep.text} (needed): {r.stderr[-2000:]}"
        env = {**os.environ, **SMOKE_ENV, **cmd.env}
        r = subprocess.run([sys.executable, "-m", "edgedistill", *self._smoke(cmd)],
                           cwd=self.root, env=env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=600)
        self.done[cmd.text] = r
        return r


def _expected(cmd: Command) -> int:
    for key, (code, _) in EXPECTED_EXIT.items():
        if cmd.text.startswith(key):
            return code()
    return 0


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    import torch

    from conftest import tiny_sentence_bert
    from edgedistill.data import stdlib_source
    from edgedistill.toy import make_causal_lm

    root = tmp_path_factory.mktemp("docs")
    # conftest's trained_llama, made with one torch thread: on 2 cores shared with other
    # work, two threads wait on each other (4 s here instead of 40-100 s)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_causal_lm(root / "my-llama", hidden=64, layers=2, heads=4, kv_heads=2, ffn=128,
                       vocab=320, steps=100, seq_len=64, batch=8, chars=150_000, lr=1e-2)
        tiny_bert = tiny_sentence_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")
    finally:
        torch.set_num_threads(threads)
    (root / "corpus.txt").write_text(stdlib_source(200_000))
    (root / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": f"def add_{i}(a, b):\n    "}) + "\n" for i in range(24)))
    laptop = (ROOT / "hardware_profiles" / "laptop.yaml").read_text()
    mine = laptop.replace("name: laptop", "name: my-device", 1)
    (root / "my-device.yaml").write_text(mine)
    (root / "my-profiles").mkdir()
    (root / "my-profiles" / "my-device.yaml").write_text(mine)
    return Sandbox(root, tiny_bert)


@pytest.mark.slow
@pytest.mark.parametrize("cmd", RUNNABLE,
                         ids=[f"{c.where[0]}-{c.argv[1]}" for c in RUNNABLE])
def test_documented_command_runs(sandbox, cmd):
    r = sandbox.run(cmd)
    want = _expected(cmd)
    assert r.returncode == want, (f"{cmd.where}: {cmd.text} -> exit {r.returncode}, "
                                  f"documented {want}\n{r.stderr[-3000:]}")
    if "--json" in cmd.argv and want == 0:
        json.loads(r.stdout)  # one JSON document on stdout
    if cmd.argv[1] == "export" and "--student" not in cmd.argv:
        assert (sandbox.root / _opt(cmd.argv, "--out") / "report.html").is_file()
