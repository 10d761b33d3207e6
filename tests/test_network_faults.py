"""Network faults end to end, against the real local HTTP server (tests/hubserver.py): for each fault the exact
stderr line, the exit code, and how many times the request was tried (counted by the server, not by ckptcount).

Faults hit either the Hub API (the listing) or the CDN that serves the LFS file (the range read of the header).
Retry policy (ckptcount.sources.http): 429, 5xx, dropped, truncated or stalled bodies are tried MAX_TRIES = 5 times
in all; other 4xx fail at once (on the CDN, the probe's failure is redone once through the Hub at the resolved
commit, as for an expired signed URL: 2 tries; a 416 is a NetworkError, which is never redone: 1 try). Counts below are from FACTS.md (gpt2: 124,439,808 parameters)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptcount.sources import http as http_source
from ckptcount.cli import main

from hubserver import HubServer, load_dir

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LOGIN = "pass --token, set HF_TOKEN, or run `hf auth login`"
FILE = r"model\.safetensors$"
LISTING = r"^/api/models/org/m/"


@pytest.fixture
def hub(stand_in_hub, monkeypatch):
    stand_in_hub.add("org/m", load_dir(FIXTURES / "gpt2"))
    monkeypatch.setattr(http_source, "TIMEOUT", 0.4)
    return stand_in_hub


def _settled(hub: HubServer, host: str, match: str, stall: float = 0.0, wait: float = 3.0) -> int:
    """Requests the server logged for ``match`` once in-flight ones (a body stalled ``stall`` seconds) have ended."""
    time.sleep(stall)
    end = time.monotonic() + wait
    n = -1
    while time.monotonic() < end:
        now = len(hub.requests(host, match))
        if now == n:
            return n
        n = now
        time.sleep(0.3)
    return n


# (fault id, host, path regex, action, fault options, exit code, stderr line, tries the server saw)
PERMANENT = [
    ("401-listing", "hub", LISTING, "status", {"status": 401}, 1, f"Error: org/m: HTTP 401: not authorized; {LOGIN}", 1),
    ("403-listing", "hub", LISTING, "status", {"status": 403}, 1, f"Error: org/m: HTTP 403: not authorized; {LOGIN}", 1),
    ("404-listing", "hub", LISTING, "status", {"status": 404}, 1, "Error: org/m: HTTP 404", 1),
    ("429-listing", "hub", LISTING, "status", {"status": 429, "headers": {"Retry-After": "0"}}, 1, "Error: org/m: gave up after 5 tries (HTTP 429)", 5),
    ("500-listing", "hub", LISTING, "status", {"status": 500}, 1, "Error: org/m: gave up after 5 tries (HTTP 500)", 5),
    ("503-listing", "hub", LISTING, "status", {"status": 503}, 1, "Error: org/m: gave up after 5 tries (HTTP 503)", 5),
    ("401-file", "cdn", FILE, "status", {"status": 401}, 1, f"Error: org/m/model.safetensors: HTTP 401: not authorized; {LOGIN}", 2),
    ("403-file", "cdn", FILE, "status", {"status": 403}, 1, f"Error: org/m/model.safetensors: HTTP 403: not authorized; {LOGIN}", 2),
    ("404-file", "cdn", FILE, "status", {"status": 404}, 1, "Error: org/m/model.safetensors: HTTP 404", 2),
    ("416-file", "cdn", FILE, "status", {"status": 416, "headers": {"Content-Range": "bytes */14347"}}, 1, "Error: org/m/model.safetensors: HTTP 416", 1),
    ("429-file", "cdn", FILE, "status", {"status": 429, "headers": {"Retry-After": "0"}}, 1, "Error: org/m/model.safetensors: gave up after 5 tries (HTTP 429)", 5),
    ("500-file", "cdn", FILE, "status", {"status": 500}, 1, "Error: org/m/model.safetensors: gave up after 5 tries (HTTP 500)", 5),
    ("503-file", "cdn", FILE, "status", {"status": 503}, 1, "Error: org/m/model.safetensors: gave up after 5 tries (HTTP 503)", 5),
    ("reset-file", "cdn", FILE, "reset", {}, 1, "Error: org/m/model.safetensors: gave up after 5 tries (ReadError: [Errno 104] Connection reset by peer)", 5),
    ("truncated-file", "cdn", FILE, "truncate", {}, 1,
     "Error: org/m/model.safetensors: gave up after 5 tries (RemoteProtocolError: peer closed connection without sending complete message body (received 7173 bytes, expected 14347))", 5),
    ("slow-body-file", "cdn", FILE, "slow-body", {"seconds": 1.0}, 1, "Error: org/m/model.safetensors: gave up after 5 tries (ReadTimeout: timed out)", 5),
]


@pytest.mark.parametrize("fault, host, match, action, options, code, line, tries", PERMANENT, ids=[p[0] for p in PERMANENT])
def test_fault_that_never_ends(hub, fault, host, match, action, options, code, line, tries):
    hub.fault(match, action, times=99, host=host, **options)
    t0 = time.monotonic()
    r = CliRunner().invoke(main, ["org/m", "--format", "json"])
    assert (r.exit_code, r.stderr) == (code, line + "\n")
    obj = json.loads(r.stdout)["targets"][0]
    assert obj["error"] == line[len("Error: "):] and "parameters" not in obj
    assert _settled(hub, host, match, options.get("seconds", 0.0)) == tries
    assert time.monotonic() - t0 < 15


# (fault id, host, path regex, action, fault options, how often it strikes, tries the server saw, requests ckptcount counted)
TRANSIENT = [
    ("429-listing-once", "hub", LISTING, "status", {"status": 429, "headers": {"Retry-After": "0"}}, 1, 2, 6),
    ("503-file-twice", "cdn", FILE, "status", {"status": 503}, 2, 3, 9),
    ("500-file-once", "cdn", FILE, "status", {"status": 500}, 1, 2, 7),
    ("401-file-once", "cdn", FILE, "status", {"status": 401}, 1, 2, 7),  # an expired signed URL: back through the Hub
    ("reset-file-once", "cdn", FILE, "reset", {}, 1, 2, 7),
    ("truncated-file-once", "cdn", FILE, "truncate", {}, 1, 2, 7),
    ("slow-body-file-once", "cdn", FILE, "slow-body", {"seconds": 1.0}, 1, 2, 7),
]


@pytest.mark.parametrize("fault, host, match, action, options, times, tries, requests", TRANSIENT, ids=[t[0] for t in TRANSIENT])
def test_fault_that_passes_is_retried_and_the_count_is_exact(hub, fault, host, match, action, options, times, tries, requests):
    hub.fault(match, action, times=times, host=host, **options)
    r = CliRunner().invoke(main, ["org/m", "--format", "json"])
    assert (r.exit_code, r.stderr) == (0, "")
    obj = json.loads(r.stdout)["targets"][0]
    assert obj["parameters"] == 124_439_808
    assert obj["findings"] == []
    assert _settled(hub, host, match, options.get("seconds", 0.0)) == tries
    # listing + config + index probe (404) + file (302 + CDN 206) = 5, plus each failed try (a CDN try is 302 + reply)
    assert obj["hub"]["requests"] == requests


def test_range_ignored_reads_only_the_header_and_says_so(hub):
    hub.fault(FILE, "ignore-range", times=99)
    r = CliRunner().invoke(main, ["org/m", "--format", "json", "--strict"])
    assert (r.exit_code, r.stderr) == (4, "")  # a finding: --strict fails on it
    obj = json.loads(r.stdout)["targets"][0]
    assert obj["parameters"] == 124_439_808
    assert obj["findings"] == [{"kind": "range-ignored", "message": "org/m/model.safetensors: the server ignored Range and sent the whole file; read 14347 bytes, then closed the connection"}]
    assert [x.status for x in hub.requests("hub", FILE)] == [200] and hub.requests("cdn") == []


@pytest.mark.parametrize("content_range", ["bytes 0-99999/" + "9" * 5000, "bytes " + "0" * 5000 + "-99999/14347"])
def test_a_content_range_of_thousands_of_digits_is_a_one_line_error(hub, content_range):
    """Python's int() refuses more than 4,300 digits with a bare ValueError: the reply is refused before any int()."""
    hub.fault(FILE, "headers", times=99, host="cdn", headers={"Content-Range": content_range})
    r = CliRunner().invoke(main, ["org/m"])
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit))  # no traceback
    assert r.stderr.startswith("Error: org/m/model.safetensors: 206 with an invalid Content-Range") and r.stderr.count("\n") == 1


def test_a_failing_probe_is_not_retried_twice(hub):
    """Regression: a probe of model.safetensors that used up its 5 tries was redone at the resolved commit, 5 more
    (10 tries and twice the back-off for one file). It is now raised when the file is needed."""
    hub.fault(FILE, "status", times=99, host="cdn", status=503)
    r = CliRunner().invoke(main, ["org/m"])
    assert r.exit_code == 1
    assert len(hub.requests("cdn", FILE)) == http_source.MAX_TRIES
    assert len(hub.requests("hub", FILE)) == http_source.MAX_TRIES  # each try: the Hub's 302, then the CDN


def test_unneeded_file_that_fails_does_not_fail_the_audit(hub):
    """The probes run before the listing says what is there: a failing probe for a file the repo does not count
    (here the index, for a single-file repo) must not turn into an error."""
    hub.fault(r"model\.safetensors\.index\.json$", "status", times=99, status=503)
    r = CliRunner().invoke(main, ["org/m", "--format", "json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["targets"][0]["parameters"] == 124_439_808


def test_one_failing_repo_in_a_batch(hub):
    hub.add("org/ok", load_dir(FIXTURES / "gpt2-medium"))
    hub.fault(LISTING, "status", times=99, status=503)
    r = CliRunner().invoke(main, ["org/m", "org/ok", "--format", "jsonl", "--jobs", "2"])
    assert r.exit_code == 1
    assert r.stderr.splitlines() == ["Error: org/m: gave up after 5 tries (HTTP 503)", "ckptcount: 2 targets: 1 counted, 1 failed, 0 with findings"]
    objs = {o["target"]: o for o in map(json.loads, r.stdout.splitlines())}
    assert objs["org/ok"]["parameters"] == 354_823_168 and objs["org/m"]["error_kind"] == "network"
