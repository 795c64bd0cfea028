"""How a worker decodes, sized from the machine: decoder processes from the cores, NVDEC
sessions from the GPU's engines, and the SMs the model leaves to NVDEC."""

from types import SimpleNamespace

import pytest
import torch

from extractor.decode import gpu, plan

H100 = "NVIDIA H100 80GB HBM3"


def config(**kw) -> plan.DecodeOptions:
    return plan.DecodeOptions(**kw)


@pytest.fixture
def with_nvdec(monkeypatch):
    monkeypatch.setattr(plan, "nvdec_available", lambda: "")


def test_beside_nvdec_sessions_a_worker_runs_a_decoder_process_for_every_two_cores(with_nvdec):
    """16 cores, an H100: 10 NVDEC sessions (3 per 2 of its 7 engines; an A100's 5 make 7)
    and 8 processes (15 without NVDEC, and on the CPU); the model leaves NVDEC 4 SMs; flags
    override each."""
    gpu = torch.device("cuda", 0)
    both = plan.plan_decoding(config(), gpu, 16, H100)
    assert (both.cpu_decoders, both.nvdec_sessions, both.nvdec_sms) == (8, 10, 4)
    assert plan.plan_decoding(config(), gpu, 16, "NVIDIA A100-SXM4-80GB").nvdec_sessions == 7
    assert plan.plan_decoding(config(), gpu, 16, "Tesla V100-SXM2-32GB").nvdec_sessions == 1
    assert "8 CPU decoder processes" in both.describe() and "the model leaves them 4 SMs" in both.describe()
    cpu_only = plan.plan_decoding(config(decoder="cpu"), gpu, 16, H100)
    assert (cpu_only.cpu_decoders, cpu_only.nvdec_sessions, cpu_only.nvdec_sms) == (15, 0, 0)
    assert "SMs" not in cpu_only.describe()
    assert plan.plan_decoding(config(), torch.device("cpu"), 16).cpu_decoders == 15
    assert plan.plan_decoding(config(), gpu, 2, "NVIDIA A100-SXM4-80GB").cpu_decoders == 1
    flags = plan.plan_decoding(config(cpu_decoders=12, nvdec_sessions=3, nvdec_sms=0), gpu, 16, H100)
    assert (flags.cpu_decoders, flags.nvdec_sessions, flags.nvdec_sms) == (12, 3, 0)


@pytest.mark.parametrize("total, leave, model", [(132, 4, 128), (108, 4, 104), (132, 12, 120), (58, 4, 48)])
def test_the_model_keeps_the_largest_multiple_of_8_sms_that_leaves_nvdec_its_share(monkeypatch, total, leave, model):
    asked, streams = [], []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=total))
    monkeypatch.setattr(gpu, "green_stream", lambda device, sms: (asked.append(sms) or "context", "stream"))
    monkeypatch.setattr(torch.cuda, "set_stream", streams.append)
    assert gpu.leave_sms_to_nvdec(torch.device("cuda", 0), leave) == ("context", "")
    assert asked == [model] and streams == ["stream"]


def test_without_green_contexts_the_model_runs_on_every_sm_and_says_why(monkeypatch):
    """An older torch or driver (or no GPU at all): no context, one line why, the thread's
    stream untouched."""
    streams = []
    monkeypatch.setattr(torch.cuda, "set_stream", streams.append)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=132))

    def unsupported(device, sms):
        raise RuntimeError("Green Context requires user mode driver 12.8+\nmore")

    monkeypatch.setattr(gpu, "green_stream", unsupported)
    assert gpu.leave_sms_to_nvdec(torch.device("cuda", 0), 4) == (None, "Green Context requires user mode driver 12.8+")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=10))
    context, why = gpu.leave_sms_to_nvdec(torch.device("cuda", 0), 4)
    assert context is None and "too few" in why and not streams
