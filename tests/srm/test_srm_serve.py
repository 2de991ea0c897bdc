"""The HTTP server, talked to over 127.0.0.1 through a real uvicorn instance."""

import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from srm.scoring import SRMScorer
from srm.serve import create_app

from srm_test_utils import BAD, GOOD, PROMPTS, trained_tiny_srm


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    scorer = SRMScorer.from_pretrained(trained_tiny_srm(str(tmp_path_factory.mktemp("srm-serve"))), batch_size=4)
    port = _free_port()
    app = create_app(scorer, max_batch_size=8, max_request_bytes=4096)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):  # bounded wait for startup (<= 20 s)
        if server.started:
            break
        time.sleep(0.1)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_score_endpoint_returns_rewards_dimensions_and_gates(server_url):
    items = [{"prompt": p, "response": r} for p, r in zip(PROMPTS[:3], GOOD[:3])]
    response = httpx.post(f"{server_url}/score", json={"items": items}, timeout=30)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 3
    for result in results:
        assert isinstance(result["reward"], float)
        assert set(result["dimensions"]) == set(result["gates"])
        assert abs(sum(result["gates"].values()) - 1) < 1e-5
    health = httpx.get(f"{server_url}/health", timeout=10).json()
    assert health["status"] == "ok" and set(health["dimensions"]) == set(results[0]["dimensions"])


def test_get_reward_openrlhf_protocol(server_url):
    prompts = [PROMPTS[0], PROMPTS[0]]
    queries = [PROMPTS[0] + GOOD[0], PROMPTS[0] + BAD[0]]
    body = httpx.post(f"{server_url}/get_reward", json={"query": queries, "prompts": prompts}, timeout=30).json()
    assert len(body["rewards"]) == 2 and body["scores"] == body["rewards"]
    direct = httpx.post(f"{server_url}/score", timeout=30, json={"items": [
        {"prompt": PROMPTS[0], "response": GOOD[0]}, {"prompt": PROMPTS[0], "response": BAD[0]}]}).json()
    assert body["rewards"] == pytest.approx([r["reward"] for r in direct["results"]], abs=1e-6)
    assert len(body["extra_logs"]["gates"]) == 2
    without_prompts = httpx.post(f"{server_url}/get_reward", json={"query": ["just text"]}, timeout=30)
    assert without_prompts.status_code == 200 and len(without_prompts.json()["rewards"]) == 1


@pytest.mark.parametrize("payload, status, reason", [
    (b"{not json", 400, "malformed JSON"),
    (b'{"items": "nope"}', 400, "items"),
    (b'{"items": [{"prompt": 1, "response": "x"}]}', 400, "items[0]"),
    (b'{"items": []}', 400, "empty batch"),
    (json.dumps({"items": [{"prompt": "q", "response": "r"}] * 9}).encode(), 413, "exceeds the limit of 8"),
    (json.dumps({"items": [{"prompt": "q", "response": "r" * 5000}]}).encode(), 413, "bytes"),
])
def test_score_rejects_malformed_and_oversized_requests(server_url, payload, status, reason):
    response = httpx.post(f"{server_url}/score", content=payload, headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == status
    assert reason in response.json()["detail"]


def test_get_reward_rejects_bad_requests(server_url):
    bad_type = httpx.post(f"{server_url}/get_reward", json={"query": "not a list"}, timeout=30)
    assert bad_type.status_code == 400 and "query" in bad_type.json()["detail"]
    mismatch = httpx.post(f"{server_url}/get_reward", json={"query": ["a b"], "prompts": ["zzz"]}, timeout=30)
    assert mismatch.status_code == 400 and "does not start with" in mismatch.json()["detail"]
    too_many = httpx.post(f"{server_url}/get_reward", json={"query": ["x"] * 9}, timeout=30)
    assert too_many.status_code == 413
