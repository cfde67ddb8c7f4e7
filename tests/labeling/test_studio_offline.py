"""Label Studio over its API, the parts that need no server: where the key comes from,
one line when the server is not there, and the command-line contract of ``ingest``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from activedet.cli import main
from activedet.errors import LabelingError
from activedet.labeling import studio


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_the_key_comes_from_the_environment_or_a_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(studio.KEY_ENV, raising=False)
    with pytest.raises(LabelingError, match=studio.KEY_ENV):
        studio.api_key()
    monkeypatch.setenv(studio.KEY_ENV, " abc123 ")
    assert studio.api_key() == "abc123"
    (tmp_path / "key").write_text("from-file\n# a comment line is ignored\n")
    assert studio.api_key(str(tmp_path / "key")) == "from-file"  # the file wins over the environment
    (tmp_path / "empty").write_text("")
    with pytest.raises(LabelingError, match="is empty"):
        studio.api_key(str(tmp_path / "empty"))
    with pytest.raises(LabelingError, match="nope"):
        studio.api_key(str(tmp_path / "nope"))


def test_a_server_that_is_not_there_is_one_line(monkeypatch) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(LabelingError, match=r"does not answer .* is it running\?") as e:
        studio.Studio(url, "k", timeout=5).check()
    assert len(str(e.value).splitlines()) == 1 and url in str(e.value)
    with pytest.raises(LabelingError, match="not an http"):
        studio.Studio("127.0.0.1:8080", "k")


def test_labels_of_a_labeling_config() -> None:
    config = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
              '<Label value="tree"/><Label background="red" value=\'car "x"\'/></RectangleLabels></View>')
    assert studio.labels_of(config) == ["tree", 'car "x"']


def test_ingest_takes_a_file_or_label_studio(tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["ingest", "--project", str(tmp_path)]) == 2
    assert "one of them" in capsys.readouterr().err
    (tmp_path / "x.json").write_text(json.dumps([]))
    assert main(["ingest", "--project", str(tmp_path), str(tmp_path / "x.json"), "--label-studio",
                 "http://127.0.0.1:1"]) == 2
    assert "one of them" in capsys.readouterr().err
