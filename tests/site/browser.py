"""Headless Chromium driven over the Chrome DevTools Protocol, through a pipe.

``--remote-debugging-pipe`` makes Chromium read protocol messages (JSON, each ended by
a NUL byte) from file descriptor 3 and write its own to descriptor 4: no port, no
websocket, no package beyond the standard library. :func:`visit` loads one page and
reports what a reader's browser would show: the console's errors, every request the
page made, the value of a JavaScript expression, and a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import attrs

TIMEOUT_S: Final = 60.0
VIEWPORT: Final = (1280, 900)
"""The page's width and height in CSS pixels, and so the screenshot's in pixels."""
_FIRST_FREE_FD: Final = 10  # above 3 and 4, which the child rebinds
_TRAMPOLINE: Final = (
    "import os, sys; reads, writes = int(sys.argv[1]), int(sys.argv[2]); "
    "os.dup2(reads, 3); os.dup2(writes, 4); os.close(reads); os.close(writes); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


class BrowserError(RuntimeError):
    """Chromium did not start, answered with an error, or did not answer in time."""


@attrs.frozen
class Visit:
    """What loading one page showed.

    Attributes:
        value: the value of the expression evaluated once the page had loaded.
        console_errors: console errors, uncaught exceptions and failed loads, one line each.
        requests: the URL of every request the page made, in order.
        screenshot: a PNG of the viewport, the element of the screenshot selector in view.
    """

    value: Any
    console_errors: tuple[str, ...]
    requests: tuple[str, ...]
    screenshot: bytes


class _Pipe:
    """One protocol connection: send commands, wait for their answers, keep the events."""

    def __init__(self, process: subprocess.Popen[bytes], write_fd: int, read_fd: int) -> None:
        self._process = process
        self._write_fd = write_fd
        self._read_fd = read_fd
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer within {TIMEOUT_S:g} s")
            ready, _, _ = select.select([self._read_fd], [], [], left)
            if ready:
                chunk = os.read(self._read_fd, 1 << 16)
                if not chunk:
                    raise BrowserError(f"Chromium closed the pipe (exit {self._process.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        found: dict[str, Any] = json.loads(message)
        return found

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its result; events that come first are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            answer = self._receive(deadline)
            if answer.get("id") != self._next_id:
                self.events.append(answer)
                continue
            if "error" in answer:
                raise BrowserError(f"{method}: {answer['error']}")
            result: dict[str, Any] = answer.get("result", {})
            return result

    def wait_for(self, method: str, session: str, since: int) -> None:
        """Wait for an event (``Page.loadEventFired``) of the session, among the events from
        number ``since`` on (those that came while a command waited for its answer count)."""
        deadline = time.monotonic() + TIMEOUT_S
        seen = since
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return
            seen = len(self.events)
            self.events.append(self._receive(deadline))


def _high(fd: int) -> int:
    """A copy of ``fd`` numbered 10 or above; ``fd`` itself is closed."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD, _FIRST_FREE_FD)
    os.close(fd)
    return copy


@contextmanager
def chromium(program: str) -> Iterator[_Pipe]:
    """A headless Chromium with a fresh profile, ended on exit."""
    to_child_read, to_child_write = (_high(fd) for fd in os.pipe())
    from_child_read, from_child_write = (_high(fd) for fd in os.pipe())
    with tempfile.TemporaryDirectory(prefix="modfsm-chromium-") as profile:
        arguments = [
            program,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
            "--hide-scrollbars",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--mute-audio",
            "about:blank",
        ]
        if os.geteuid() == 0:
            arguments.insert(1, "--no-sandbox")  # Chromium refuses to run as root with one
        # A one-line Python puts the pipe's ends on descriptors 3 and 4, where Chromium
        # expects them, and becomes Chromium (sh's redirections stop at descriptor 9).
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(to_child_read),
             str(from_child_write), *arguments],
            pass_fds=(to_child_read, from_child_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_child_read)
        os.close(from_child_write)
        try:
            yield _Pipe(process, to_child_write, from_child_read)
        finally:
            os.close(to_child_write)
            os.close(from_child_read)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _console_line(event: dict[str, Any], urls: dict[str, str]) -> str | None:
    """A console error, an uncaught exception or a failed load, as one line; else None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        args = params.get("args", [])
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
        return f"console.{params['type']}: {text}"
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        description = details.get("exception", {}).get("description", details.get("text"))
        return f"uncaught exception: {description}"
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('source')}: {entry.get('text')} ({entry.get('url', '')})"
    if method == "Network.loadingFailed" and not params.get("canceled"):
        url = urls.get(params.get("requestId", ""), "?")
        return f"failed load: {params.get('errorText')} ({url})"
    return None


def visit(program: str, url: str, expression: str, screenshot_of: str) -> Visit:
    """Load ``url`` in a fresh headless Chromium and report what it showed.

    Args:
        program: the Chromium executable.
        url: the page.
        expression: JavaScript evaluated after the load event; its value (a promise's,
            once settled) is returned by value: a JSON-able result.
        screenshot_of: a CSS selector scrolled into view before the screenshot.
    """
    with chromium(program) as pipe:
        target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
        session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.call(f"{domain}.enable", session)
        pipe.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=VIEWPORT[0],
            height=VIEWPORT[1],
            deviceScaleFactor=1,
            mobile=False,
        )
        navigated = len(pipe.events)
        pipe.call("Page.navigate", session, url=url)
        pipe.wait_for("Page.loadEventFired", session, since=navigated)
        result = pipe.call(
            "Runtime.evaluate",
            session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"the expression failed: {result['exceptionDetails']}")
        scroll = (
            f"document.querySelector({json.dumps(screenshot_of)})"
            "?.scrollIntoView({behavior: 'instant', block: 'start'})"
        )
        pipe.call("Runtime.evaluate", session, expression=scroll)
        shot = pipe.call("Page.captureScreenshot", session, format="png")
        pipe.call("Target.closeTarget", targetId=target)
        events = [e for e in pipe.events if e.get("sessionId") in (session, None)]
    urls = {
        e["params"]["requestId"]: e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    }
    errors = tuple(line for e in events if (line := _console_line(e, urls)) is not None)
    return Visit(
        value=result["result"].get("value"),
        console_errors=errors,
        requests=tuple(urls.values()),
        screenshot=base64.b64decode(shot["data"]),
    )
