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
from wit_world.imports import response



def _import_every_codec():
    """Imports the standard library's codecs while the component is built, so that they
    are in its snapshot. `codecs.lookup` imports a codec's module the first time its name
    is asked for, which an app does at request time (werkzeug's routing asks for "idna",
    Django for "unicode_escape"), and then the standard library's files are not there:
    the app only has what was imported while it was built."""
    import encodings
    import importlib
    import pkgutil

    for codec in pkgutil.iter_modules(encodings.__path__):
        try:
            importlib.import_module("encodings." + codec.name)
        except Exception:
            # Another platform's codec (mbcs, oem): no app here can use it.
            pass


_import_every_codec()


def _posix_stand_ins():
    """What WASI lacks of POSIX that popular packages call at import: users and groups.
    A sandbox has no users, so each id is nobody's, 65534, as a process in a user namespace
    sees an id it has no mapping for (`pkg_resources` and `platformdirs` ask for them)."""
    import os

    for name in ("getuid", "geteuid", "getgid", "getegid"):
        if not hasattr(os, name):
            setattr(os, name, lambda: 65534)
    if not hasattr(os, "getgroups"):
        os.getgroups = lambda: []


_posix_stand_ins()

from wasm_gw_app import application  # noqa: E402

# Parts of the standard library no web app can use here: GUI, REPL and install tools.
_LEFT_OUT = {"__pycache__", "idlelib", "tkinter", "turtledemo", "ensurepip", "pydoc_data",
             "site-packages", "_pyrepl", "venv"}


def _copy_standard_library(source="/python", target="/0/.stdlib"):
    """Copies the standard library, which componentize-py mounts at /python only while it
    builds, into this bridge's build directory, where `wasm-gw build-python` packs it into
    the component: serving mounts it back at /python, read-only, for the modules an app
    imports only at request time (runs once, while the component is built)."""
    import os
    import shutil

    for root, dirs, files in os.walk(source):
        dirs[:] = [name for name in dirs
                   if name not in _LEFT_OUT and not name.startswith("config-")]
        into = target + root[len(source):]
        os.makedirs(into, exist_ok=True)
        for name in files:
            shutil.copyfile(os.path.join(root, name), os.path.join(into, name))


_copy_standard_library()

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


# Header name as sent -> its CGI key, or "" for one left out. Bounded: a client could send
# a new name with each request.
_CGI_KEYS = {}


def _cgi_key(name):
    """PEP 3333 and CGI: HTTP_ + the name upper-cased with - as _. Content-Type and
    Content-Length have keys of their own, and a name holding _ is left out, so that
    X_Forwarded_For cannot pose as X-Forwarded-For."""
    key = "HTTP_" + name.upper().replace("-", "_")
    if "_" in name or key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        key = ""
    # Names of ordinary length only: 512 long ones would hold megabytes for good.
    if len(_CGI_KEYS) < 512 and len(name) <= 64:
        _CGI_KEYS[name] = key
    return key


def _environ(meta, stream):
    # Each string ends with U+0100, which no native string holds: one split in C.
    strings = meta.text.split("\u0100")
    # wit's `variable`, in its order.
    (method, script_name, path_info, query_string, content_type, server_name, protocol,
     remote_addr, raw_uri, scheme) = strings[:10]
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": query_string,
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(meta.server_port),
        "SERVER_PROTOCOL": protocol,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": str(meta.remote_port),
        "RAW_URI": raw_uri,
        "REQUEST_URI": raw_uri,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": Input(stream),
        "wsgi.errors": _ERRORS,
        "wsgi.multithread": meta.multithread,
        "wsgi.multiprocess": meta.multiprocess,
        "wsgi.run_once": meta.run_once,
        # The host removes chunked framing and ends reads at the body's end.
        "wsgi.input_terminated": True,
    }
    if meta.has_content_type:
        environ["CONTENT_TYPE"] = content_type
    if meta.content_length is not None:
        environ["CONTENT_LENGTH"] = str(meta.content_length)
    first_line = 10
    if meta.server_variables:
        # mod_ssl's variables on TLS; none starts HTTP_, so no header can replace one.
        first_line += 2 * meta.server_variables
        environ.update(zip(strings[10:first_line:2], strings[11:first_line:2]))
    # The lines, as (name, value); the empty string after the last separator is none.
    pieces = iter(strings[first_line:-1])
    lines = list(zip(pieces, pieces))
    # An extension: every header line as received, in order, repeats included.
    environ["wasm_gw.headers"] = lines
    # Each header name's CGI key is worked out once per instance.
    known = _CGI_KEYS.get
    for name, value in lines:
        key = known(name)
        if key is None:
            key = _cgi_key(name)
        if key:
            # RFC 9110 5.3: a repeated header's values joined with commas.
            joined = environ.get(key)
            environ[key] = value if joined is None else joined + "," + value
    return environ


def _bytes(data, what):
    """`data` as bytes, if it is bytes-like. bytes(5) would be five NULs, and bytes("x") an
    error far from its cause, so anything else is the app's TypeError, named here."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes, not {type(data).__name__}")


def _check_head(status, headers):
    """PEP 3333's types for start_response, checked in Python, where the app sees the
    error, rather than when the values cross into the host."""
    if type(status) is not str:
        raise TypeError(f"the status must be a str, not {type(status).__name__}")
    if type(headers) is not list:
        raise TypeError(f"the headers must be a list, not {type(headers).__name__}")
    for header in headers:
        if type(header) is not tuple or len(header) != 2:
            raise TypeError(f"each header must be a (name, value) tuple, not {header!r}")
        name, value = header
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"header names and values must be str: {header!r}")


def _start_response(status, headers, exc_info=None):
    """PEP 3333's start_response; the host enforces when it may be called."""
    _check_head(status, headers)
    reason = None
    if exc_info is not None:
        reason = "".join(traceback.format_exception(*exc_info)).rstrip()
    try:
        response.start_response(status, headers, reason)
        refusal = None
    except Err as error:
        refusal = error.value
    if refusal is None:
        return _write
    if exc_info is not None and isinstance(refusal, response.ResponseError_AlreadyStarted):
        # Too late to replace the response: PEP 3333 says re-raise, chain and all.
        try:
            raise exc_info[1].with_traceback(exc_info[2])
        finally:
            exc_info = None
    raise _refused("start_response", refusal)


def _write(data):
    data = _bytes(data, "write()'s argument")
    try:
        response.write(data)
        return
    except Err as error:
        refusal = error.value
    raise _refused("write", refusal)


def _refused(call, refusal):
    return OSError(f"the server refused {call}: {refusal}")


class _Result:
    """The app's iterable, closed exactly once, whatever happens."""

    def __init__(self, result):
        self.result = result
        self._closed = False

    def close(self):
        if self._closed:
            return
        self._closed = True
        close = getattr(self.result, "close", None)
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
        try:
            for chunk in self._rest:
                if chunk:
                    return _bytes(chunk, "each chunk of the body")
            return None
        except BaseException:
            # This traps: the host cuts the response short and replaces the instance, rather
            # than letting a truncated body pass for a whole one. The instance will not get
            # to call close() afterwards, so call it now.
            _log_exception()
            try:
                self._result.close()
            except BaseException:
                _log_exception()
            raise

    def close(self):
        try:
            self._result.close()
        except BaseException:
            _log_exception()
            raise


def _log_exception():
    """Logs the exception being handled: a trap would only say that Python raised."""
    sys.stderr.write(traceback.format_exc())
    sys.stderr.flush()


class Handler(exports.Handler):
    def application(self, meta, stream):
        try:
            return _serve(meta, stream)
        except MemoryError:
            # The instance may be in any state: let the host replace it.
            _log_exception()
            raise
        except Exception:
            raise Err(traceback.format_exc().rstrip())
        except BaseException:
            # SystemExit and the like end the instance.
            _log_exception()
            raise


def _serve(meta, stream):
    result = _Result(application(_environ(meta, stream), _start_response))
    try:
        if isinstance(result.result, (list, tuple)):
            chunks = [_bytes(chunk, "each chunk of the body") for chunk in result.result]
            result.close()
            return handler.Body_Chunks(chunks)
        # Headers go out with the first non-empty chunk, so run the iterable that far now:
        # a generator may call start_response only once it starts.
        rest = iter(result.result)
        for chunk in rest:
            if chunk:
                first = _bytes(chunk, "each chunk of the body")
                return handler.Body_Stream(Stream(first, rest, result))
        result.close()
        return handler.Body_Chunks([])
    except BaseException:
        result.close()
        raise
