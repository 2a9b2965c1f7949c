"""Serve a GGUF model with llama.cpp's OpenAI-compatible server (PyPI `xllamacpp`).

    python local_server.py MODEL.gguf PORT [--ctx N] [--threads N] [--alias NAME] [--exit-with-parent]

Binds 127.0.0.1 only and runs until SIGTERM/SIGINT. Started by scripts/local-model.sh, and by
`logline serve` with LOGLINE_PROVIDER=local, which passes this file to `python -c` and
supervises the process.
"""

import argparse
import os
import signal
import sys
import threading


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("port", type=int)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--alias", default=None)
    ap.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this one dies (even by SIGKILL)",
    )
    args = ap.parse_args()
    if not os.path.isfile(args.model):
        print(f"local_model_server: no model file at {args.model}", file=sys.stderr)
        return 2

    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = args.model
    p.n_ctx = args.ctx
    p.n_parallel = 1
    p.use_jinja = True  # the model's own chat template, with native tool calling
    p.hostnames = ["127.0.0.1"]
    p.port = args.port
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.cache_prompt = True
    p.endpoint_props = True
    alias = args.alias or os.path.splitext(os.path.basename(args.model))[0]
    p.model_alias = {alias}

    server = xlc.Server(p)  # starts serving in background threads
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.exit_with_parent:
        parent = os.getppid()

        def watch() -> None:
            while not stop.wait(1.0):
                if os.getppid() != parent:
                    print("local_model_server: parent gone, stopping", file=sys.stderr, flush=True)
                    stop.set()

        threading.Thread(target=watch, daemon=True).start()
    print(f"local_model_server: serving {alias} on http://127.0.0.1:{args.port}", flush=True)
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
