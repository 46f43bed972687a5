"""make download: resumable, size-checked, idempotent; against a local server on 127.0.0.1."""

import http.server
import io
import json
import threading
import zipfile

import pytest

from vqa.download import download
from vqa.errors import VQAError


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def server():
    """A loopback HTTP server with Range support, serving a dict of name -> bytes."""
    served: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _body(self):
            name = self.path.rsplit("/", 1)[-1]
            return served.get(name)

        def do_HEAD(self):
            body = self._body()
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_GET(self):
            body = self._body()
            requests.append((self.path, self.headers.get("Range")))
            if body is None:
                self.send_error(404)
                return
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
                self.send_response(206)
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, requests
    httpd.shutdown()
    httpd.server_close()


def test_download_unpacks_official_layout_and_is_idempotent(tmp_path, server):
    url, served, requests = server
    questions = json.dumps({"questions": [{"image_id": 1, "question": "what?", "question_id": 1000}]}).encode()
    served["v2_Questions_Train_mscoco.zip"] = _zip_bytes({"v2_OpenEnded_mscoco_train2014_questions.json": questions})
    served["train2014.zip"] = _zip_bytes({"train2014/COCO_train2014_000000000001.jpg": b"jpeg bytes"})
    parts = ["v2_Questions_Train_mscoco.zip", "train2014.zip"]

    unpacked = download(tmp_path, base_url=url, parts=parts, log=lambda m: None)

    assert len(unpacked) == 2
    assert (tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json").read_bytes() == questions
    assert (tmp_path / "train2014" / "COCO_train2014_000000000001.jpg").read_bytes() == b"jpeg bytes"
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob("*.part"))
    count = len(requests)
    assert download(tmp_path, base_url=url, parts=parts, log=lambda m: None) == []
    assert len(requests) == count  # nothing fetched again


def test_download_resumes_a_partial_file_with_a_range_request(tmp_path, server):
    url, served, requests = server
    payload = _zip_bytes({"v2_OpenEnded_mscoco_val2014_questions.json": b"{}" * 5000})
    served["v2_Questions_Val_mscoco.zip"] = payload
    (tmp_path / "v2_Questions_Val_mscoco.zip.part").write_bytes(payload[:1000])

    download(tmp_path, base_url=url, parts=["v2_Questions_Val_mscoco.zip"], keep_zips=True, log=lambda m: None)

    assert requests == [("/v2_Questions_Val_mscoco.zip", "bytes=1000-")]
    assert (tmp_path / "v2_Questions_Val_mscoco.zip").read_bytes() == payload
    assert (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").read_bytes() == b"{}" * 5000


def test_download_reports_unreachable_server_in_one_sentence(tmp_path):
    with pytest.raises(VQAError, match="could not download .*resume"):
        download(tmp_path, base_url="http://127.0.0.1:9/", parts=["val2014.zip"], log=lambda m: None)


def test_download_rejects_corrupt_zip_and_removes_it(tmp_path, server):
    url, served, _ = server
    served["val2014.zip"] = b"this is not a zip"
    with pytest.raises(VQAError, match="not a valid zip"):
        download(tmp_path, base_url=url, parts=["val2014.zip"], log=lambda m: None)
    assert not (tmp_path / "val2014.zip").exists()


def test_download_unknown_part_is_named(tmp_path):
    with pytest.raises(VQAError, match="nonsense.zip"):
        download(tmp_path, parts=["nonsense.zip"], log=lambda m: None)
