"""Checks PyNvVideoCodec on this machine: metadata, a batch of RGB frames into torch, in the
main thread and in a worker thread, with its own CUDA context and with PyTorch's."""

import faulthandler
import sys
import threading
import traceback

import torch

faulthandler.enable()


def attempt(label, path, use_torch_context):
    import PyNvVideoCodec as nvc

    try:
        kwargs = {}
        if use_torch_context:
            from cuda.bindings import driver

            torch.cuda.init()
            torch.zeros(1, device="cuda")
            err, ctx = driver.cuCtxGetCurrent()
            kwargs = dict(cuda_context=int(ctx), cuda_stream=torch.cuda.current_stream().cuda_stream)
        dec = nvc.SimpleDecoder(path, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB,
                                **kwargs)
        meta = dec.get_stream_metadata()
        print(label, "meta", meta.num_frames, meta.average_fps, meta.width, meta.height, flush=True)
        frames = dec.get_batch_frames(8)
        print(label, "got", len(frames), type(frames[0]), flush=True)
        t = torch.from_dlpack(frames[0])
        print(label, "tensor", t.shape, t.dtype, t.device, float(t.float().mean()), flush=True)
        batch = torch.stack([torch.from_dlpack(f) for f in frames])
        torch.cuda.synchronize()
        print(label, "batch", batch.shape, "ok", flush=True)
    except Exception:
        print(label, "FAILED", traceback.format_exc()[-800:], flush=True)


if __name__ == "__main__":
    path = sys.argv[1]
    attempt("main/own-context", path, False)
    attempt("main/torch-context", path, True)
    for use in (False, True):
        t = threading.Thread(target=attempt, args=(f"thread/{'torch' if use else 'own'}-context", path, use))
        t.start()
        t.join()
