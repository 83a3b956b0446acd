"""``bench --qai-hub``: an NPU export's QDQ graphs timed on a real phone through Qualcomm AI
Hub (runtimes/qaihub.py), recorded as measured with the phone's name, and kept as the NPU
predictor's calibration (plan.predictor.phone_measurements_path)."""
from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.plan.predictor import phone_measurements_path
from edgedistill.profiles import DeviceProfile
from edgedistill.runstate import atomic_write
from edgedistill.runtimes.qaihub import Hub


def connect(prof: DeviceProfile, device: str | None, client=None) -> Hub:
    """The AI Hub device for ``prof``, checked before any work: ``device`` or the profile's
    ``qai_hub_device``. Errors: a profile that is not an NPU's, no device named, no token,
    no client, no network, an unknown device."""
    if prof.kind != "npu":
        raise EdgeDistillError(f"--qai-hub profiles NPU graphs; {prof.name!r} is a "
                               f"{prof.kind} profile.",
                               "use --target phone-npu (or another NPU profile)")
    name = device or prof.qai_hub_device
    if not name:
        raise EdgeDistillError(f"profile {prof.name!r} names no Qualcomm AI Hub device.",
                               "pass --device, e.g. --device \"Samsung Galaxy S24 (Family)\"")
    return Hub(name, client)


def graph_files(art: dict) -> dict[str, Path]:
    """An NPU record's graphs by role: ``encoder``; or ``prefill`` (the record's path) and
    ``decode`` (named in its note, else the sibling decode graph of the same scheme)."""
    path = Path(art["path"])  # model.encoder.Q.onnx, model.prefillN-ctxM.Q.onnx
    if not path.name.startswith("model.prefill"):
        return {"encoder": path}
    m = re.search(r"decode graph: (\S+\.onnx)", art.get("note") or "")
    dec = [path.parent / m.group(1)] if m else sorted(
        path.parent.glob(f"model.decode*.{art['quant']}.onnx"))
    out = {"prefill": path}
    if dec and dec[0].is_file():
        out["decode"] = dec[0]
    return out


def measure(hub: Hub, rec: dict, art: dict, prof: DeviceProfile, log) -> list[dict]:
    """Profile each graph of one NPU record on the phone; the record's ``bench`` gains the
    measured figures (labelled with the phone's name) and ``qai_hub`` (per graph: latency,
    peak memory, layers per compute unit, job ids). Returns the measurements to keep."""
    b = rec["bench"]
    if not str(art["quant"]).startswith("qdq_"):
        b["qai_hub"] = {"skipped": "float graphs are not what the phone's NPU runs"}
        return []
    graphs, kept = {}, []
    config = json.loads((Path(art["model_dir"]) / "config.json").read_text())
    for role, path in graph_files(art).items():
        name = f"edgedistill {art['role']} {role} {art['quant']}"
        log(f"{art['role']:>7} onnx:{art['quant']:<8} {role}: compiling and profiling on "
            f"{hub.device_name} (Qualcomm AI Hub)")
        graphs[role] = hub.profile_graph(path, name)
        if "error" not in graphs[role]:
            kept.append({"device": hub.device_name, "workload": role, "quant": art["quant"],
                         "config": config,
                         "latency_ms": graphs[role]["latency_ms"],
                         "profile_job": graphs[role].get("profile_job"),
                         "file": path.name})
    ok = {r: g for r, g in graphs.items() if "error" not in g}
    b["qai_hub"] = {"device": hub.device_name, "graphs": graphs}
    if not ok:
        b["qai_hub"]["error"] = "; ".join(g["error"] for g in graphs.values())
        return []
    lt = prof.latency_targets
    b.update(measured=True, device=f"{hub.device_name} (Qualcomm AI Hub)",
             runtime="QNN context binary (Qualcomm AI Hub)",
             note="measured on the phone through Qualcomm AI Hub; quality from the HTP "
                  "simulation at export")
    if "encoder" in ok:
        ms = ok["encoder"]["latency_ms"]
        b |= {"batch_ms": ms, "sentences_per_s": 1e3 / ms, "batch": 1,
              "seq_len": lt.encoder_seq_len}
    if "decode" in ok:
        b["decode_tokens_per_s"] = 1e3 / ok["decode"]["latency_ms"]
    if "prefill" in ok:
        chunk = prof.constraints.prefill_chunk or lt.prompt_tokens
        b["prefill_tokens_per_s"] = chunk / (ok["prefill"]["latency_ms"] / 1e3)
        b["ttft_ms"] = ok["prefill"]["latency_ms"]
    return kept


def keep(profile_name: str, measurements: list[dict]) -> Path | None:
    """Add ``measurements`` to the profile's phone calibration (atomically; a measurement of
    the same file, graph and device replaces the older one)."""
    if not measurements:
        return None
    p = phone_measurements_path(profile_name)
    try:
        old = json.loads(p.read_text()).get("measurements", [])
    except (OSError, ValueError):
        old = []
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    new = [m | {"measured_at": now} for m in measurements]
    ident = {(m["device"], m["workload"], m["quant"], json.dumps(m["config"], sort_keys=True))
             for m in new}
    old = [m for m in old if (m.get("device"), m.get("workload"), m.get("quant"),
                              json.dumps(m.get("config"), sort_keys=True)) not in ident]
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, {"profile": profile_name, "measurements": old + new})
    return p
