"""wsgiref.validate's PEP 3333 checker, for test builds (`wasm-gw build-python --validate`).

It predates two things wasm-gw does, as Gunicorn does, and accepts them:
- wsgi.input_terminated lets an app read the body to its end with read() and no size, as
  werkzeug does;
- PATH_INFO is `*` for `OPTIONS *`, where the checker wants every PATH_INFO to begin with /.
"""

from wsgiref import validate


class _InputWrapper(validate.InputWrapper):
    def read(self, *args):
        if args:
            return super().read(*args)
        data = self.input.read()
        validate.assert_(type(data) is bytes)
        return data


_check_environ = validate.check_environ


def _check_environ_but_asterisk(environ):
    if environ.get("REQUEST_METHOD") == "OPTIONS" and environ.get("PATH_INFO") == "*":
        environ = dict(environ, PATH_INFO="/")
    _check_environ(environ)


validate.InputWrapper = _InputWrapper
validate.check_environ = _check_environ_but_asterisk
validator = validate.validator
