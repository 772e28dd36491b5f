"""A Flask app on wasm-gw: JSON in and out, routing, error handlers, and a streamed
response. Its requirements are installed when it is built."""

from flask import Flask, Response, jsonify, request

app = Flask(__name__)
notes = {}


@app.get("/")
def index():
    return jsonify(app="flask", routes=["/notes", "/notes/<name>", "/count/<n>"])


@app.get("/notes")
def list_notes():
    return jsonify(sorted(notes))


@app.put("/notes/<name>")
def put_note(name):
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        return jsonify(error='send {"text": "..."}'), 400
    created = name not in notes
    notes[name] = body["text"]
    return jsonify(name=name, text=notes[name]), 201 if created else 200


@app.get("/notes/<name>")
def get_note(name):
    if name not in notes:
        return jsonify(error=f"no note {name}"), 404
    return jsonify(name=name, text=notes[name])


@app.get("/count/<int:n>")
def count(n):
    def lines():
        for i in range(n):
            yield f"{i}\n"

    return Response(lines(), mimetype="text/plain")


@app.get("/boom")
def boom():
    raise RuntimeError("flask view failed on purpose")
