"""Start-up profiling for the bench: with this folder on PYTHONPATH and STACK_SAMPLES=DIR
set, every Python process that imports torch's worker code samples all its threads' stacks
every 10 ms for its first STACK_SAMPLE_S seconds (default 40) and writes them to
DIR/stacks.PID.txt: "S id stack" lines (stack: "file:function;..." outermost first), then
one "T seconds-since-sampling-began thread id" line per thread per sample.
bench/stack_profile.py reads them. Spawned workers inherit PYTHONPATH and sample too; forked
ones (the workers' server's) start sampling at the fork."""

import os

if os.environ.get("STACK_SAMPLES"):
    import atexit
    import sys
    import threading
    import time

    def _sample(out_dir: str, seconds: float):
        stacks: dict = {}
        samples: list = []
        t0 = time.monotonic()
        names = {}
        me = threading.get_ident()
        t_end = time.monotonic() + seconds
        written = []

        def write(last: bool = True):
            """The samples so far, rewritten whole (every few seconds, so that a process
            killed in its window still leaves them; then once more at the end or at exit)."""
            if written:
                return
            if last:
                written.append(1)
            for _ in range(100):  # (the sampling thread may still be adding to them)
                try:  # samples first: every stack they name is then in the table
                    taken = list(samples)
                    table = list(stacks.items())
                    break
                except RuntimeError:
                    time.sleep(0.001)
            else:
                return
            path = os.path.join(out_dir, f"stacks.{os.getpid()}.txt")
            with open(path + ".part", "w") as fh:
                fh.write(f"# argv {' '.join(sys.argv)[:300]}\n")
                for stack, i in table:
                    fh.write(f"S {i} {stack}\n")
                for t, name, i in taken:
                    fh.write(f"T {t:.3f} {name.replace(' ', '_')} {i}\n")
            os.replace(path + ".part", path)

        atexit.register(write)
        last_write = time.monotonic()
        while time.monotonic() < t_end:
            if time.monotonic() - last_write > 5:
                write(last=False)
                last_write = time.monotonic()
            for t in threading.enumerate():
                names[t.ident] = t.name
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                parts = []
                while frame is not None:
                    code = frame.f_code
                    parts.append(f"{os.path.basename(code.co_filename)}:{code.co_name}")
                    frame = frame.f_back
                stack = ";".join(parts[::-1])
                samples.append((time.monotonic() - t0, names.get(ident, str(ident)), stacks.setdefault(stack, len(stacks))))
            time.sleep(0.01)
        write()

    def _start():
        threading.Thread(target=_sample, args=(os.environ["STACK_SAMPLES"], float(os.environ.get("STACK_SAMPLE_S", 40))),
                         daemon=True, name="stack-sampler").start()

    _start()
    os.register_at_fork(after_in_child=_start)  # (workers forked by the workers' server sample from their fork)
