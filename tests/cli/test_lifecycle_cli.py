"""`padim registry`, `padim records` and `padim tokens` as users type them, on a catalogue
folder: the walk-through of docs/lifecycle.md, and one-line errors for mistakes."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("sqlalchemy")

from padim.cli import main
from padim.lifecycle.database import open_catalogue
from padim.lifecycle.records import Entry, RecordBook


def test_register_promote_rollback_and_the_audit_trail(model_file, tmp_path, capsys):
    cat = ["--catalogue", str(tmp_path / "cat")]
    evaluation = tmp_path / "metrics.json"
    evaluation.write_text(json.dumps({"image_auroc": 0.99}))
    assert main(["registry", "register", "bottle", str(model_file), *cat, "--promote"]) == 0
    args = ["registry", "register", "bottle", str(model_file), "--parent", "1"]
    assert main([*args, "--note", "more images", "--evaluation", str(evaluation), *cat]) == 0
    assert main(["registry", "promote", "bottle", "v2", *cat, "--actor", "ben"]) == 0
    out = capsys.readouterr().out
    assert "version 1" in out and "production -> version 2" in out
    assert main(["registry", "versions", "bottle", *cat]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].startswith("v2 [production] from v1") and "more images" in listing[1]
    assert main(["registry", "versions", "bottle", "--json", *cat]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["versions"][1]["evaluation"] == {"image_auroc": 0.99}
    assert main(["registry", "rollback", "bottle", *cat]) == 0
    assert "production -> version 1" in capsys.readouterr().out
    assert main(["registry", "events", "bottle", *cat]) == 0
    trail = capsys.readouterr().out.splitlines()
    assert " promote " in trail[-2] and "ben" in trail[-2] and " rollback " in trail[-1]


def test_tokens_and_records(tmp_path, capsys):
    cat = ["--catalogue", str(tmp_path / "cat")]
    assert main(["tokens", "create", "line3", "--role", "engineer", *cat]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("padim_") and len(token) > 40
    assert main(["tokens", "list", *cat]) == 0
    assert "line3" in (listed := capsys.readouterr().out) and token not in listed
    assert main(["tokens", "revoke", "line3", *cat]) == 0
    assert main(["tokens", "revoke", "line3", *cat]) == 1
    assert "no active token" in capsys.readouterr().err
    book = RecordBook(open_catalogue(tmp_path / "cat"))
    for i, verdict in enumerate(["good", "anomalous", "good"]):
        book.write([Entry("cap", None, "m", "t", f"{i}.png", i, 0.1, 1.0, verdict, [], "ab" * 32)])
    assert main(["records", "list", "--verdict", "anomalous", *cat]) == 0
    assert "1.png" in capsys.readouterr().out
    assert main(["records", "export", str(tmp_path / "r.csv"), "--product", "cap", *cat]) == 0
    with open(tmp_path / "r.csv", newline="") as fh:
        assert [r["name"] for r in csv.DictReader(fh)] == ["2.png", "1.png", "0.png"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["registry", "promote", "bottle", "3"], "no product|no version"),
        (["registry", "rollback", "bottle"], "no product|no earlier"),
        (["registry", "register", "../x", "{model}"], "product name"),
        (["registry", "register", "x", "{missing}"], "not found|no such"),
        (["records", "list", "--since", "yesterday"], "ISO time"),
        (["records", "export", "{folder}"], "folder"),
        (["tokens", "create", "bad name"], "token name"),
        (["serve", "--product", "bottle", "{model}"], "model files .* or --product"),
        (["serve", "--product", "bottle"], "no production version"),
        (["serve", "--studio", "{model}"], "give no model files"),
        (["serve", "--studio", "--workers", "2"], "one process"),
        (["serve", "--studio", "--import-root", "{missing}"], "not a folder"),
    ],
)
def test_mistakes_are_one_line_errors(argv, words, model_file, tmp_path, capsys):
    import re

    subs = {"{model}": str(model_file), "{missing}": str(tmp_path / "x.safetensors")}
    subs["{folder}"] = str(tmp_path)
    argv = [subs.get(a, a) for a in argv] + ["--catalogue", str(tmp_path / "cat")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("padim: error:") and err.count("\n") == 1, err
    assert re.search(words, err), err
