"""A headless Chromium for tests, driven over the Chrome DevTools Protocol; stdlib only.

Not a test module: the MLflow UI tests import :class:`Chromium`. The browser is Debian's
``chromium`` (``.ci/run`` installs it), started with ``--remote-debugging-pipe``: it reads
commands from its fd 3 and writes replies and events to its fd 4, each message a JSON
object followed by a NUL byte. No port is opened, and the flags keep the browser off the
network (no component updates, sync, background fetches or QUIC) with a fresh profile that
is deleted on close.

    with Chromium() as browser:
        browser.open("http://127.0.0.1:5000/#/experiments/1/runs")
        browser.wait_for_text("sweep/", timeout=30)
        browser.screenshot(path)
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


class BrowserError(RuntimeError):
    """The browser answered a command with an error, did not answer in time, or exited."""


class Chromium:
    """One headless Chromium process with one page (tab).

    Every read from the browser has a deadline (``command_timeout`` seconds, enforced
    with ``select``), so a hung browser fails the test instead of hanging the suite.
    :meth:`close` (or leaving the ``with`` block) always ends the process and removes the
    profile folder and :attr:`log` (the browser's output, quoted when it exits early).
    No CDP domain is enabled, so few events arrive; those that do are skipped.
    """

    def __init__(
        self,
        executable: str = "chromium",
        window_size: tuple[int, int] = (1400, 1000),
        command_timeout: float = 30.0,
    ) -> None:
        self.command_timeout = command_timeout
        self.profile = Path(tempfile.mkdtemp(prefix="embsvd-chromium-"))
        self.log = self.profile.parent / f"{self.profile.name}.log"
        self._next_id = 0
        self._buffer = b""
        self.proc: subprocess.Popen | None = None
        self._to_browser: int | None = None
        self._from_browser: int | None = None
        self.session: str | None = None
        try:
            self._start(executable, window_size)
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
                "sessionId"
            ]
        except BaseException:
            self.close()
            raise

    def _start(self, executable: str, window_size: tuple[int, int]) -> None:
        commands_r, commands_w = os.pipe()  # we write, the browser reads on its fd 3
        replies_r, replies_w = os.pipe()  # the browser writes on its fd 4, we read

        def wire_fds() -> None:
            # In the child, before exec: move both ends out of the way first (one of them
            # may itself be fd 3 or 4), then put them on 3 and 4.
            commands = fcntl.fcntl(commands_r, fcntl.F_DUPFD, 10)
            replies = fcntl.fcntl(replies_w, fcntl.F_DUPFD, 10)
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        width, height = window_size
        args = [
            executable,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                args,
                preexec_fn=wire_fds,
                pass_fds=(3, 4),
                start_new_session=True,  # its own process group: close() can end helpers
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        os.close(commands_r)
        os.close(replies_w)
        self._to_browser, self._from_browser = commands_w, replies_r

    # -- the protocol ------------------------------------------------------------------

    def send(self, method: str, timeout: float | None = None, **params: Any) -> dict:
        """Send one command to the page's session (``Target.*``/``Browser.*`` go to the
        browser itself) and return its ``result``; events that arrive meanwhile are
        skipped."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._to_browser, data) :]
        except OSError as exc:
            raise BrowserError(f"{method}: the browser is gone ({exc}){self._log_tail()}") from exc
        deadline = time.monotonic() + (self.command_timeout if timeout is None else timeout)
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") != self._next_id:
                continue  # an event, or a reply to a command that timed out earlier
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    def _read(self, deadline: float, method: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"{method}: no reply from the browser in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"{method}: the browser exited{self._log_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _log_tail(self) -> str:
        try:
            return "\nchromium's log ends:\n" + self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    # -- what the tests use ------------------------------------------------------------

    def open(self, url: str) -> None:
        """Navigate the page to ``url``. It returns once the navigation has committed:
        use :meth:`wait_for_text` for what a single-page app renders later."""
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"could not open {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page; return its value (promises are awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript failed: {text}")
        return result["result"].get("value")

    def text(self) -> str:
        """The page's visible text (``document.body.innerText``)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *texts: str, timeout: float = 30.0, poll: float = 0.25) -> str:
        """Wait until the visible text contains every one of ``texts``; return that text.

        Raises AssertionError naming what is missing, with the end of the page's text."""
        deadline = time.monotonic() + timeout
        while True:
            page = self.text()
            missing = [t for t in texts if t not in page]
            if not missing:
                return page
            if time.monotonic() > deadline:
                url = self.evaluate("location.href")
                raise AssertionError(
                    f"after {timeout:.0f} s, {url} does not show {missing}; "
                    f"its text ends:\n{page[-3000:]}"
                )
            time.sleep(poll)

    def screenshot(self, path: str | os.PathLike) -> Path:
        """Save a PNG of the viewport to ``path`` (folders are created); return the path."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """End the browser (politely, then by force) and delete its profile and log."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(BrowserError, OSError):
                self.send("Browser.close", timeout=5)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            # renderer and zygote processes left behind, if any
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for fd in (self._to_browser, self._from_browser):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to_browser = self._from_browser = None
        shutil.rmtree(self.profile, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
