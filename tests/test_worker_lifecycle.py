"""A worker's start and end: what it compiles (once, whatever the videos), what it does when
a compiled graph is missing after start-up (runs it eagerly, never waits for a compilation),
and the order of its teardown (nothing on the device outlives the context it was made in)."""

import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from conftest import TINY_CKPT, synthetic_frames, write_frames
from extractor import pipeline
from extractor.backbones import Preprocessing
from extractor.decode.color import YuvToRgb
from extractor.decode.common import VideoInfo, packed_frame_bytes
from extractor.model import LlavaViT, ViTConfig
from extractor.config import RunConfig
from extractor.engine import compile_blocks
from extractor.pipeline import run_worker
from extractor.video import RECOMPILE, InputMaker


@pytest.fixture
def no_late_compiles():
    """torch.compiler's stance as a worker sets it once ready, restored afterwards."""
    torch.compiler.set_stance(RECOMPILE)
    yield
    torch.compiler.set_stance("default")


def nv12_surface(frames: torch.Tensor, h: int, w: int, rows_h: int, pitch: int) -> torch.Tensor:
    """Packed Y, U, V frames laid out as NVDEC's NV12 surface (planes rows_h tall, pitch wide)."""
    n, ch, cw = frames.shape[0], (h + 1) // 2, (w + 1) // 2
    out = torch.zeros(n, rows_h + (rows_h + 1) // 2, pitch, dtype=torch.uint8)
    out[:, :h, :w] = frames[:, :h * w].view(n, h, w)
    out[:, rows_h:rows_h + ch, 0:2 * cw:2] = frames[:, h * w:h * w + ch * cw].view(n, ch, cw)
    out[:, rows_h:rows_h + ch, 1:2 * cw:2] = frames[:, h * w + ch * cw:].view(n, ch, cw)
    return out


def test_one_compiled_graph_serves_every_size_colour_rotation_and_plane_layout(no_late_compiles):
    compiled = InputMaker(torch.device("cpu"), Preprocessing(), torch.float32, compile=True)
    eager = InputMaker(torch.device("cpu"), Preprocessing(), torch.float32, compile=False)
    torch.compiler.set_stance("default")
    before = counters["stats"]["unique_graphs"]
    compiled.warm_up(size=(48, 64), frames=4)
    assert counters["stats"]["unique_graphs"] - before == 1  # YUV, from packed planes or NV12 alike
    torch.compiler.set_stance(RECOMPILE)
    rng = np.random.default_rng(0)
    colours = [YuvToRgb("bt601"), YuvToRgb("bt709", True), YuvToRgb("bt2020", False, True), None]
    with torch.inference_mode():
        for h, w in [(38, 66), (61, 81), (90, 160)]:
            for colour in colours:
                for turns in (0, 1, 2, 3):
                    for n in (1, 3):
                        info = VideoInfo(n, 30.0, *((w, h) if turns % 2 else (h, w)), rotation=90 * turns,
                                         colour=colour)
                        frames = torch.from_numpy(rng.integers(0, 256, (n, packed_frame_bytes(h, w, colour)),
                                                               dtype=np.uint8))
                        got = compiled.from_frames(frames, info, colour)
                        assert got.shape == (n, 3, 224, 224)
                        torch.testing.assert_close(got, eager.from_frames(frames, info, colour), rtol=0, atol=1e-5)
                        if colour is None:
                            continue
                        for rows_h, pitch in ((h, 2 * ((w + 1) // 2)), (h + 8, w + 64)):  # surfaces as wide, wider
                            surface = nv12_surface(frames, h, w, rows_h, pitch)
                            assert torch.equal(compiled.from_nv12(surface, info), got)
    assert compiled.fallback_calls == 0, compiled.fallbacks
    assert counters["stats"]["unique_graphs"] - before == 1


def test_a_backbones_mean_and_std_are_data_of_the_conversion_not_traced_floats(no_late_compiles):
    """A Hugging Face processor's mean and std reach the compiled conversion as a tensor: as
    Python floats, torch.compile traced each as a symbol of its own and analysed the whole
    function a second time (twice the operations captured)."""
    prep = Preprocessing((32, 32), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), antialias=True)
    captured = {}
    for name, p in (("plain", Preprocessing((32, 32), antialias=True)), ("normalized", prep)):
        maker = InputMaker(torch.device("cpu"), p, torch.float32, compile=True)
        torch.compiler.set_stance("default")
        before = counters["stats"]["calls_captured"]
        maker.warm_up(size=(48, 64), frames=4)
        captured[name] = counters["stats"]["calls_captured"] - before
        torch.compiler.set_stance(RECOMPILE)
    assert captured["normalized"] <= captured["plain"] + 10, captured
    info = VideoInfo(3, 30.0, 40, 66, colour=YuvToRgb("bt601"))
    eager = InputMaker(torch.device("cpu"), prep, torch.float32, compile=False)
    with torch.inference_mode():  # (as the worker's frames are)
        frames = torch.randint(0, 256, (3, packed_frame_bytes(40, 66, info.colour)), dtype=torch.uint8)
        torch.testing.assert_close(maker.from_frames(frames, info, info.colour),
                                   eager.from_frames(frames, info, info.colour), rtol=0, atol=1e-5)
    assert maker.fallback_calls == 0, maker.fallbacks


def test_a_call_that_would_compile_once_the_worker_runs_is_run_eagerly_instead(no_late_compiles):
    maker = InputMaker(torch.device("cpu"), Preprocessing(), torch.float32, compile=True)
    info = VideoInfo(2, 30.0, 40, 64, colour=YuvToRgb())
    frames = torch.randint(0, 256, (2, packed_frame_bytes(40, 64, info.colour)), dtype=torch.uint8)
    before = counters["stats"]["unique_graphs"]
    got = maker.from_frames(frames, info, info.colour)  # nothing warmed up: this would compile
    assert counters["stats"]["unique_graphs"] == before
    assert maker.fallback_calls == 1 and "yuv_to_input" in maker.fallbacks
    eager = InputMaker(torch.device("cpu"), Preprocessing(), torch.float32, compile=False)
    assert torch.equal(got, eager.from_frames(frames, info, info.colour))


def test_the_model_is_compiled_by_blocks_that_share_one_graph():
    model = LlavaViT(ViTConfig(patch_size=16, width=64, layers=3, head_dim=32, mlp_width=128)).eval()
    x = torch.rand(2, 3, 4, 32, 32)
    with torch.inference_mode():
        want = model(x)["head_output"]
        before = counters["stats"]["unique_graphs"]
        assert compile_blocks(model) == 3
        got = model(x)["head_output"]
    assert counters["stats"]["unique_graphs"] - before == 1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_teardown_frees_everything_on_the_device_before_the_green_context(tmp_path, monkeypatch):
    """A tensor freed after the green context the model ran in is gone records an event on a
    destroyed context and aborts the process: the context must be released last."""
    order = []

    class GreenContext:  # stands in for torch.cuda.green_contexts.GreenContext
        pass

    def leave_sms(device, sms):
        ctx = GreenContext()
        weakref.finalize(ctx, order.append, "green context released")
        return ctx, ""

    real_plan, real_engine, real_maker, real_release = (pipeline.plan_decoding, pipeline.Engine, pipeline.InputMaker,
                                                        pipeline.release_device)

    def plan(*args, **kwargs):
        p = real_plan(*args, **kwargs)
        p.nvdec_sms = 4  # as beside NVDEC sessions on a GPU
        return p

    def engine(*args, **kwargs):
        e = real_engine(*args, **kwargs)
        weakref.finalize(e, order.append, "model freed")
        return e

    def maker(*args, **kwargs):
        m = real_maker(*args, **kwargs)
        weakref.finalize(m, order.append, "conversions freed")
        return m

    def release(device):
        order.append("device released")
        real_release(device)

    monkeypatch.setattr(pipeline, "plan_decoding", plan)
    monkeypatch.setattr(pipeline, "leave_sms_to_nvdec", leave_sms)
    monkeypatch.setattr(pipeline, "Engine", engine)
    monkeypatch.setattr(pipeline, "InputMaker", maker)
    monkeypatch.setattr(pipeline, "release_device", release)
    video = write_frames(tmp_path / "v.mp4", synthetic_frames(24, 48, 64))
    todo, events = [video], []
    cfg = RunConfig(save_path=tmp_path / "out", ckpt_path=TINY_CKPT, model_name="auto", clip_len=8, stride=4,
                    batch_clips=4, cpu_decoders=1)
    (tmp_path / "out").mkdir()
    run_worker(cfg, torch.device("cpu"), lambda: (todo.pop(), None, 0) if todo else None, events.append)
    assert [e["type"] for e in events if e["type"] in ("ready", "done", "peak")] == ["ready", "done", "peak"]
    assert np.load(tmp_path / "out" / "v.npy").shape == (5, 128)
    assert order[-1] == "green context released"
    assert sorted(order[:-1]) == ["conversions freed", "device released", "model freed"]


def test_the_ready_event_breaks_start_up_down(tmp_path):
    video = write_frames(tmp_path / "v.mp4", synthetic_frames(48, 48, 64))
    todo, events = [video], []
    cfg = RunConfig(save_path=tmp_path, ckpt_path=TINY_CKPT, model_name="auto", clip_len=8, stride=8, batch_clips=2,
                    cpu_decoders=1, chunk_frames=8)
    run_worker(cfg, torch.device("cpu"), lambda: (todo.pop(), None, 0) if todo else None, events.append)
    ready = next(e for e in events if e["type"] == "ready")
    # in order; uncompiled, nothing compiles, and the model's rate is measured on the first batches
    assert list(ready["startup"]) == ["device", "open", "maker", "decoders", "load", "compile"]
    assert all(s >= 0 for s in ready["startup"].values())
    peak = next(e for e in events if e["type"] == "peak")
    assert peak["first_frames_s"] > 0 and peak["eager_calls"] == 0
    assert Path(tmp_path / "v.npy").exists()
    # where the main thread's time went: every part measured, inside the worker's time (on the
    # CPU a batch runs when it is launched, so launching is the model's time there)
    spent = peak["main_thread"]
    assert list(spent) == ["converting", "clips", "launching", "collecting"]
    assert spent["converting"] > 0 and spent["launching"] > 0 and min(spent.values()) >= 0
    assert sum(spent.values()) + peak["waited_s"] <= peak["work_s"] + 1.0


def forked_child_reports(ctx, out: Path) -> dict:
    """What a worker process finds at its start: which modules it has already and what
    Ctrl-C does to it (the target is a builtin, so that nothing is imported to unpickle it)."""
    code = (f"import sys, signal, json; json.dump({{'modules': sorted(sys.modules), 'sigint_ignored': "
            f"signal.getsignal(signal.SIGINT) is signal.SIG_IGN}}, open({str(out)!r}, 'w'))")
    child = ctx.Process(target=exec, args=(code,))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    import json

    return json.loads(out.read_text())


def test_workers_are_forked_with_torch_and_the_pipeline_imported_and_ctrl_c_left_to_process_0(tmp_path):
    from extractor.worker_server import start_worker_server, stop_worker_server, worker_context

    stop_worker_server()  # (another test's server would have other imports)
    try:
        start_worker_server(compile=False, model_type="llavavit")
        found = forked_child_reports(worker_context(False, "llavavit"), tmp_path / "child.json")
    finally:
        stop_worker_server()
    assert {"torch", "extractor.launch.worker", "extractor.pipeline"} <= set(found["modules"])
    assert "torch._dynamo" not in found["modules"] and "transformers" not in found["modules"]  # (not compiled, not HF)
    assert found["sigint_ignored"]


def test_a_usage_error_stops_the_workers_server_mid_import_without_waiting_for_it():
    import time

    from multiprocessing import forkserver

    from extractor.worker_server import start_worker_server, stop_worker_server

    stop_worker_server()
    start_worker_server(compile=True, model_type="hf")  # (torch, the compiler and transformers: seconds of imports)
    pid = forkserver._forkserver._forkserver_pid
    t0 = time.perf_counter()
    stop_worker_server()
    assert time.perf_counter() - t0 < 1.0
    assert forkserver._forkserver._forkserver_pid is None
    assert not Path(f"/proc/{pid}").exists()
