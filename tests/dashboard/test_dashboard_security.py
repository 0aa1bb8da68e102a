"""The dashboard probed as an attacker would (issue 21): script injected through a trainer log, a
job error, a prompt, a batch name or a crafted link; symlinks planted in a job's folder; a second
local user; a foreign Host header; too many live pages; odd ids, tokens and file names.

A real redis-server, the dashboard as its own uvicorn process with no token set (it makes one),
jobs queued but never run (no worker: what the pages show is written by the test, as a trainer
would write it); the browser is Debian's chromium driven by Playwright.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import stat
import subprocess
import time
from urllib.parse import quote

import pytest

from tests.conftest import copy_example, free_port, wait_for
from tests.dashboard.test_dashboard import CHROMIUM, Board

PAYLOAD = "</script><script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"
SECRET = "SECRET-d41d8cd9-never-shown"


@pytest.fixture
def board(cluster) -> Board:
    cluster.env.pop("AUTOTRAIN_DASHBOARD_TOKEN", None)
    return Board(cluster, free_port())


def _request(board: Board, method: str, path: str, *, host: str | None = None,
             source: str | None = None, **headers: str | bytes) -> http.client.HTTPResponse:  # fmt: skip
    """One raw request (any Host, any header bytes); the response, its body unread."""
    connection = http.client.HTTPConnection("127.0.0.1", board.port, timeout=10,
                                            source_address=(source, 0) if source else None)  # fmt: skip
    connection.putrequest(method, path, skip_host=True)
    connection.putheader("Host", host or f"127.0.0.1:{board.port}")
    for name, value in headers.items():
        connection.putheader(name.replace("_", "-"), value)
    connection.endheaders()
    return connection.getresponse()


def _get(board: Board, path: str, **headers: str | bytes) -> tuple[int, str]:
    reply = _request(board, "GET", path, **headers)
    return reply.status, reply.read().decode("utf-8", "replace")


def _queued_job(cluster, tmp_path, name: str = "alpha") -> str:
    return cluster.submit(copy_example(tmp_path, name))


def test_a_token_is_made_kept_private_and_printed_as_a_link(board):
    path = board.cluster.root / ".autotrain" / "dashboard.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    link = f"http://127.0.0.1:{board.port}/?token={board.token}"
    log = board.cluster.root / "dashboard.log"
    assert link in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) & 0o077 == 0, "the log holding the link is private"
    assert _get(board, "/")[0] == 401, "no credential, no page"

    reply = _request(board, "GET", f"/jobs?token={board.token}&x=1")
    cookie = reply.getheader("set-cookie")
    assert reply.status == 303 and reply.getheader("location") == "/jobs?x=1"
    assert cookie.startswith(f"autotrain_session_{board.port}=") and board.token not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    behind_tls = _request(board, "GET", f"/?token={board.token}", X_Forwarded_Proto="https")
    assert "Secure" in behind_tls.getheader("set-cookie"), "a local TLS proxy: a Secure cookie"
    assert _get(board, "/", Cookie=cookie.split(";")[0])[0] == 200

    # a relative Location, whatever the path or Host says
    reply = _request(board, "GET", f"//evil.example/?token={board.token}")
    assert reply.getheader("location") == "/evil.example/", "never `//host`: another site"
    assert _request(board, "GET", f"/?token={board.token}", host="localhost").getheader(
        "location") == "/"  # fmt: skip


def test_a_wrong_token_in_a_link_gives_no_cookie_to_a_signed_in_user(cluster):
    cluster.env.pop("AUTOTRAIN_DASHBOARD_TOKEN", None)
    cluster.env.update(AUTOTRAIN_FLOWER_USER="admin", AUTOTRAIN_FLOWER_PASSWORD="flower-pw")
    board = Board(cluster, free_port())
    flower = {"Authorization": "Basic " + base64.b64encode(b"admin:flower-pw").decode()}
    assert _get(board, "/", **flower)[0] == 200
    for credential in (flower, {"Authorization": f"Bearer {board.token}"}):
        reply = _request(board, "GET", "/?token=anything", **credential)
        assert reply.status == 401 and reply.getheader("set-cookie") is None
    assert _get(board, "/", Authorization="Bearer anything")[0] == 401


def test_a_foreign_host_is_refused(board):
    bearer = {"Authorization": f"Bearer {board.token}"}
    assert _get(board, "/", host="evil.example", **bearer)[0] == 400
    assert _get(board, "/", host=f"evil.example:{board.port}", **bearer)[0] == 400
    assert _get(board, "/", host=f"localhost:{board.port}", **bearer)[0] == 200


def test_every_answer_carries_the_security_headers(board):
    for path, headers in [("/", {"Authorization": f"Bearer {board.token}"}), ("/", {}),
                          ("/static/dashboard.js", {}), ("/nowhere", {})]:  # fmt: skip
        reply = _request(board, "GET", path, **headers)
        policy = reply.getheader("content-security-policy") or ""
        assert "default-src 'none'" in policy and "script-src 'self'" in policy, path
        assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
        assert reply.getheader("x-frame-options") == "DENY"
        assert reply.getheader("x-content-type-options") == "nosniff"
        assert reply.getheader("referrer-policy") == "no-referrer"


def test_planted_symlinks_are_not_followed(board, tmp_path):
    cluster = board.cluster
    job_id = _queued_job(cluster, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{SECRET}\n{json.dumps({'token': SECRET})}\n")
    out = cluster.root / "output" / "alpha"
    for planted in ("log/trainer.log", "run.json", "sample_prompts.txt",
                    "model/sample/alpha_000010_00.png"):  # fmt: skip
        (out / planted).parent.mkdir(parents=True, exist_ok=True)
        (out / planted).symlink_to(secret)
    shutil.copy(
        copy_example(tmp_path / "img", "beta").glob("*.png").__next__(),
        out / "model" / "sample" / "alpha_000020_00.png",
    )  # a real sample beside them
    (out / "model" / "sample" / "alpha_000030_00.png").symlink_to(out / "run.json")
    (out / "model" / "sample" / "alpha_000040_00.png").symlink_to(tmp_path / "gone.png")
    auth = {"Authorization": f"Bearer {board.token}"}
    status, page = _get(board, f"/jobs/{job_id}", **auth)
    assert status == 200 and SECRET not in page
    assert "alpha_000020_00.png" in page, "the real sample is shown"
    assert "alpha_000010_00.png" not in page and "alpha_000040_00.png" not in page, "links are not"
    for name in ("alpha_000010_00.png", "alpha_000030_00.png"):
        status, body = _get(board, f"/jobs/{job_id}/samples/{name}", **auth)
        assert status == 404 and SECRET not in body
    reply = _request(board, "GET", f"/jobs/{job_id}/samples/alpha_000020_00.png", **auth)
    assert reply.status == 200 and reply.getheader("content-type") == "image/png"
    assert reply.read().startswith(b"\x89PNG")

    # a linked folder on the way is not followed either
    shutil.rmtree(out / "log")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "trainer.log").write_text(SECRET)
    (out / "log").symlink_to(tmp_path / "elsewhere")
    shutil.copy(out / "model" / "sample" / "alpha_000020_00.png",
                tmp_path / "elsewhere" / "alpha_000050_00.png")  # fmt: skip
    shutil.rmtree(out / "model" / "sample")
    (out / "model" / "sample").symlink_to(tmp_path / "elsewhere")
    status, page = _get(board, f"/jobs/{job_id}", **auth)
    assert status == 200 and SECRET not in page and "alpha_000050" not in page
    assert _get(board, f"/jobs/{job_id}/samples/alpha_000050_00.png", **auth)[0] == 404


def test_a_second_local_user_gets_nothing(board, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root, to run curl as the user nobody")
    if shutil.which("runuser") is None or shutil.which("curl") is None:
        pytest.skip("needs runuser and curl, to act as the user nobody")
    job_id = _queued_job(board.cluster, tmp_path)

    def curl_as_nobody(*args: str) -> str:
        run = subprocess.run(["runuser", "-u", "nobody", "--", "curl", "-s", "-o", "/dev/null",
                              "-w", "%{http_code}", "-H", "Cookie: autotrain_csrf=abc",
                              "-H", "X-CSRF-Token: abc", *args], capture_output=True, text=True,
                             timeout=30)  # fmt: skip
        return run.stdout

    assert curl_as_nobody("-X", "POST", f"{board.url}/jobs/{job_id}/hold") == "401"
    assert curl_as_nobody(f"{board.url}/jobs/{job_id}") == "401"
    assert curl_as_nobody(f"{board.url}/events?page=jobs") == "401"
    assert not board.cluster.store().get(job_id).held
    token_file = board.cluster.root / ".autotrain" / "dashboard.token"
    read = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(token_file)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert read.returncode != 0 and board.token not in read.stdout


def test_live_pages_are_capped_per_client_and_in_all(board):
    from autotrain.dashboard.server import STREAMS_IN_ALL, STREAMS_PER_CLIENT

    auth = {"Authorization": f"Bearer {board.token}"}
    held = [_request(board, "GET", "/events?page=jobs", **auth) for _ in range(STREAMS_PER_CLIENT)]
    assert all(r.status == 200 for r in held)
    refused = _request(board, "GET", "/events?page=jobs", **auth)
    assert refused.status == 503 and "Too many live pages" in refused.read().decode()
    assert _get(board, "/", **auth)[0] == 200, "pages still load"
    held.pop().close()
    wait_for(lambda: _request(board, "GET", "/events?page=fleet", **auth).status == 200, 10,
             "a closed live page to free its slot")  # fmt: skip
    for reply in held:
        reply.close()

    per_client = STREAMS_IN_ALL // STREAMS_PER_CLIENT
    time.sleep(1)  # the slots of the closed ones are given back
    sources = [f"127.0.0.{2 + i}" for i in range(per_client + 1)]
    held = [_request(board, "GET", "/events?page=fleet", source=s, **auth)
            for s in sources[:-1] for _ in range(STREAMS_PER_CLIENT)]  # fmt: skip
    try:
        assert all(r.status == 200 for r in held)
        refused = _request(board, "GET", "/events?page=fleet", source=sources[-1], **auth)
        assert refused.status == 503 and "live pages are open already" in refused.read().decode()
    finally:
        for reply in held:
            reply.close()


def test_odd_credentials_ids_and_names_get_a_4xx_with_a_message(board, tmp_path):
    job_id = _queued_job(board.cluster, tmp_path)
    auth = {"Authorization": f"Bearer {board.token}"}
    cookie = f"autotrain_session_{board.port}"
    assert _get(board, "/?token=%C3%A9%E2%82%AC")[0] == 401
    assert _get(board, "/", Authorization="Bearer \u00e9t\u00e9".encode())[0] == 401
    assert _get(board, "/", Cookie=f"{cookie}=\u00e9t\u00e9".encode())[0] == 401
    assert _get(board, "/", Authorization=b"Basic \xff\xfe")[0] == 401
    csrf = _request(board, "POST", f"/jobs/{job_id}/hold", **auth,
                    Cookie="autotrain_csrf=\u00e9".encode(), X_CSRF_Token=b"\xc3\xa8")  # fmt: skip
    assert csrf.status == 403 and b"CSRF" in csrf.read()
    for path in ["/jobs/20991231-000000-abcdef", "/jobs/abc:events", "/jobs/abc%3Aevents",
                 "/batches/b1:jobs", "/batches/b20991231-000000-ffff", "/events?page=job&key=a:b",
                 f"/jobs/{job_id}/samples/{'a' * 300}.png", f"/jobs/{'a' * 300}",
                 f"/jobs/{job_id}/samples/{quote('../../x.png')}"]:  # fmt: skip
        status, body = _get(board, path, **auth)
        assert status == 404 and body.strip(), f"{path}: {status} {body!r}"
    reply = _request(board, "POST", "/jobs/abc:events/hold", **auth,
                     Cookie="autotrain_csrf=abc", X_CSRF_Token="abc")  # fmt: skip
    assert reply.status == 404


def test_injected_script_runs_nowhere_in_a_browser(board, tmp_path):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    cluster = board.cluster
    job_id = _queued_job(cluster, tmp_path)
    cluster.store().update(job_id, error=f"CUDA error {PAYLOAD}")
    out = cluster.root / "output" / "alpha"
    (out / "log").mkdir(parents=True)
    (out / "log" / "trainer.log").write_text(f"step 1 loss 0.5\nepoch 1 {PAYLOAD}\n")
    (out / "sample_prompts.txt").write_text(f"a cat {PAYLOAD} --w 64\n")
    (out / "model" / "sample").mkdir(parents=True)
    shutil.copy(copy_example(tmp_path / "img", "beta").glob("*.png").__next__(),
                out / "model" / "sample" / "alpha_000010_00.png")  # fmt: skip
    sets = tmp_path / "sets"
    copy_example(sets, "gamma")
    cluster.cli("pipeline", "batch", "--datasets-dir", str(sets), "--profile", "TinyTest",
                "--name", f"night {PAYLOAD}", check=True)  # fmt: skip
    batch_id = next(j.spec.batch_id for j in cluster.store().list() if j.spec.batch_id)

    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            page = browser.new_context().new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(f"{board.url}/?token={board.token}")

            page.goto(f"{board.url}/jobs/{job_id}")
            page.wait_for_selector("#gallery h3")
            assert page.evaluate("window.__pwned") is None
            assert PAYLOAD in page.inner_text("#log")
            assert PAYLOAD in page.inner_text("#error")
            assert PAYLOAD in page.inner_text("#gallery h3")
            assert page.query_selector("img[src=x]") is None

            page.goto(f"{board.url}/batches/{batch_id}")
            page.wait_for_selector("#job-rows tr")
            assert page.evaluate("window.__pwned") is None
            assert PAYLOAD in page.inner_text("h1")

            page.goto(f"{board.url}/fleet")
            page.wait_for_selector("#workers tr")
            page.goto(f"{board.url}/")
            page.wait_for_selector(f'tr[data-id="{job_id}"]')
            blocked = [m for m in console if "Content Security Policy" in m]
            assert not blocked, f"the pages break their own CSP: {blocked}"

            for name in ("profile", "batch", "state"):  # a crafted link, from any web page
                page.goto(f"{board.url}/?{name}={quote(PAYLOAD)}")
                page.wait_for_selector("table.jobs")
                time.sleep(0.3)
                assert page.evaluate("window.__pwned") is None, name
                if name != "state":
                    assert page.input_value(f"input[name={name}]") == PAYLOAD, "shown as text"
        finally:
            browser.close()
