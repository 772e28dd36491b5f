"""Serves any PEP 3333 application as a wasm-gw component.

The build puts the app's callable in a module `wasm_gw_app` as `application`; this module
implements the wasm-gw app world around it: a real environ dict, `wsgi.input` over the
host's input stream, `start_response` and `write` over the host's, and the returned
iterable streamed chunk by chunk.
"""

import sys
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import handler
from wit_world.imports import request, response

from wasm_gw_app import application

# Lines longer than this are read in pieces by readline() with no size.
_LINE_PIECE = 64 * 1024


class Input:
    """wsgi.input: reads the body from the host, never past its end."""

    def __init__(self, stream):
        self._stream = stream

    def _call(self, read, *args):
        try:
            return read(*args)
        except Err as error:
            raise OSError(f"reading the request body failed: {error.value}") from None

    def read(self, size=-1):
        if size is None or size < 0:
            return self._call(self._stream.read_to_end)
        if size == 0:
            return b""
        return self._call(self._stream.read, size)

    def readline(self, size=-1):
        if size is not None and size >= 0:
            return self._call(self._stream.read_line, size) if size else b""
        pieces = []
        while True:
            piece = self._call(self._stream.read_line, _LINE_PIECE)
            pieces.append(piece)
            if not piece or piece.endswith(b"\n"):
                return b"".join(pieces)

    def readlines(self, hint=-1):
        lines = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class Errors:
    """wsgi.errors: the host log, where each line is tagged with the request's id."""

    def write(self, text):
        sys.stderr.write(text)

    def writelines(self, lines):
        for line in lines:
            sys.stderr.write(line)

    def flush(self):
        sys.stderr.flush()


_ERRORS = Errors()


def _environ(meta, stream):
    environ = {
        "REQUEST_METHOD": meta.request_method,
        "SCRIPT_NAME": meta.script_name,
        "PATH_INFO": meta.path_info,
        "QUERY_STRING": meta.query_string,
        "SERVER_NAME": meta.server_name,
        "SERVER_PORT": str(meta.server_port),
        "SERVER_PROTOCOL": meta.server_protocol,
        "REMOTE_ADDR": meta.remote_addr,
        "REMOTE_PORT": str(meta.remote_port),
        "RAW_URI": meta.raw_uri,
        "REQUEST_URI": meta.raw_uri,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": meta.url_scheme,
        "wsgi.input": Input(stream),
        "wsgi.errors": _ERRORS,
        "wsgi.multithread": meta.multithread,
        "wsgi.multiprocess": meta.multiprocess,
        "wsgi.run_once": meta.run_once,
        # The host removes chunked framing and ends reads at the body's end.
        "wsgi.input_terminated": True,
        # An extension: every header line as received, in order, repeats included.
        "wasm_gw.headers": meta.headers,
    }
    if meta.content_type is not None:
        environ["CONTENT_TYPE"] = meta.content_type
    if meta.content_length is not None:
        environ["CONTENT_LENGTH"] = str(meta.content_length)
    environ.update(meta.cgi_headers)
    return environ


def _start_response(status, headers, exc_info=None):
    """PEP 3333's start_response; the host enforces when it may be called."""
    if exc_info is not None:
        try:
            reason = "".join(traceback.format_exception(*exc_info)).rstrip()
            try:
                response.start_response(status, list(headers), reason)
            except Err as error:
                if isinstance(error.value, response.ResponseError_AlreadyStarted):
                    # Too late to replace the response: PEP 3333 says re-raise.
                    raise exc_info[1].with_traceback(exc_info[2]) from None
                raise _refused("start_response", error) from None
        finally:
            exc_info = None
    else:
        try:
            response.start_response(status, list(headers), None)
        except Err as error:
            raise _refused("start_response", error) from None
    return _write


def _write(data):
    try:
        response.write(bytes(data))
    except Err as error:
        raise _refused("write", error) from None


def _refused(call, error):
    return OSError(f"the server refused {call}: {error.value}")


def _close(result):
    close = getattr(result, "close", None)
    if close is not None:
        close()


class Stream(handler.BodyStream):
    """The rest of the app's iterable, pulled by the host one chunk at a time."""

    def __init__(self, first, rest, result):
        self._first = first
        self._rest = rest
        self._result = result

    def next(self):
        if self._first is not None:
            chunk, self._first = self._first, None
            return chunk
        # An exception here traps: the host cuts the response short and replaces the
        # instance, rather than letting a truncated body pass for a whole one.
        with _logged():
            for chunk in self._rest:
                if chunk:
                    return bytes(chunk)
            return None

    def close(self):
        with _logged():
            _close(self._result)


class _logged:
    """Logs an exception's traceback before it traps, which would otherwise say only that
    Python raised."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        # An Err is the app's exception already formatted for the host, which logs it.
        if error is not None and not isinstance(error, Err):
            sys.stderr.write("".join(traceback.format_exception(kind, error, trace)))
            sys.stderr.flush()
        return False


class Handler(exports.Handler):
    def application(self, meta, stream):
        with _logged():
            try:
                return _serve(meta, stream)
            except MemoryError:
                # The instance may be in any state: let the host replace it.
                raise
            except Exception:
                raise Err(traceback.format_exc().rstrip())


def _serve(meta, stream):
    result = application(_environ(meta, stream), _start_response)
    try:
        if isinstance(result, (list, tuple)):
            body = handler.Body_Chunks([bytes(chunk) for chunk in result])
            _close(result)
            return body
        # Headers go out with the first non-empty chunk, so run the iterable that far now:
        # a generator may call start_response only once it starts.
        rest = iter(result)
        for chunk in rest:
            if chunk:
                return handler.Body_Stream(Stream(bytes(chunk), rest, result))
        _close(result)
        return handler.Body_Chunks([])
    except BaseException:
        _close(result)
        raise
