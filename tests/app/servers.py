"""Starting `pinsage serve` in the tests: a free port, uvicorn in a thread (the real HTTP stack,
in-process), and waiting for a server process to answer ``/healthz``."""

import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcessServer:
    """uvicorn in a thread on 127.0.0.1 serving ``app``; ``url``; ``stop()``."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def wait_until_serving(proc, url: str, seconds: float = 120.0) -> None:
    """Return once ``url/healthz`` answers 200; AssertionError (with the server's last output)
    when the process exits first or ``seconds`` pass (then it is killed)."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            out = proc.stderr or proc.stdout
            text = out.read() if out is not None else ""
            text = text.decode(errors="replace") if isinstance(text, bytes) else text
            raise AssertionError(f"pinsage serve exited with {proc.returncode}: {text[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"pinsage serve did not answer {url}/healthz in {seconds:.0f} s")
        time.sleep(0.1)
