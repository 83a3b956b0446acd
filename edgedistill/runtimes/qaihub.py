"""Real phone latency through Qualcomm AI Hub (``bench --qai-hub``).

Qualcomm AI Hub compiles a model for a real Snapdragon device and profiles it there. For each
fixed-shape QDQ graph of an NPU export we submit a compile job (``--target_runtime
qnn_context_binary``: the QNN context the phone runs) and a profile job of the compiled model,
then read the profile the client returns (``InferenceJob.download_profile()``)::

    {"execution_summary": {"estimated_inference_time": µs,
                           "estimated_inference_peak_memory": bytes,
                           "inference_memory_peak_range": (low, high) bytes,   # client >= 0.15
                           "all_inference_times": [µs, ...], ...},
     "execution_detail": [{"name": ..., "type": ..., "compute_unit": "NPU" | "GPU" | "CPU",
                           "execution_time": µs}, ...]}

The client (``pip install qai-hub``) is optional. Its API token comes from
``QAI_HUB_API_TOKEN`` or from the file ``qai-hub configure --api_token TOKEN`` writes
(``~/.qai_hub/client.ini``, or ``QAIHUB_CLIENT_INI``). Everything is checked (token, client,
network, device name) before any job is submitted, so a missing token or no network is a
one-line error and nothing is written.

No real job has been run from this project's machines (they cannot reach AI Hub): the tests
drive this module with responses written from the client's documented schemas.
"""
from __future__ import annotations

import inspect
import os
import shutil
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.runstate import artifact_files

TOKEN_ENV = "QAI_HUB_API_TOKEN"
CLIENT_INI_ENV = "QAIHUB_CLIENT_INI"
COMPILE_OPTIONS = "--target_runtime qnn_context_binary"
TOKEN_FIX = ("run 'qai-hub configure --api_token TOKEN' (the token is on "
             "https://app.aihub.qualcomm.com/account) or set QAI_HUB_API_TOKEN, or bench "
             "without --qai-hub")


class QaiHubError(EdgeDistillError):
    """No token, no client, no network, an unknown device, or a failed job."""


def token_source() -> str | None:
    """Where the API token comes from: the environment variable, the client's ini file, or
    None when there is neither."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return TOKEN_ENV
    ini = Path(os.environ.get(CLIENT_INI_ENV) or Path.home() / ".qai_hub" / "client.ini")
    return str(ini) if ini.is_file() else None


def make_client():
    """A ``qai_hub.Client`` with this user's token (QaiHubError when there is none or the
    client is not installed)."""
    src = token_source()
    if src is None:
        raise QaiHubError("no Qualcomm AI Hub API token.", TOKEN_FIX)
    try:
        import qai_hub
    except ImportError:
        raise QaiHubError("the Qualcomm AI Hub client is not installed.",
                          "pip install qai-hub (into the environment edgedistill runs in)"
                          ) from None
    if src == TOKEN_ENV:
        return qai_hub.Client(config=qai_hub.ClientConfig(
            api_token=os.environ[TOKEN_ENV].strip()))
    return qai_hub.Client()


def _unreachable(e: Exception) -> QaiHubError:
    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return QaiHubError(f"cannot reach Qualcomm AI Hub: {msg}.",
                       "check the network and the API token, or bench without --qai-hub")


class Hub:
    """One AI Hub device, reached through ``client`` (a ``qai_hub.Client`` or anything with
    its ``get_devices``, ``submit_compile_job`` and ``submit_profile_job``)."""

    def __init__(self, device_name: str, client=None):
        self.client = client if client is not None else make_client()
        try:
            devices = self.client.get_devices(name=device_name)
        except EdgeDistillError:
            raise
        except Exception as e:  # requests' errors, the client's UserError (bad token), ...
            raise _unreachable(e) from None
        if not devices:
            raise QaiHubError(f"Qualcomm AI Hub has no device named {device_name!r}.",
                              "list them with 'qai-hub list-devices' and pass one with "
                              "--device, e.g. --device \"Samsung Galaxy S24 (Family)\"")
        self.device = devices[0]
        self.device_name = getattr(self.device, "name", device_name) or device_name

    def _profile_job(self, model, name: str):
        sub = getattr(self.client, "submit_inference_job", None)
        if sub is not None and "profile" in inspect.signature(sub).parameters:
            return sub(model=model, device=self.device, name=name, profile=True)
        return self.client.submit_profile_job(model=model, device=self.device, name=name)

    def profile_graph(self, path: str | Path, name: str) -> dict:
        """Compile ``path`` (an ONNX graph, with its external data) for the device and
        profile it there. Returns :func:`summarize`'s figures with the jobs' ids and links."""
        work = Path(tempfile.mkdtemp(prefix="edgedistill-qaihub-"))
        try:
            model = upload_form(Path(path), work)
            try:
                cj = self.client.submit_compile_job(model=str(model), device=self.device,
                                                    name=name, options=COMPILE_OPTIONS)
                target = cj.get_target_model()
                if target is None:
                    return {"error": f"compile job {cj.job_id} failed: {_status(cj)}",
                            "compile_job": cj.job_id}
                pj = self._profile_job(target, name)
                prof = pj.download_profile()
            except EdgeDistillError:
                raise
            except Exception as e:
                raise _unreachable(e) from None
            ids = {"compile_job": cj.job_id, "profile_job": pj.job_id,
                   "url": getattr(pj, "url", None)}
            if not prof:
                return {"error": f"profile job {pj.job_id} failed: {_status(pj)}", **ids}
            return summarize(prof) | ids
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _status(job) -> str:
    try:
        st = job.get_status()
        return f"{st.code}: {st.message}" if getattr(st, "message", "") else str(st.code)
    except Exception as e:  # the job's status could not be read either
        return f"status unavailable ({type(e).__name__})"


def upload_form(path: Path, work: Path) -> Path:
    """What AI Hub accepts for ``path``: the .onnx file alone, or, with external data, a
    folder named ``NAME.onnx`` holding the graph and its data files (the client's documented
    model-directory layout)."""
    files = artifact_files(path)
    if len(files) == 1:
        return path
    d = work / path.name
    d.mkdir(parents=True)
    for f in files:
        try:
            os.link(f, d / f.name)
        except OSError:  # another file system
            shutil.copy2(f, d / f.name)
    return d


def summarize(profile: dict) -> dict:
    """The figures of a downloaded profile: latency (ms; the median of every timed run when
    the profile keeps them, else the client's estimated_inference_time), peak memory (MB) and
    how many layers ran on each compute unit."""
    s = profile.get("execution_summary") or {}
    runs = [t for t in s.get("all_inference_times") or [] if isinstance(t, (int, float))]
    est = s.get("estimated_inference_time")
    if not runs and not isinstance(est, (int, float)):
        raise QaiHubError("the AI Hub profile has no inference time.",
                          "open the profile job's page on AI Hub to see why it failed")
    out = {"latency_ms": (statistics.median(runs) if runs else est) / 1e3,
           "latency_basis": (f"median of {len(runs)} runs on the device" if runs else
                             "AI Hub's estimated_inference_time")}
    if isinstance(est, (int, float)):
        out["estimated_inference_ms"] = est / 1e3
    peak = s.get("estimated_inference_peak_memory")
    rng = s.get("inference_memory_peak_range")
    if isinstance(rng, (list, tuple)) and len(rng) == 2 and all(
            isinstance(v, (int, float)) for v in rng):
        out["peak_memory_mb"] = max(rng) / 2 ** 20
    elif isinstance(peak, (int, float)):
        out["peak_memory_mb"] = peak / 2 ** 20
    units = Counter(str(d.get("compute_unit", "?")) for d in profile.get("execution_detail")
                    or [])
    out["compute_units"] = dict(units)
    total = sum(units.values())
    out["npu_share"] = units.get("NPU", 0) / total if total else None
    return out
