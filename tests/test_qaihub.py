"""bench --qai-hub: phone latency through Qualcomm AI Hub. The service cannot be reached from
here, so the client is a fake that answers as the qai-hub client documents (0.56: get_devices,
submit_compile_job -> CompileJob.get_target_model(), submit_inference_job(profile=True) ->
InferenceJob.download_profile() with execution_summary / execution_detail)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgedistill.bench import phone
from edgedistill.plan.predictor import (load_phone_measurements, phone_factors,
                                        predictor_for)
from edgedistill.profiles import load_profile
from edgedistill.runtimes import qaihub
from edgedistill.runtimes.qaihub import Hub, QaiHubError, summarize


def tiny_llama_config() -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
            "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 4, "vocab_size": 2048, "max_position_embeddings": 1024,
            "tie_word_embeddings": False}


# A profile as the client documents it (ProfileJob / InferenceJob.download_profile(),
# profile major version 1, minor >= 2): times in microseconds, memory in bytes.
PROFILE_V12 = {
    "execution_summary": {
        "estimated_inference_time": 2150,
        "estimated_inference_peak_memory": 9_437_184,
        "first_load_time": 181_000, "first_load_peak_memory": 30_000_000,
        "warm_load_time": 9_000, "warm_load_peak_memory": 12_000_000,
        "compile_time": 0, "compile_peak_memory": 0,
        "inference_memory_peak_range": (8_388_608, 10_485_760),
        "all_inference_times": [2300, 2100, 2150, 2200, 2120],
    },
    "execution_detail": [
        {"name": "/layers.0/MatMul", "type": "MatMul", "compute_unit": "NPU",
         "execution_time": 40},
        {"name": "/layers.0/Softmax", "type": "Softmax", "compute_unit": "NPU"},
        {"name": "/Gather", "type": "Gather", "compute_unit": "CPU"},
    ],
}
PROFILE_V10 = {"execution_summary": {"estimated_inference_time": 5000,
                                     "estimated_inference_peak_memory": 4 * 2 ** 20},
               "execution_detail": []}


class _Status:
    def __init__(self, ok, message=""):
        self.code, self.message = ("SUCCESS" if ok else "FAILED"), message
        self.success, self.failure, self.finished = ok, not ok, True


class _Device:
    def __init__(self, name):
        self.name, self.os, self.attributes = name, "14", ["chipset:qualcomm-snapdragon-8gen3"]


class _CompileJob:
    def __init__(self, job_id, ok):
        self.job_id, self._ok = job_id, ok

    def get_target_model(self):
        return f"target-of-{self.job_id}" if self._ok else None

    def get_status(self):
        return _Status(self._ok, "" if self._ok else "Failed to compile: op Foo unsupported")


class _InferenceJob:
    def __init__(self, job_id, profile):
        self.job_id, self._profile = job_id, profile
        self.url = f"https://app.aihub.qualcomm.com/jobs/{job_id}/"

    def download_profile(self):
        return self._profile

    def get_status(self):
        return _Status(bool(self._profile))


class FakeHubClient:
    """Answers as qai_hub.Client does. ``latency_us``: per submitted file name fragment, the
    estimated_inference_time its profile reports."""

    def __init__(self, devices=("Samsung Galaxy S24 (Family)",), latency_us=None,
                 fail_compile=(), network_down=False):
        self.devices, self.latency_us = devices, latency_us or {}
        self.fail_compile, self.network_down = fail_compile, network_down
        self.compiled, self.profiled, self.n = [], [], 0

    def get_devices(self, name="", os="", attributes=None):
        if self.network_down:
            import requests
            raise requests.exceptions.ConnectionError(
                "HTTPSConnectionPool(host='app.aihub.qualcomm.com', port=443): Max retries")
        return [_Device(d) for d in self.devices if not name or d == name]

    def submit_compile_job(self, model, device, name=None, input_specs=None, options="",
                           **kw):
        self.n += 1
        assert "--target_runtime qnn_context_binary" in options
        p = Path(model)
        files = sorted(f.name for f in p.iterdir()) if p.is_dir() else [p.name]
        self.compiled.append({"model": p.name, "files": files, "device": device.name})
        return _CompileJob(f"jc{self.n}", not any(f in p.name for f in self.fail_compile))

    def submit_inference_job(self, model, device, inputs=None, name=None, options="",
                             retry=True, profile=True, project=None):
        self.n += 1
        src = self.compiled[-1]["model"]
        us = next((v for k, v in self.latency_us.items() if k in src), 2150)
        prof = json.loads(json.dumps(PROFILE_V12))
        prof["execution_summary"]["estimated_inference_time"] = us
        prof["execution_summary"]["all_inference_times"] = [us, us, us]
        self.profiled.append(src)
        return _InferenceJob(f"jp{self.n}", prof)


def test_summarize_reads_the_documented_profile():
    s = summarize(PROFILE_V12)
    assert s["latency_ms"] == pytest.approx(2.15)  # median of all_inference_times
    assert s["latency_basis"].startswith("median of 5 runs")
    assert s["peak_memory_mb"] == pytest.approx(10.0)  # upper end of the peak range
    assert s["compute_units"] == {"NPU": 2, "CPU": 1}
    assert s["npu_share"] == pytest.approx(2 / 3)
    old = summarize(PROFILE_V10)  # an older profile: the estimate and the single peak
    assert old["latency_ms"] == 5.0 and old["peak_memory_mb"] == 4.0
    assert old["latency_basis"] == "AI Hub's estimated_inference_time"
    with pytest.raises(QaiHubError, match="no inference time"):
        summarize({"execution_summary": {}, "execution_detail": []})


def test_no_token_is_a_clear_error_and_nothing_is_written(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "EDGEDISTILL_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "run"
    run.mkdir()
    cmd = [sys.executable, "-m", "edgedistill", "bench", str(run), "--target", "phone-npu",
           "--qai-hub"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    assert "no Qualcomm AI Hub API token" in r.stderr and "qai-hub configure" in r.stderr
    assert list(run.iterdir()) == [] and not (tmp_path / "cache").exists()
    # a CPU target is refused first, whatever the token
    r = subprocess.run(cmd[:4] + ["laptop", "--qai-hub"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 2 and "use --target phone-npu" in r.stderr
    r = subprocess.run(cmd[:-1] + ["--device", "Samsung Galaxy S24"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2 and "only with --qai-hub" in r.stderr


def test_a_token_without_the_client_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("QAI_HUB_API_TOKEN", "tok")
    assert qaihub.token_source() == "QAI_HUB_API_TOKEN"
    monkeypatch.setitem(sys.modules, "qai_hub", None)  # not installed
    with pytest.raises(QaiHubError, match="pip install qai-hub"):
        qaihub.make_client()
    monkeypatch.delenv("QAI_HUB_API_TOKEN")
    ini = tmp_path / "client.ini"
    ini.write_text("[api]\napi_token = tok\n")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    assert qaihub.token_source() == str(ini)


def test_offline_and_unknown_devices_are_clear_errors():
    with pytest.raises(QaiHubError, match="cannot reach Qualcomm AI Hub"):
        Hub("Samsung Galaxy S24 (Family)", FakeHubClient(network_down=True))
    with pytest.raises(QaiHubError, match="no device named 'Pixel 99'.*list-devices"):
        Hub("Pixel 99", FakeHubClient())
    with pytest.raises(Exception, match="names no Qualcomm AI Hub device"):
        phone.connect(_without_device(load_profile("phone-npu")), None, FakeHubClient())


def _without_device(prof):
    from dataclasses import replace
    return replace(prof, qai_hub_device=None)


def _npu_run(tmp_path, cfg: dict) -> dict:
    """The files of one causal NPU export (prefill and decode graphs, one with external data)
    and its record, as export writes them."""
    model = tmp_path / "student"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "export" / "onnx"
    out.mkdir(parents=True)
    pre = out / "model.prefill128-ctx896.qdq_a8w8.onnx"
    dec = out / "model.decode1-ctx1023.qdq_a8w8.onnx"
    for p in (pre, dec):
        p.write_bytes(b"onnx")
    (out / (dec.name + ".data")).write_bytes(b"weights")
    return {"role": "student", "path": str(pre), "format": "onnx", "quant": "qdq_a8w8",
            "model_dir": str(model), "note": f"decode graph: {dec.name}"}


def test_phone_latency_is_measured_kept_and_calibrates_the_npu_predictor(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("EDGEDISTILL_CACHE", str(tmp_path / "cache"))
    prof = load_profile("phone-npu")
    cfg = tiny_llama_config()
    art = _npu_run(tmp_path, cfg)
    client = FakeHubClient(latency_us={"prefill": 40_000, "decode": 5_000})
    hub = phone.connect(prof, None, client)
    assert hub.device_name == "Samsung Galaxy S24 (Family)"  # the profile's device
    from edgedistill.arch import shape_from_config
    shape = shape_from_config(cfg)
    before = predictor_for(prof)(shape, "onnx", "qdq_a8w8")
    assert before.label == "uncalibrated"
    rec = {**art, "bench": {"measured": False}}
    kept = phone.measure(hub, rec, art, prof, lambda m: None)
    b = rec["bench"]
    assert b["measured"] is True and b["device"] == "Samsung Galaxy S24 (Family) (Qualcomm AI Hub)"
    assert b["decode_tokens_per_s"] == pytest.approx(200.0)  # 5 ms a token
    assert b["ttft_ms"] == pytest.approx(40.0)
    assert b["prefill_tokens_per_s"] == pytest.approx(128 / 0.040)
    g = b["qai_hub"]["graphs"]
    assert set(g) == {"prefill", "decode"} and g["decode"]["profile_job"].startswith("jp")
    # the decode graph went up as a folder: graph and external data, as AI Hub wants it
    assert client.compiled[1]["files"] == ["model.decode1-ctx1023.qdq_a8w8.onnx",
                                           "model.decode1-ctx1023.qdq_a8w8.onnx.data"]
    assert client.compiled[0]["files"] == ["model.prefill128-ctx896.qdq_a8w8.onnx"]
    path = phone.keep(prof.name, kept)
    assert path.is_file() and len(load_phone_measurements(prof.name)) == 2
    phone.keep(prof.name, kept)  # the same graphs again replace, not add
    assert len(load_phone_measurements(prof.name)) == 2
    f = phone_factors(prof)
    assert f["decode"]["n"] == 1 and f["decode"]["devices"] == ["Samsung Galaxy S24 (Family)"]
    after = predictor_for(prof)(shape, "onnx", "qdq_a8w8")
    assert after.label == "calibrated" and "Qualcomm AI Hub" in after.basis
    assert after.decode_tokens_per_s == pytest.approx(200.0, rel=1e-6)  # the measured shape
    assert after.prefill_ms == pytest.approx(40.0, rel=1e-6)
    assert not after.extrapolated
    big = shape_from_config({**cfg, "hidden_size": 1024, "intermediate_size": 4096,
                             "num_hidden_layers": 16, "num_attention_heads": 16,
                             "num_key_value_heads": 16})
    far = predictor_for(prof)(big, "onnx", "qdq_a8w8")
    assert far.extrapolated and "EXTRAPOLATED" in far.basis
    # another NPU profile keeps its own measurements; CPU profiles never use them
    assert predictor_for(load_profile("laptop"))(shape, "gguf", "q4_k_m").label != "calibrated"


def test_a_failed_compile_is_recorded_not_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDISTILL_CACHE", str(tmp_path / "cache"))
    prof = load_profile("phone-npu")
    art = _npu_run(tmp_path, tiny_llama_config())
    hub = phone.connect(prof, None, FakeHubClient(fail_compile=("prefill", "decode")))
    rec = {**art, "bench": {"measured": False}}
    assert phone.measure(hub, rec, art, prof, lambda m: None) == []
    assert rec["bench"]["measured"] is False
    assert "op Foo unsupported" in rec["bench"]["qai_hub"]["error"]
    fp32 = {**art, "quant": "fp32"}
    rec = {**fp32, "bench": {}}
    assert phone.measure(hub, rec, fp32, prof, lambda m: None) == []
    assert "skipped" in rec["bench"]["qai_hub"]
