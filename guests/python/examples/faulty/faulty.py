"""Python apps that each do one wrong thing, for the host's fault tests: `/raise`, `/loop`,
`/alloc`, `/passwd` (tries to read /etc/passwd), `/exit` (SystemExit), `/tuple-headers` (a
PEP 3333 violation) and `/stream-raise` (fails halfway through a streamed body). Anything else answers 200 with how many requests
this instance has served."""

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
    if path == "/passwd":
        try:
            with open("/etc/passwd") as file:
                answer = "allowed: " + file.readline()
        except OSError as why:
            answer = f"denied: {why}\n"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer.encode()]
    if path == "/tuple-headers":
        # PEP 3333 wants a list; only the validator of a test build notices.
        start_response("200 OK", (("Content-Type", "text/plain"),))
        return [b"tuple\n"]
    if path == "/stream-raise":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return broken_stream()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{served}\n".encode()]


def broken_stream():
    yield b"first\n"
    raise RuntimeError("the body failed halfway")
