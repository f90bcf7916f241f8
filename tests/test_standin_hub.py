"""The stand-in hub (tests/standin_hub.py) against the real huggingface_hub client.

The client reads HF_ENDPOINT when it is imported, so every client call runs in a fresh subprocess whose
environment points it at the stand-in hub and at a private cache, with proxies and HF_* settings of the
caller removed so nothing can leave the machine or read a user's token or cache.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest
from standin_hub import Repo, StandinHub, client_env, serve

DATASET = "sunweiwei/airrep-test"
MODEL = "sunweiwei/AirRep-Flan-Small"
# Different commits for the two repos, so a test cannot pass by reading the wrong one.
DATASET_SHA = hashlib.sha1(b"stand-in dataset commit").hexdigest()
MODEL_SHA = hashlib.sha1(b"stand-in model commit").hexdigest()
UNKNOWN_SHA = hashlib.sha1(b"a commit nobody made").hexdigest()

TRAIN = b"".join(
    json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}).encode() + b"\n" for i in range(20)
)
DATASET_FILES: dict[str, bytes] = {"README.md": b"# airrep-test\n", "flan/train.jsonl": TRAIN}
MODEL_BYTES: dict[str, bytes] = {
    "config.json": json.dumps({"model_type": "bert", "hidden_size": 8}).encode(),
    "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}).encode(),
    "tokenizer_config.json": json.dumps({"do_lower_case": True}).encode(),
    "special_tokens_map.json": json.dumps({"cls_token": "[CLS]"}).encode(),
    "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n",
}
WEIGHTS = bytes(range(256)) * 40  # any bytes do: nothing parses them
CLIENT_TIMEOUT_S = 120  # generous: a loaded 2-core machine may take seconds just to import the client


@pytest.fixture
def hub(tmp_path: Path):
    weights = tmp_path / "served" / "model.safetensors"  # one file served from disk, to cover Path content
    weights.parent.mkdir()
    weights.write_bytes(WEIGHTS)
    repos = [
        Repo(repo_id=DATASET, repo_type="dataset", files=dict(DATASET_FILES), sha=DATASET_SHA),
        Repo(
            repo_id=MODEL,
            repo_type="model",
            files={**MODEL_BYTES, "model.safetensors": weights},
            sha=MODEL_SHA,
        ),
    ]
    with serve(repos) as running:
        yield running


def run_client(hub: StandinHub, tmp_path: Path, script: str, **args: object) -> dict:
    """Run ``script`` (which reads ``ARGS`` and sets ``result``) in a subprocess pointed at ``hub``."""
    env = client_env(hub, tmp_path)
    program = "import json, sys\nARGS = json.loads(sys.argv[1])\n" + script + "\nprint(json.dumps(result))\n"
    done = subprocess.run(
        [sys.executable, "-c", program, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    assert done.returncode == 0, f"client failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dataset_info_gives_the_served_commit(hub: StandinHub, tmp_path: Path) -> None:
    script = """
from huggingface_hub import HfApi
info = HfApi().dataset_info(ARGS["repo"], revision="main")
bare = HfApi().dataset_info(ARGS["repo"])  # no revision: the client calls the route without /revision/
blobs = HfApi().dataset_info(ARGS["repo"], revision=info.sha, files_metadata=True)
result = {
    "id": info.id, "sha": info.sha, "bare_sha": bare.sha, "private": info.private,
    "siblings": [s.rfilename for s in info.siblings],
    "sizes": {s.rfilename: s.size for s in blobs.siblings},
    "modified": info.last_modified.isoformat(),
}
"""
    result = run_client(hub, tmp_path, script, repo=DATASET)
    assert result["id"] == DATASET
    assert result["sha"] == result["bare_sha"] == DATASET_SHA
    assert result["private"] is False
    assert sorted(result["siblings"]) == sorted(DATASET_FILES)
    assert result["sizes"] == {path: len(content) for path, content in DATASET_FILES.items()}
    assert result["modified"].startswith("2024-01-01")
    assert ("GET", f"/api/datasets/{DATASET}/revision/main") in hub.requests
    assert ("GET", f"/api/datasets/{DATASET}") in hub.requests


def test_hf_hub_download_returns_the_served_bytes(hub: StandinHub, tmp_path: Path) -> None:
    script = """
from huggingface_hub import hf_hub_download
first = hf_hub_download(ARGS["repo"], "flan/train.jsonl", repo_type="dataset", revision=ARGS["sha"])
again = hf_hub_download(ARGS["repo"], "flan/train.jsonl", repo_type="dataset", revision="main")
result = {"path": first, "again": again}
"""
    result = run_client(hub, tmp_path, script, repo=DATASET, sha=DATASET_SHA)
    assert Path(result["path"]).read_bytes() == TRAIN
    assert result["again"] == result["path"]  # "main" resolves to the same commit, so the same cache entry
    assert f"/snapshots/{DATASET_SHA}/flan/train.jsonl" in Path(result["path"]).as_posix()
    resolve = f"/datasets/{DATASET}/resolve/{DATASET_SHA}/flan/train.jsonl"
    assert ("HEAD", resolve) in hub.requests
    assert hub.requests.count(("GET", resolve)) == 1  # the second call finds the blob cached


def test_snapshot_download_fetches_every_served_file(hub: StandinHub, tmp_path: Path) -> None:
    script = """
from huggingface_hub import snapshot_download
by_sha = snapshot_download(ARGS["repo"], revision=ARGS["sha"])
by_branch = snapshot_download(ARGS["repo"], revision="main")
result = {"by_sha": by_sha, "by_branch": by_branch}
"""
    result = run_client(hub, tmp_path, script, repo=MODEL, sha=MODEL_SHA)
    folder = Path(result["by_sha"])
    assert folder.name == MODEL_SHA
    assert result["by_branch"] == result["by_sha"]
    served = {**MODEL_BYTES, "model.safetensors": WEIGHTS}
    on_disk = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == served
    # In 2.5.0 snapshot_download lists files through the tree API, not the info's siblings; a sha
    # revision skips the info call, and "main" needs it only to resolve the commit.
    assert ("GET", f"/api/models/{MODEL}/tree/{MODEL_SHA}") in hub.requests
    assert ("GET", f"/api/models/{MODEL}/revision/main") in hub.requests
    assert all(("GET", f"/{MODEL}/resolve/{MODEL_SHA}/{path}") in hub.requests for path in served)


def test_model_info_gives_the_served_commit(hub: StandinHub, tmp_path: Path) -> None:
    script = """
from huggingface_hub import HfApi
info = HfApi().model_info(ARGS["repo"], revision="main")
result = {"id": info.id, "sha": info.sha, "siblings": [s.rfilename for s in info.siblings]}
"""
    result = run_client(hub, tmp_path, script, repo=MODEL)
    assert result["id"] == MODEL
    assert result["sha"] == MODEL_SHA
    assert sorted(result["siblings"]) == sorted([*MODEL_BYTES, "model.safetensors"])


def test_unknown_revision_repo_and_file_raise_the_clients_errors(hub: StandinHub, tmp_path: Path) -> None:
    script = """
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

def error_of(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except Exception as error:
        return type(error).__name__
    return "no error"

api = HfApi()
result = {
    "info_revision": error_of(api.dataset_info, ARGS["dataset"], revision="no-such-branch"),
    "info_repo": error_of(api.dataset_info, "nobody/nothing", revision="main"),
    "model_repo_as_dataset": error_of(api.dataset_info, ARGS["model"]),
    "download_revision": error_of(
        hf_hub_download, ARGS["dataset"], "flan/train.jsonl", repo_type="dataset",
        revision=ARGS["unknown_sha"],
    ),
    "download_repo": error_of(hf_hub_download, "nobody/nothing", "config.json"),
    "download_file": error_of(hf_hub_download, ARGS["model"], "missing.bin", revision=ARGS["sha"]),
    "snapshot_revision": error_of(snapshot_download, ARGS["model"], revision="v9"),
    "snapshot_sha": error_of(snapshot_download, ARGS["model"], revision=ARGS["unknown_sha"]),
    "snapshot_repo": error_of(snapshot_download, "nobody/nothing"),
}
"""
    result = run_client(
        hub, tmp_path, script, dataset=DATASET, model=MODEL, sha=MODEL_SHA, unknown_sha=UNKNOWN_SHA
    )
    assert result == {
        "info_revision": "RevisionNotFoundError",
        "info_repo": "RepositoryNotFoundError",
        "model_repo_as_dataset": "RepositoryNotFoundError",
        "download_revision": "RevisionNotFoundError",
        "download_repo": "RepositoryNotFoundError",
        "download_file": "RemoteEntryNotFoundError",
        "snapshot_revision": "RevisionNotFoundError",
        "snapshot_sha": "RevisionNotFoundError",
        "snapshot_repo": "RepositoryNotFoundError",
    }


def test_resolve_headers_and_ranges(hub: StandinHub) -> None:
    """The headers file_download's metadata step reads, checked without the client."""
    port = int(hub.url.rsplit(":", 1)[1])
    path = f"/{MODEL}/resolve/main/model.safetensors"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
    try:
        connection.request("HEAD", path)
        head = connection.getresponse()
        head.read()
        assert head.status == 200
        assert head.headers["X-Repo-Commit"] == MODEL_SHA
        assert head.headers["Content-Length"] == str(len(WEIGHTS))
        etag = head.headers["ETag"]
        assert etag.startswith('"') and etag.endswith('"') and len(etag) == 42
        # The same keep-alive connection serves the next request: a resume from byte 100.
        connection.request("GET", path, headers={"Range": "bytes=100-"})
        part = connection.getresponse()
        assert part.status == 206
        assert part.read() == WEIGHTS[100:]
        assert part.headers["Content-Range"] == f"bytes 100-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
        connection.request("GET", path, headers={"Range": f"bytes={len(WEIGHTS)}-"})
        beyond = connection.getresponse()
        beyond.read()
        assert beyond.status == 416
        connection.request("GET", f"/{MODEL}/resolve/main/nothing.bin")
        missing = connection.getresponse()
        assert json.loads(missing.read())["error"]
        assert (missing.status, missing.headers["X-Error-Code"]) == (404, "EntryNotFound")
    finally:
        connection.close()
    assert hub.requests[0] == ("HEAD", path)
