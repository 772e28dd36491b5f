"""Python apps that each do one wrong thing, for the host's fault tests: `/raise`, `/loop`,
`/alloc`, `/passwd` (tries to read /etc/passwd), `/own-source` (writes to its own module),
`/exit` (SystemExit), `/tuple-headers` (a PEP 3333 violation), `/stream-raise` (fails
halfway through a streamed body), `/bytes-body` (bytes, not a list of them), `/int-header`
(a header value that is not a str) and `/closing-list` (a list with close());
`/config?key=K` answers the wasi:config value set for K; `/fetch?url=U` GETs U through
wasm_gw_http, `/urlopen?url=U` through urllib.request on top of it. Anything else answers
200 with how many requests this instance has served."""

import sys

import wasm_gw_config
import urllib.request

import wasm_gw_http

wasm_gw_http.install_urllib()

served = 0


def application(environ, start_response):
    global served
    served += 1
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise ValueError("faulty Python app raises on purpose")
    if path == "/loop":
        while True:
            pass
    if path == "/alloc":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if path == "/exit":
        raise SystemExit(3)
    if path == "/fetch":
        url = environ["QUERY_STRING"].partition("url=")[2]
        try:
            response = wasm_gw_http.request("GET", url, timeout=10)
            answer = f"{response.status} {response.text()}"
        except wasm_gw_http.HTTPError as error:
            answer = f"{type(error).__name__}: {error}"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer.encode()]
    if path == "/urlopen":
        url = environ["QUERY_STRING"].partition("url=")[2]
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = f"{response.status} {response.read().decode()}"
        except OSError as error:
            answer = f"{type(error).__name__}: {error}"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer.encode()]
    if path == "/config":
        key = environ["QUERY_STRING"].partition("key=")[2]
        value = wasm_gw_config.get(key)
        start_response("200 OK", [("Content-Type", "text/plain")])
        answer = f"{key}={value}\n" if value is not None else f"{key} unset\n"
        return [answer.encode()]
    if path == "/passwd":
        try:
            with open("/etc/passwd") as file:
                answer = "allowed: " + file.readline()
        except OSError as why:
            answer = f"denied: {why}\n"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer.encode()]
    if path == "/own-source":
        # Its own module, read (tracebacks quote it) and then written to.
        with open(__file__) as file:
            answer = "read: " + file.readline()
        try:
            with open(__file__, "a") as file:
                file.write("# changed\n")
            answer += "written\n"
        except OSError as why:
            answer += f"not written: {why}\n"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer.encode()]
    if path == "/tuple-headers":
        # PEP 3333 wants a list; only the validator of a test build notices.
        start_response("200 OK", (("Content-Type", "text/plain"),))
        return [b"tuple\n"]
    if path == "/stream-raise":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return BrokenStream()
    if path == "/bytes-body":
        # A classic mistake: bytes, not a list of bytes, iterate as ints.
        start_response("200 OK", [("Content-Type", "text/plain")])
        return b"hi"
    if path == "/int-header":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", 2)])
        return [b"hi"]
    if path == "/closing-list":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingList([b"listed\n"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{served}\n".encode()]


class BrokenStream:
    """Fails after its first chunk; its close() must still run."""

    def __init__(self):
        self.sent = False

    def __iter__(self):
        return self

    def __next__(self):
        if not self.sent:
            self.sent = True
            return b"first\n"
        raise RuntimeError("the body failed halfway")

    def close(self):
        print("closed the broken stream", file=sys.stderr)


class ClosingList(list):
    """A list body with a close() that PEP 3333 says runs once."""

    def close(self):
        print("closed the list", file=sys.stderr)
