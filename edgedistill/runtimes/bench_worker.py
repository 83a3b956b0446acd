"""Child process that times one artifact in one runtime.

Usage: ``python -m edgedistill.runtimes.bench_worker TASK.json``; writes ``result.json`` into the
task's workdir. Each runtime runs in its own process: a crash there is the parent's report,
not its death. Causal LMs: prefill a prompt, then greedy-decode token by token with the KV
cache; encoders: embed fixed-size batches.
"""
from __future__ import annotations

import itertools
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from edgedistill.runtimes.llama_worker import trained_context
from edgedistill.runtimes.outputs import (SENTENCE_EMBEDDING, _empty_past, onnx_causal_feeds,
                                          ort_session, spec_encoder)


def _llama_causal(task):
    import llama_cpp
    from llama_cpp import Llama

    prompt, n_new = task["prompt"], task["new_tokens"]
    gpu_layers = task.get("gpu_layers", 0)
    if gpu_layers and not llama_cpp.llama_supports_gpu_offload():
        raise RuntimeError("llama-cpp-python was built without a GPU backend")
    llm = Llama(task["model"], n_ctx=len(prompt) + n_new + 8, n_batch=min(512, len(prompt)),
                n_threads=task["threads"], n_threads_batch=task["threads"],
                n_gpu_layers=gpu_layers, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(n_vocab,))

    runs = []
    for r in range(task["repeats"] + 1):  # the first run warms up
        llm.reset()  # eval() then drops the cache past position 0
        t0 = time.perf_counter()
        llm.eval(prompt)
        nxt = int(last_logits().argmax())
        prefill = time.perf_counter() - t0
        token_s, tokens = [], [nxt]
        for _ in range(n_new):
            t0 = time.perf_counter()
            llm.eval([nxt])
            nxt = int(last_logits().argmax())
            token_s.append(time.perf_counter() - t0)
            tokens.append(nxt)
        run = {"prefill_s": prefill, "token_s": token_s, "tokens": tokens}
        # what a llama-cpp-python user sees: Llama.generate's loop (eval, then its sampler
        # chain with the library's defaults), one yielded token after another
        gen_s, t0 = [], time.perf_counter()
        for i, _ in enumerate(llm.generate(prompt, reset=True)):
            t1 = time.perf_counter()
            if i:  # the first token comes after the prompt's prefill
                gen_s.append(t1 - t0)
            t0 = t1
            if i >= n_new:
                break
        run["generate_token_s"] = gen_s
        if r:
            runs.append(run)
    return {"runs": runs}


def _ort_session(task, spin: bool = True):
    """The task's model on its ``providers`` (default CPU); refuses a silent fallback."""

    providers = task.get("providers") or ["CPUExecutionProvider"]
    sess = ort_session(Path(task["model"]), task["threads"], providers=providers, spin=spin)
    if sess.get_providers()[0] != providers[0]:  # onnxruntime falls back without a word
        raise RuntimeError(f"onnxruntime could not start {providers[0]} (it fell back to "
                           f"{sess.get_providers()[0]}); check the CUDA and cuDNN libraries")
    return sess


def _ort_causal(task):

    sess = _ort_session(task)
    outputs = [o.name for o in sess.get_outputs()]
    prompt, n_new = task["prompt"], task["new_tokens"]
    runs = []
    for r in range(task["repeats"] + 1):
        t0 = time.perf_counter()
        res = dict(zip(outputs, sess.run(outputs, onnx_causal_feeds(sess, prompt)
                                         | _empty_past(sess, 1))))
        nxt = int(res["logits"][0, -1].argmax())
        prefill = time.perf_counter() - t0
        token_s, past, tokens = [], len(prompt), [nxt]
        for _ in range(n_new):
            t0 = time.perf_counter()
            feeds = onnx_causal_feeds(sess, [nxt], past)
            for name in outputs:
                if name.startswith("present."):
                    feeds[name.replace("present.", "past_key_values.")] = res[name]
            res = dict(zip(outputs, sess.run(outputs, feeds)))
            nxt = int(res["logits"][0, -1].argmax())
            past += 1
            token_s.append(time.perf_counter() - t0)
            tokens.append(nxt)
        if r:
            runs.append({"prefill_s": prefill, "token_s": token_s, "tokens": tokens})
    return {"runs": runs}


def _torch_causal(task):
    """torch decoding. ``device`` cpu or cuda, ``dtype`` a torch dtype name, ``mode``:
    eager (HF's dynamic cache), static (a preallocated StaticCache, the decode step run
    eagerly) or graphs (StaticCache, decode step compiled with mode reduce-overhead: CUDA
    graphs; CUDA only). The first run warms up (and compiles), and is not timed."""
    import torch
    from transformers import AutoModelForCausalLM

    device, mode = task.get("device", "cpu"), task.get("mode", "eager")
    if mode == "graphs" and not device.startswith("cuda"):
        raise RuntimeError("CUDA graphs need a CUDA device")
    torch.set_num_threads(task["threads"])
    model = AutoModelForCausalLM.from_pretrained(
        task["model"], dtype=getattr(torch, task.get("dtype", "float32"))).to(device).eval()
    prompt, n_new = torch.tensor([task["prompt"]], device=device), task["new_tokens"]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    decode = _EagerDecoder(model) if mode == "eager" else \
        _StaticDecoder(model, prompt.shape[1] + n_new + 1, mode)
    runs = []
    with torch.inference_mode():
        for r in range(task["repeats"] + 1):
            t0 = time.perf_counter()
            nxt = decode.prefill(prompt)
            tokens = [int(nxt)]  # .item(): the host has the token, so the GPU is done
            prefill = time.perf_counter() - t0
            token_s = []
            for i in range(n_new):
                t0 = time.perf_counter()
                nxt = decode.step(nxt, prompt.shape[1] + i)
                tokens.append(int(nxt))
                token_s.append(time.perf_counter() - t0)
            sync()
            if r:
                runs.append({"prefill_s": prefill, "token_s": token_s, "tokens": tokens})
            else:
                warmup_s = prefill + sum(token_s)
    out = {"runs": runs, "warmup_s": warmup_s}
    if mode == "graphs":  # did torch.compile capture CUDA graphs, or fall back without a word?
        from torch._dynamo.utils import counters

        out["cudagraph_skips"] = int(counters["inductor"].get("cudagraph_skips", 0))
        out["compiled_graphs"] = int(counters["stats"].get("unique_graphs", 0))
    return out


class _EagerDecoder:
    """Greedy decoding on HF's dynamic cache."""

    def __init__(self, model):
        self.model, self.past = model, None

    def prefill(self, prompt):
        out = self.model(input_ids=prompt, use_cache=True)
        self.past = out.past_key_values
        return out.logits[0, -1].argmax().view(1, 1)

    def step(self, token, position: int):
        out = self.model(input_ids=token, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[0, -1].argmax().view(1, 1)


class _StaticDecoder:
    """Greedy decoding on a StaticCache: fixed-address KV tensors, so that a compiled decode
    step can be captured as a CUDA graph and replayed (HF's "static cache" recipe)."""

    def __init__(self, model, max_len: int, mode: str):
        import torch
        from transformers import StaticCache

        self.model, self.torch = model, torch
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.device = next(model.parameters()).device

        def one(token, pos):
            logits = model(input_ids=token, position_ids=pos.view(1, 1), cache_position=pos,
                           past_key_values=self.cache, use_cache=True, return_dict=False)[0]
            return logits[:, -1].argmax(-1, keepdim=True)

        self._one = torch.compile(one, mode="reduce-overhead", fullgraph=True) \
            if mode == "graphs" else one

    def prefill(self, prompt):
        self.cache.reset()
        pos = self.torch.arange(prompt.shape[1], device=self.device)
        logits = self.model(input_ids=prompt, position_ids=pos.view(1, -1), cache_position=pos,
                            past_key_values=self.cache, use_cache=True, return_dict=False)[0]
        return logits[:, -1].argmax(-1, keepdim=True)

    def step(self, token, position: int):
        pos = self.torch.tensor([position], device=self.device)
        # a graph replay reuses its output buffer: copy the token out before the next step
        return self._one(token, pos).clone()


def _in_turn(runs: list, repeats: int) -> list[list[float]]:
    """Seconds of each callable, timed in turn (A B C A B C ...) after one warm-up round."""
    times = [[] for _ in runs]
    for r in range(repeats + 1):
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            run()
            if r:
                times[i].append(time.perf_counter() - t0)
    return times


def _encoder(task):
    return _in_turn([_encoder_run(task)], task["repeats"])[0]


def _encoder_paired(task):
    """Several models of one runtime in one process, timed in turn, so that every model sees
    the same machine: batches take a tenth of a second, and a shared machine's speed wanders
    by tens of percent over seconds."""
    return _in_turn([_encoder_run(dict(task, model=m, tokenizer=t, tokenizer_spec=p,
                                       paired=True))
                     for m, t, p in zip(task["models"], task["tokenizers"],
                                        task["tokenizer_specs"])], task["repeats"])


def _encoder_run(task):
    """A function that embeds the next batch of the task's texts (cut in batches of ``batch``,
    default: all in one), padded to its own longest sentence: successive calls cycle through
    the batches, so every model timed in turn sees the same batches in the same order. GPU
    fields as for the causal runners: ``gpu_layers`` (llama.cpp), ``providers``
    (onnxruntime), ``device``/``dtype`` (torch)."""
    one = _encoder_batch_run(task)
    size = task.get("batch") or len(task["texts"])
    batches = [task["texts"][i:i + size] for i in range(0, len(task["texts"]), size)]
    turn = itertools.cycle(batches)
    return lambda: one(next(turn))


def _encoder_batch_run(task):
    """A function that embeds one batch of texts."""
    runtime = task["runtime"]
    if runtime == "llama.cpp":
        import llama_cpp
        from llama_cpp import Llama

        gpu_layers = task.get("gpu_layers", 0)
        if gpu_layers and not llama_cpp.llama_supports_gpu_offload():
            raise RuntimeError("llama-cpp-python was built without a GPU backend")
        llm = Llama(task["model"], embedding=True, n_ctx=4096, n_batch=4096, n_ubatch=4096,
                    n_threads=task["threads"], n_threads_batch=task["threads"],
                    n_gpu_layers=gpu_layers, verbose=False)
        # llama.cpp embeds a whole text: cut each, once, to the tokens the other runtimes'
        # tokenizers keep (and the model has positions for)
        limit = min(task.get("seq_len") or 512, trained_context(task["model"]) or 512)
        fitted = {t: _fit_text(llm, t, limit) for t in task["texts"]}
        run = lambda texts: llm.embed([fitted.get(t, t) for t in texts])  # noqa: E731
    elif runtime == "onnxruntime":
        encode = _encoder_tokenizer(task)
        # loaded once, as deployed; several sessions taking turns must not spin (see there)
        sess = _ort_session(task, spin=not task.get("paired"))
        names = {i.name for i in sess.get_inputs()}

        def run(texts):  # tokenizing is part of the work, as in llama.cpp's embed()
            enc = encode(texts)
            return sess.run([SENTENCE_EMBEDDING], {k: v.astype(np.int64) for k, v in enc.items()
                                                   if k in names})[0]
    else:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(task["threads"])
        device = task.get("device", "cpu")
        tok = AutoTokenizer.from_pretrained(task["model"])
        model = AutoModel.from_pretrained(
            task["model"], dtype=getattr(torch, task.get("dtype", "float32"))).to(device).eval()

        def run(texts):
            with torch.inference_mode():
                enc = tok(texts, padding=True, truncation=True, max_length=task["seq_len"],
                          return_tensors="pt").to(device)
                return model(**enc).last_hidden_state.float().cpu()  # on the host: done
    return run


def _encoder_tokenizer(task):
    """texts -> {input name: array}, padded to the longest and cut at the task's seq_len: the
    parent's fast tokenizer rebuilt from ``tokenizer_spec`` with the tokenizers library, else
    transformers' AutoTokenizer of the task's tokenizer folder."""
    if task.get("tokenizer_spec"):
        return spec_encoder(task["tokenizer_spec"], task["seq_len"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(task["tokenizer"])
    return lambda texts: dict(tok(texts, padding=True, truncation=True,
                                  max_length=task["seq_len"], return_tensors="np"))


def _fit_text(llm, text: str, limit: int) -> str:
    """The longest prefix of ``text`` that llama.cpp tokenizes, special tokens included, into
    at most ``limit`` tokens."""
    def count(t: str) -> int:
        return len(llm.tokenize(t.encode("utf-8"), add_bos=True))

    if count(text) <= limit:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(text[:mid]) <= limit else (lo, mid - 1)
    return text[:lo]


def _encoder_ids(task):
    """An encoder on a fixed (batch, seq_len) of tokens: the calibration workload, whose
    length does not depend on text. ONNX: token ids; a GGUF in llama.cpp (whose embed() takes
    text): ``batch`` copies of a text of one-token words, ``seq_len`` tokens with the
    special tokens."""
    if task.get("runtime") == "llama.cpp":
        from llama_cpp import Llama

        n = max(512, task["batch"] * task["seq_len"])
        llm = Llama(task["model"], embedding=True, n_ctx=n, n_batch=n, n_ubatch=n,
                    n_threads=task["threads"], n_threads_batch=task["threads"], verbose=False)
        texts = [" ".join(["the"] * (task["seq_len"] - 2))] * task["batch"]
        got = len(llm.tokenize(texts[0].encode(), add_bos=True))
        if got != task["seq_len"]:
            raise RuntimeError(f"the calibration text is {got} tokens, not {task['seq_len']}")
        return _in_turn([lambda: llm.embed(texts)], task["repeats"])[0]

    sess = ort_session(Path(task["model"]), task["threads"])
    shape = (task["batch"], task["seq_len"])
    ids = (np.arange(shape[0] * shape[1]).reshape(shape) * 7919 % 1000 + 1000).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones(shape, np.int64),
             "token_type_ids": np.zeros(shape, np.int64)}
    feeds = {i.name: feeds[i.name] for i in sess.get_inputs()}
    return _in_turn([lambda: sess.run(None, feeds)], task["repeats"])[0]


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: on Linux that keeps the
    parent's size from before exec, so every child would report at least its parent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(spec: str) -> int:
    task = json.loads(Path(spec).read_text())
    if task.get("kind") == "encoder":
        result = {"batch_s": _encoder(task)}
    elif task.get("kind") == "encoder_paired":
        result = {"batch_s": _encoder_paired(task)}
    elif task.get("kind") == "encoder_ids":
        result = {"batch_s": _encoder_ids(task)}
    else:
        fn = {"llama.cpp": _llama_causal, "onnxruntime": _ort_causal,
              "torch": _torch_causal}[task["runtime"]]
        result = fn(task)
    result["peak_rss_mb"] = peak_rss_mb()
    (Path(task["workdir"]) / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
