"""Beacon's web app: facts in -> review -> train -> results, over the pipeline in beacon/.

The Space's entry point. The app itself is the beacon.app package: beacon/app/layout.py builds the page,
beacon/app/handlers.py holds what its events do, beacon/app/render.py what it shows, beacon/app/jobs.py runs
one model job at a time, beacon/app/settings.py turns widget values into an InjectConfig. Importing this
module builds nothing and imports neither Gradio nor torch: `demo` is built on first use.

Launch: `python app.py [--share] [--mcp] [--port N] [--host H]` (or `beacon app`, `python -m beacon app`). Tests
launch the same app on a small budget: BEACON_STEPS or BEACON_CONFIG (JSON of InjectConfig fields),
BEACON_PROBES (a smaller locality probe file) and BEACON_RUNS (where run folders go).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import logging
import os
import tempfile
from pathlib import Path


@functools.cache
def _demo():
    from beacon.app.layout import build_demo

    return build_demo()


def __getattr__(name):
    # `app.demo` (Gradio's reload mode, a Space's inspection) builds the page once, on first access.
    if name == "demo":
        return _demo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
           mcp: bool | None = None):
    """Serve the app; mcp=True also serves the typed API (beacon/app/api.py) as an MCP server, at /gradio_api/mcp/.
    It needs Gradio's mcp extra, not installed by default; None leaves it to GRADIO_MCP_SERVER."""
    if mcp and importlib.util.find_spec("mcp") is None:
        raise SystemExit("The MCP server needs Gradio's mcp extra: .venv/bin/python -m pip install "
                         "'gradio[mcp]==6.31.0' (docs/api.md).")
    import gradio as gr

    from beacon.app import cleanup
    from beacon.app.handlers import sweep_runs
    from beacon.app.layout import CSS
    from beacon.app.settings import MAX_UPLOAD_MB, QUEUE_SIZE, RUNS

    demo = _demo()
    RUNS.mkdir(parents=True, exist_ok=True)
    # Files a visitor's outputs return are copied into Gradio's cache, under a hash of their content,
    # and only those are served: RUNS itself is never served (no allowed_paths). Gradio copies only
    # from the working directory and the temp directory, so RUNS must lie under one of them.
    if not any(RUNS.is_relative_to(Path(p).resolve()) for p in (os.getcwd(), tempfile.gettempdir())):
        raise SystemExit(f"BEACON_RUNS={RUNS}: must lie under the working directory ({os.getcwd()}) or the temp "
                         f"directory ({tempfile.gettempdir()}), or Gradio cannot serve a run's downloads.")
    cleanup.start(sweep_runs, every_s=float(os.environ.get("BEACON_CLEANUP_EVERY_S") or 600))
    demo.queue(default_concurrency_limit=4, max_size=QUEUE_SIZE * 4)
    # When a share link cannot be made Gradio prints a long note; we say it in one line instead.
    with contextlib.redirect_stdout(io.StringIO()) if share else contextlib.nullcontext():
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
                    theme=gr.themes.Soft(), css=CSS, max_file_size=int(MAX_UPLOAD_MB * 2**20),
                    mcp_server=mcp or None)
    print(f"Beacon is running on {demo.local_url}", flush=True)
    if demo.mcp_server:
        print(f"MCP server (tools inject and ask): {demo.local_url}gradio_api/mcp/", flush=True)
    if share:
        print(f"Public link: {demo.share_url}" if demo.share_url else
              "Could not create a share link (Gradio's share server is unreachable); serving locally only.",
              flush=True)
    if block:
        demo.block_thread()
    return demo


def main(argv=None):
    ap = argparse.ArgumentParser(description="Beacon: teach a language model new facts with LoRA (web app).")
    ap.add_argument("--share", action="store_true", default=os.environ.get("BEACON_SHARE", "") in ("1", "true"),
                    help="ask Gradio for a public share link (env BEACON_SHARE=1)")
    ap.add_argument("--mcp", action="store_true", default=os.environ.get("BEACON_MCP", "") in ("1", "true"),
                    help="also serve the API as an MCP server (needs gradio[mcp]; env BEACON_MCP=1)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                    help="default 7860 (env GRADIO_SERVER_PORT)")
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                    help="0.0.0.0 to serve on the network (env GRADIO_SERVER_NAME)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    launch(a.host, a.port, a.share, mcp=a.mcp)


if __name__ == "__main__":
    main()
