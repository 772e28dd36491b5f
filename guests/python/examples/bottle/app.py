"""A Bottle app on wasm-gw, written as Bottle's tutorial writes one: routes with typed
wildcards, a form, JSON from dicts, a SimpleTemplate, error handlers and a generator body."""

import json

from bottle import Bottle, abort, request, response, template

app = Bottle()
notes = {}

PAGE = """<ul>
% for id, title in notes:
  <li>{{id}}: {{title}}</li>
% end
</ul>"""


@app.get("/")
def index():
    return {"app": "bottle", "notes": len(notes)}


@app.get("/hello/<name>")
def hello(name):
    return template("<h1>Hello, {{name}}!</h1>", name=name)


@app.post("/notes")
def add_note():
    title = request.forms.getunicode("title")
    if not title:
        abort(400, "a note needs a title")
    note_id = len(notes) + 1
    notes[note_id] = title
    response.status = 201
    return {"id": note_id, "title": title}


@app.get("/notes/<note_id:int>")
def get_note(note_id):
    if note_id not in notes:
        abort(404, f"no note {note_id}")
    return {"id": note_id, "title": notes[note_id]}


@app.get("/notes.html")
def list_notes():
    return template(PAGE, notes=sorted(notes.items()))


@app.get("/count/<n:int>")
def count(n):
    for i in range(n):
        yield f"{i}\n"


@app.get("/boom")
def boom():
    return 1 // 0


@app.error(404)
def not_found(error):
    response.content_type = "application/json"
    return json.dumps({"error": error.body})
