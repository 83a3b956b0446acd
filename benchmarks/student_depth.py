"""Which teacher layers a shallower student starts from: the contiguous run whose input and
output hidden states are most alike left out (edgedistill's default with calibration text)
against layers spread evenly, first and last kept in both.

    .venv/bin/python benchmarks/student_depth.py [--layers 11] [--steps 40]

For SmolLM2-135M-Instruct (benchmarks/smollm2_folder.py, or --teacher DIR): both students are
built from the same calibration text (standard-library source and general_en chat records,
not the held-out text), judged on held-out Wikipedia-style text (edgedistill/corpora/
wiki_en.txt: loss, KL to the teacher, top-1 agreement), then each distilled for --steps steps
by ``edgedistill distill --student`` on the real_teacher.py mix and judged again. Writes
benchmarks/results/student_depth.json; the last line printed is its path.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from real_teacher import CORPORA, heldout, make_mix, run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--heldout-blocks", type=int, default=32)
    ap.add_argument("--work", default="/tmp/edgedistill-bench/student-depth")
    ap.add_argument("--out", default=str(ROOT / "results" / "student_depth.json"))
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import edgedistill.student as S
    from edgedistill.arch import shape_from_config
    from edgedistill.data import pack, stdlib_source

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = Path(args.teacher) if args.teacher else Path(subprocess.run(
        [sys.executable, str(ROOT / "smollm2_folder.py")], check=True, capture_output=True,
        text=True).stdout.strip().splitlines()[-1])
    tok = AutoTokenizer.from_pretrained(teacher)
    chats = [json.loads(x) for x in (CORPORA / "general_en.jsonl").read_text().splitlines()]
    text = stdlib_source(200_000) + "\n".join(r["prompt"] + "\n" + r["text"]
                                               for r in chats[:200])
    blocks = pack([text], tok, 256)[:16]
    calib = [{"input_ids": blocks[i:i + 4]} for i in range(0, 16, 4)]
    cfg = json.loads((teacher / "config.json").read_text()) | {"num_hidden_layers": args.layers}
    even = S.select_layers
    inits = {}
    for name in ("similar", "even"):
        if name == "even":  # the same build, depth from the even spread
            S.select_layers = lambda n_t, n_s, distance=None: even(n_t, n_s)
        inits[name] = S.build_student(teacher, cfg, work / f"init-{name}", calibration=calib)
        S.select_layers = even
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    imp = S.importance(model, shape_from_config(model.config.to_dict()), calib)
    del model
    n_t = imp.distance.shape[0] - 1
    layers = {"similar": S.select_layers(n_t, args.layers, imp.distance),
              "even": S.select_layers(n_t, args.layers)}
    mix = make_mix(work, None)
    trained, seconds = {}, {}
    for name, init in inits.items():
        out = work / f"run-{name}"
        seconds[name], _ = run([sys.executable, "-m", "edgedistill", "distill", "--teacher",
                                str(teacher), "--student", str(init), "--target", "laptop",
                                "--data", str(mix), "--steps", str(args.steps), "--eval-every",
                                "0", "--save-every", "0", "--out", str(out)],
                               work / f"distill-{name}.log")
        trained[name] = out / "student"
    judged = heldout({**{f"init_{k}": v for k, v in inits.items()},
                      **{f"distilled_{k}": v for k, v in trained.items()}},
                     teacher, args.heldout_blocks)
    doc = {"benchmark": "student_depth", "date": time.strftime("%Y-%m-%d"),
           "teacher": str(teacher), "student_layers": args.layers, "teacher_layers": n_t,
           "layers": layers, "steps": args.steps, "distill_seconds": seconds,
           "calibration": "16 blocks of 256 tokens: standard-library source and 200 general_en "
                          "chat records", "heldout": judged}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    for k, v in judged["models"].items():
        print(f"{k:18s} loss {v['loss']:.3f}  KL {v['kl_to_teacher']:.3f}  "
              f"top-1 {v['top1_agreement']:.3f}")
    print(args.out)


if __name__ == "__main__":
    main()
