"""The distillation recipes against plain token-level KD, on teachers trained here.

    .venv/bin/python benchmarks/recipes.py [--only responses,on_policy,progressive,teachers]

Three small llama teachers share one tokenizer (byte-level BPE, 1024 tokens, learnt from all
three texts), each trained here on its own text:
- **code**: the first 1 M characters of Python's standard-library source;
- **prose**: the standard library's docstrings, as sentences (the held-out split kept out);
- **arithmetic**: worked two-digit additions, written out digit by digit, each ending with a
  checkable line ``Answer: N`` and the end token.

Each recipe is compared with plain single-teacher token-level KD (`--loss fkl`) into the same
planned student, with the same steps and batch (the same student tokens), judged on the same
held-out text:
- **responses + filter** against KD on the arithmetic text: the teacher answers 600
  training prompts (2 samples each at temperature 0.7; ``--keep-if 'Answer: {answer}$'``
  keeps only responses whose last line is the prompt record's checked answer); the student
  is exported to GGUF Q4_K_M (the laptop's quantization) and answers 200 held-out problems
  greedily in llama.cpp: exact-match accuracy. The same responses unfiltered are a third arm.
- **on-policy** (lambda 0.5, JSD beta 0.5) against off-policy (the same JSD) on the code text:
  held-out loss and KL to the teacher.
- **progressive** (the planner's chain, and a 2-stage chain; each stage distilled by the
  stage before, or by the original teacher; the steps split evenly, or 60% to the last
  stage) against direct, for a student at least 6x smaller than the code teacher, the same
  total steps (200 and 600): held-out loss, wall time.
- **two teachers** (code + prose, equal weights) against each single teacher, distilled on
  the union of both texts: held-out loss on held-out code, on held-out prose, and on both;
  the mixture, each file routed to its own teacher (``--route``), and the mixture through a
  top-16 cache the teachers fill in turns (``--cache-topk 16``).
- **stage drop** (``--only stage_drop``): what one pruning step costs by the share of
  parameters it removes (held-out loss right after pruning, and after a few steps of KD),
  and the whole chain with each stage's drop capped at 0.2, 1/3, 1/2 and 2/3.

- **responses with a teacher nobody here trained** (``--only smollm2_responses``):
  SmolLM2-135M-Instruct answers prompts about standard-library modules; the student learns
  its responses against plain KD on docstring prose, judged on the teacher's responses to
  held-out prompts and on held-out code.
- **on-policy with a teacher nobody here trained** (``--only smollm2_on_policy``):
  SmolLM2-135M-Instruct, distilled on standard-library code into a student of at most 40M
  parameters, on-policy (0.5) against off-policy: held-out loss on code and on docstring
  prose, a source it was not distilled on.

Writes benchmarks/results/recipes.json; every comparison is reported whichever side wins.
Measured on this machine's CPU; work files in /tmp/edgedistill-bench/recipes.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ANSWER = re.compile(r"Answer: (\d+)")


def worked_sum(a: int, b: int) -> str:
    """``Q: a+b=?`` and its digit-by-digit answer, ending ``Answer: a+b``."""
    lo = a % 10 + b % 10
    hi = a // 10 + b // 10 + lo // 10
    return (f"Q: {a}+{b}=?\nA: {a % 10}+{b % 10}={lo}, write {lo % 10} carry {lo // 10}. "
            f"{a // 10}+{b // 10}+{lo // 10}={hi}. Answer: {a + b}\n")


def arithmetic(pairs) -> str:
    return "\n".join(worked_sum(a, b) for a, b in pairs)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def held_out_loss(model_dir: Path, texts: list[str], seq_len: int = 128, blocks: int = 24):
    """Mean next-token cross-entropy of a model on ``blocks`` blocks of held-out text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok("\n\n".join(texts))["input_ids"]
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len, seq_len)][:blocks]
    x = torch.tensor(chunks)
    with torch.no_grad():
        return float(model(input_ids=x, labels=x).loss)


def accuracy_llama_cpp(gguf: Path, problems, threads: int = 2) -> float:
    """Exact-match accuracy of greedy answers in llama.cpp."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=threads, verbose=False)
    right = 0
    for a, b in problems:
        out = llm(f"Q: {a}+{b}=?\nA:", max_tokens=48, temperature=0.0, stop=["\nQ:", "\n\n"])
        m = ANSWER.search(out["choices"][0]["text"])
        right += bool(m and int(m.group(1)) == a + b)
    return right / len(problems)


def accuracy_torch(model_dir: Path, problems) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    right = 0
    for a, b in problems:
        x = torch.tensor([tok(f"Q: {a}+{b}=?\nA:")["input_ids"]])
        with torch.no_grad():
            out = model.generate(x, max_new_tokens=48, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        m = ANSWER.search(tok.decode(out[0, x.shape[1]:]))
        right += bool(m and int(m.group(1)) == a + b)
    return right / len(problems)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="on_policy,progressive,stage_drop,teachers,responses")
    ap.add_argument("--teacher-steps", type=int, default=1200)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--work", default="/tmp/edgedistill-bench/recipes")
    ap.add_argument("--smollm2", default="/tmp/edgedistill-bench/smollm2-135m",
                    help="SmolLM2-135M-Instruct as an HF folder (benchmarks/smollm2_folder.py)")
    ap.add_argument("--smollm2-steps", type=int, default=100)
    ap.add_argument("--smollm2-max-params", type=int, default=40_000_000)
    ap.add_argument("--out", default=str(ROOT / "results" / "recipes.json"))
    args = ap.parse_args()

    import shutil

    from edgedistill.data import split_holdout, stdlib_sentences, stdlib_source
    from edgedistill.distill import DataConfig, DistillConfig, KDConfig, TrainConfig, distill
    from edgedistill.plan import PlanConfig
    from edgedistill.toy import make_causal_lm

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    test_pairs, prompt_pairs, text_pairs = pairs[:200], pairs[200:800], pairs[800:]
    code = stdlib_source(1_100_000)
    code_train, code_held = code[:1_000_000], code[1_000_000:]
    prose_train, prose_held = split_holdout(list(stdlib_sentences()))
    prose_text = "\n".join(prose_train)
    # the teacher learns to end each answer with its end token; the shared tokenizer is learnt
    # from the examples joined by newlines
    tok_text = code_train[:300_000] + prose_text[:300_000] + arithmetic(text_pairs)[:200_000]
    arith_text = "<|endoftext|>".join(worked_sum(a, b) for a, b in text_pairs)
    files = {"code": code_train, "prose": prose_text, "arithmetic": arith_text}
    teachers, results = {}, {"machine": platform.processor() or platform.machine(),
                             "steps": args.steps, "teacher_steps": args.teacher_steps}
    for name, text in files.items():
        path = work / f"teacher-{name}"
        (work / f"{name}.txt").write_text(text)
        if not (path / "config.json").is_file():
            t0 = time.time()
            make_causal_lm(path, hidden=256, layers=4, heads=4, kv_heads=2, ffn=768,
                           vocab=1024, steps=args.teacher_steps, seq_len=128, batch=8,
                           lr=2e-3, text=text, chars=len(text), tokenizer_text=tok_text,
                           log=log)
            log(f"teacher {name}: {time.time() - t0:.0f}s")
        teachers[name] = path
    train = dict(batch_size=8, lr=1e-3, save_every=0)

    def run(name, teacher, data, kd=KDConfig(), max_params=None, steps=args.steps,
            student_config=None, **cfg):
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.time()
        res = distill(teacher, "laptop", data, out, DistillConfig(
            kd=kd, train=TrainConfig(steps=steps, eval_every=max(1, steps // 4), **train),
            data=cfg.pop("data_cfg", DataConfig(seq_len=128)), **cfg),
            plan_config=PlanConfig(speedup=1.0, max_params=max_params), log=log,
            student_config=student_config)
        m = res.metrics
        return res, {"val_loss": m["validation"].get("loss"), "val_kl": m["validation"].get("kl"),
                     "teacher_val_loss": m.get("teacher_val_loss"),
                     "student_params": json.loads((out / "plan.json").read_text())
                     ["student"]["params"] if (out / "plan.json").is_file() else None,
                     "seconds": round(time.time() - t0, 1), "tokens": m.get("tokens")}

    only = set(args.only.split(","))
    from edgedistill.teacher import load_teacher
    t_params = load_teacher(teachers["code"]).shape.total_params()
    third = t_params // 3
    if "on_policy" in only:
        jsd = KDConfig(loss="jsd", jsd_beta=0.5)
        _, off = run("onpolicy-off", teachers["code"], work / "code.txt", kd=jsd,
                     max_params=third)
        _, on = run("onpolicy-on", teachers["code"], work / "code.txt",
                    kd=KDConfig(loss="jsd", jsd_beta=0.5, on_policy=0.5), max_params=third)
        results["on_policy_vs_off_policy"] = {"off_policy": off, "on_policy_0.5": on}
        save(args.out, results)
        log(f"on-policy: off {off['val_loss']:.4f} on {on['val_loss']:.4f}")
    if "progressive" in only:
        sixth = t_params // 6
        prog_out = {"teacher_params": t_params,
                    "note": "val_kl is to the last stage's own teacher (the stage before, or "
                            "the original teacher with progressive_teacher original)"}
        arms = {"progressive_auto": dict(stages=0),
                "progressive_2_stages": dict(stages=2),
                "progressive_auto_original": dict(stages=0, progressive_teacher="original"),
                "progressive_auto_original_final_0.6": dict(
                    stages=0, progressive_teacher="original", final_share=0.6)}
        for steps in (args.steps, 3 * args.steps):
            _, direct = run(f"prog-direct-{steps}", teachers["code"], work / "code.txt",
                            max_params=sixth, steps=steps)
            row = {"direct": direct}
            for key, cfg in arms.items():
                res, prog = run(f"prog-{key}-{steps}", teachers["code"], work / "code.txt",
                                max_params=sixth, steps=steps, **cfg)
                keys = ("stage", "shape", "params", "drop", "steps", "validation")
                prog["stages"] = [{k: s[k] for k in keys} for s in res.metrics["stages"]]
                prog["vs_direct"] = prog["val_loss"] / direct["val_loss"] - 1
                row[key] = prog
                log(f"progressive ({steps} steps): direct {direct['val_loss']:.4f}, {key} "
                    f"({len(prog['stages'])} stages) {prog['val_loss']:.4f}")
            prog_out[f"{steps}_steps"] = row
        results["progressive_vs_direct"] = prog_out
        save(args.out, results)
    if "stage_drop" in only:
        results["stage_drop"] = stage_drop(teachers["code"], work, code_train, code_held, run,
                                           t_params, 3 * args.steps)
        save(args.out, results)
    if "teachers" in only:
        union = work / "union.txt"
        union.write_text(code_train[:500_000] + "\n\n" + prose_text[:500_000])
        split = work / "union-split"
        split.mkdir(exist_ok=True)
        (split / "code.txt").write_text(code_train[:500_000])
        (split / "prose.txt").write_text(prose_text[:500_000])
        both = [teachers["code"], teachers["prose"]]
        fig = {}
        for key, t, data, cfg in (
                ("code_teacher", teachers["code"], union, {}),
                ("prose_teacher", teachers["prose"], union, {}),
                ("both_teachers", both, union, {}),
                ("both_teachers_routed", both, split,
                 {"routes": (("code.txt", 1), ("prose.txt", 2))}),
                ("both_teachers_top16_in_turns", both, union,
                 {"data_cfg": DataConfig(seq_len=128, cache_topk=16)})):
            res, f = run(f"teachers-{key}", t, data, max_params=third, **cfg)
            f["held_out_loss"] = {
                "code": held_out_loss(res.student_dir, [code_held]),
                "prose": held_out_loss(res.student_dir, prose_held[:400]),
            }
            f["held_out_loss"]["both"] = (f["held_out_loss"]["code"]
                                          + f["held_out_loss"]["prose"]) / 2
            fig[key] = f
            log(f"teachers: {key} {f['held_out_loss']}")
        results["two_teachers_vs_one"] = fig
        save(args.out, results)
    if "responses" in only:
        from edgedistill.export import ExportConfig, export
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Q: {a}+{b}=?\nA:",
                                               "answer": a + b}) + "\n"
                                   for a, b in prompt_pairs))
        plain, plain_fig = run("resp-plain-kd", teachers["arithmetic"],
                               work / "arithmetic.txt", max_params=third,
                               data_cfg=DataConfig(seq_len=64))
        resp, resp_fig = run("resp-responses", teachers["arithmetic"], prompts,
                             max_params=third, data_cfg=DataConfig(
                                 seq_len=64, num_responses=2, gen_temperature=0.7,
                                 max_new_tokens=48, keep_if=r"Answer: {answer}$"))
        resp_fig["responses"] = json.loads((work / "resp-responses" / "distill.json")
                                           .read_text())["data"]
        raw, raw_fig = run("resp-unfiltered", teachers["arithmetic"], prompts,
                           max_params=third, data_cfg=DataConfig(
                               seq_len=64, num_responses=2, gen_temperature=0.7,
                               max_new_tokens=48))
        out = {"teacher_accuracy_torch": accuracy_torch(teachers["arithmetic"], test_pairs)}
        for key, res, fig in (("plain_kd", plain, plain_fig), ("responses", resp, resp_fig),
                              ("responses_unfiltered", raw, raw_fig)):
            exp = export(res.student_dir, "laptop", ExportConfig(formats=("gguf",),
                                                                 quants=("q4_k_m",)),
                         work / f"{key}-export")
            gguf = next(a.path for a in exp.artifacts if a.quant == "q4_k_m")
            fig["accuracy_q4_k_m_llama_cpp"] = accuracy_llama_cpp(Path(gguf), test_pairs)
            fig["accuracy_torch"] = accuracy_torch(res.student_dir, test_pairs)
            out[key] = fig
            log(f"responses: {key} accuracy {fig['accuracy_q4_k_m_llama_cpp']:.3f}")
        out["test_problems"] = len(test_pairs)
        results["responses_vs_plain_kd"] = out
        save(args.out, results)
    if "smollm2_on_policy" in only:
        smol = Path(args.smollm2)
        if not (smol / "config.json").is_file():
            raise SystemExit(f"{smol} holds no model: run benchmarks/smollm2_folder.py first")
        data = work / "code-smol.txt"
        data.write_text(code_train[:400_000])
        fig = {"teacher": "SmolLM2-135M-Instruct (dequantized Q4_1, benchmarks/smollm2_folder.py)",
               "teacher_held_out_loss": {"code": held_out_loss(smol, [code_held]),
                                         "prose": held_out_loss(smol, prose_held[:400])},
               "steps": args.smollm2_steps}
        for key, kd in (("off_policy", KDConfig(loss="jsd", jsd_beta=0.5)),
                        ("on_policy_0.5", KDConfig(loss="jsd", jsd_beta=0.5, on_policy=0.5))):
            res, f = run(f"smol-{key}", smol, data, kd=kd, max_params=args.smollm2_max_params,
                         steps=args.smollm2_steps, data_cfg=DataConfig(seq_len=128))
            f["held_out_loss"] = {"code": held_out_loss(res.student_dir, [code_held]),
                                  "prose (another source)": held_out_loss(res.student_dir,
                                                                          prose_held[:400])}
            fig[key] = f
            log(f"smollm2 {key}: {f['held_out_loss']}")
        results["smollm2_on_policy_vs_off_policy"] = fig
        save(args.out, results)
    if "smollm2_responses" in only:
        results["smollm2_responses_vs_plain_kd"] = smollm2_responses(
            Path(args.smollm2), work, run, prose_text, code_held, args.smollm2_steps,
            args.smollm2_max_params)
        save(args.out, results)
    save(args.out, results)
    print(json.dumps(results, indent=2))
    return 0


TASKS = ("Explain in two sentences what the Python module {m} is for.",
         "Name one common use of the Python module {m}, in one sentence.")


def response_loss(model_dir: Path, tok, rows: list[tuple[list, list]]) -> float:
    """Mean cross-entropy of a model on response tokens only (prompt tokens masked):
    ``rows`` of (prompt ids, response ids)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for p, r in rows:
            x = torch.tensor([p + r])
            logits = model(input_ids=x).logits[0, len(p) - 1:-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(r),
                                                             reduction="sum"))
            n += len(r)
    return total / max(n, 1)


def smollm2_responses(smol: Path, work: Path, run, prose_text: str, code_held: str,
                      steps: int, max_params: int) -> dict:
    """Responses with a teacher nobody here trained: SmolLM2-135M-Instruct answers prompts
    about standard-library modules (its chat template, greedy, up to 64 tokens); the student
    learns its responses (prompt tokens masked), against plain token-level KD on docstring
    prose, the same steps. Judged on the teacher's greedy responses to held-out prompts
    (response tokens only) and on held-out standard-library code, a source neither arm
    trained on."""
    import sys as _sys

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgedistill.data import is_holdout
    from edgedistill.distill import DataConfig

    if not (smol / "config.json").is_file():
        raise SystemExit(f"{smol} holds no model: run benchmarks/smollm2_folder.py first")
    mods = sorted(m for m in _sys.stdlib_module_names if not m.startswith("_"))
    held_mods = [m for m in mods if is_holdout(m, 0.15)][:24]
    train_mods = [m for m in mods if m not in held_mods]
    prompts = work / "smol-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user",
                                                         "content": t.format(m=m)}]}) + "\n"
                               for m in train_mods for t in TASKS))
    tok = AutoTokenizer.from_pretrained(smol)
    teacher = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.bfloat16).eval()
    rows = []
    for m in held_mods:
        ids = tok.apply_chat_template([{"role": "user", "content": TASKS[0].format(m=m)}],
                                      add_generation_prompt=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        with torch.no_grad():
            out = teacher.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False,
                                   pad_token_id=tok.eos_token_id)
        rows.append((ids, out[0, len(ids):].tolist()))
    del teacher
    teacher_loss = response_loss(smol, tok, rows)
    prose = work / "smol-prose.txt"
    prose.write_text(prose_text[:400_000])
    fig = {"teacher": "SmolLM2-135M-Instruct (dequantized Q4_1, benchmarks/smollm2_folder.py)",
           "train_prompts": len(train_mods) * len(TASKS), "held_out_prompts": len(rows),
           "steps": steps, "teacher_held_out_response_loss": teacher_loss,
           "teacher_held_out_code_loss": held_out_loss(smol, [code_held])}
    for key, data, cfg in (("plain_kd_on_prose", prose, DataConfig(seq_len=128)),
                           ("responses", prompts, DataConfig(seq_len=128, max_new_tokens=64))):
        res, f = run(f"smol-resp-{key}", smol, data, max_params=max_params, steps=steps,
                     data_cfg=cfg)
        f["held_out_response_loss"] = response_loss(res.student_dir, tok, rows)
        f["held_out_code_loss"] = held_out_loss(res.student_dir, [code_held])
        fig[key] = f
        log(f"smollm2 responses: {key} response loss {f['held_out_response_loss']:.3f}, "
            f"code {f['held_out_code_loss']:.3f}")
    return fig


def stage_drop(teacher: Path, work: Path, code_train: str, code_held: str, run, t_params: int,
               steps: int) -> dict:
    """How much one pruning step costs, by the share of parameters it removes: the code
    teacher pruned (the chain's own pruning: layer selection and activation importance) to
    the planner's candidate nearest each share, its held-out loss before any training and
    after ``steps // 6`` steps of KD; then the whole chain (original teacher, 60% of the steps
    to the last stage) to a 6x smaller student with each stage's largest drop capped at 0.2,
    1/3, 1/2 and 2/3."""
    import torch

    from edgedistill.arch import config_for_shape
    from edgedistill.plan import enumerate_candidates
    from edgedistill.profiles import load_profile
    from edgedistill.student import build_student
    from edgedistill.teacher import load_teacher
    from transformers import AutoTokenizer

    t = load_teacher(teacher)
    pool = [c for c in enumerate_candidates(t.shape, load_profile("laptop"))
            if c.total_params() < t_params]
    tok = AutoTokenizer.from_pretrained(teacher)
    ids = tok(code_train[:40_000])["input_ids"]
    calib = [{"input_ids": torch.tensor([ids[i:i + 128] for i in range(j, j + 512, 128)])}
             for j in range(0, 2048, 512)]
    out = {"teacher_held_out_loss": held_out_loss(teacher, [code_held]), "one_step": []}
    heal = max(1, steps // 6)
    for drop in (0.1, 0.2, 1 / 3, 0.5, 2 / 3, 0.85):
        shape = min(pool, key=lambda c: abs(c.total_params() / t_params - (1 - drop)))
        cfg = config_for_shape(t.config, shape)
        d = work / f"drop-{drop:.2f}"
        build_student(teacher, cfg, d, init="teacher", calibration=calib)
        _, healed = run(f"drop-{drop:.2f}-heal", teacher, work / "code.txt", steps=heal,
                        student_config=cfg)
        out["one_step"].append({
            "asked_drop": round(drop, 3), "drop": 1 - shape.total_params() / t_params,
            "shape": shape.describe(), "loss_pruned": held_out_loss(d, [code_held]),
            "loss_after_steps": healed["val_loss"], "steps": heal})
        log(f"stage drop {drop:.2f}: {out['one_step'][-1]}")
    out["chain_by_max_drop"] = {}
    for cap in (0.2, 1 / 3, 0.5, 2 / 3):
        res, fig = run(f"drop-chain-{cap:.2f}", teacher, work / "code.txt",
                       max_params=t_params // 6, steps=steps, stages=0, max_stage_drop=cap,
                       progressive_teacher="original", final_share=0.6)
        fig["stages"] = [{k: s_[k] for k in ("shape", "params", "drop", "steps")}
                         for s_ in res.metrics.get("stages", [])]
        out["chain_by_max_drop"][f"{cap:.2f}"] = fig
        log(f"chain, max drop {cap:.2f}: {fig['val_loss']:.4f} ({len(fig['stages'])} stages)")
    return out


def save(out: str, results: dict) -> None:
    """Merge ``results`` into the JSON file (each part is saved as soon as it is measured)."""
    path = Path(out)
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps(old | results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
