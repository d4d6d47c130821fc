"""Send the malformed-input corpus (tests/gateway/bad_input_corpus.py) to a running stack and
count the answers: by status, the 5xx among them, and the error bodies that are not
OpenAI-shaped. Loopback only, one request at a time, each case once.

    .venv/bin/python bench/fuzz_inputs.py                                 # http://127.0.0.1:8000
    .venv/bin/python bench/fuzz_inputs.py --base-url http://127.0.0.1:8731 --api-key sk-x \\
        --worker-pid 12345                                                # and the worker's RSS

Exit status 1 when any answer was a 5xx, not OpenAI-shaped, or the server stopped answering.
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import time
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gateway"))

from bad_input_corpus import Case, cases, problems, send  # noqa: E402  (the corpus lives with its test)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def rss_kib(pid: int) -> int | None:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def first_model(host: str, port: int, key: str) -> str:
    status, _, body = send(host, port, Case("models", "GET", "/v1/models"), key, timeout=10)
    if status != 200:
        raise SystemExit(f"GET /v1/models answered {status}: {body[:200]!r}")
    return json.loads(body)["data"][0]["id"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--model", default="", help="model id (default: the first of /v1/models)")
    ap.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="the server's max_body_bytes")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--limit", type=int, default=0, help="send only the first N cases")
    ap.add_argument("--worker-pid", type=int, default=0, help="report this process's VmRSS before and after")
    args = ap.parse_args()

    url = urllib.parse.urlsplit(args.base_url)
    host, port = url.hostname or "", url.port or 80
    if host not in LOOPBACK:
        raise SystemExit(f"refusing {host!r}: this script only talks to a server on this machine")
    model = args.model or first_model(host, port, args.api_key)
    corpus = list(cases(model, args.max_body_bytes))
    if args.limit:
        corpus = corpus[:args.limit]
    rss_before = rss_kib(args.worker_pid) if args.worker_pid else None

    statuses: collections.Counter = collections.Counter()
    bad: list[str] = []
    slowest = (0.0, "")
    t0 = time.perf_counter()
    for i, case in enumerate(corpus):
        t = time.perf_counter()
        try:
            status, headers, body = send(host, port, case, args.api_key, timeout=args.timeout)
        except OSError as e:   # closed without an answer, or timed out
            statuses[f"no answer ({type(e).__name__})"] += 1
            continue
        took = time.perf_counter() - t
        slowest = max(slowest, (took, case.name))
        statuses[status] += 1
        bad += [f"{case.name}: {p}" for p in problems(case, status, headers, body)]
        if (i + 1) % 200 == 0:
            print(f"  {i + 1}/{len(corpus)} sent", file=sys.stderr)
    elapsed = time.perf_counter() - t0

    health, _, _ = send(host, port, Case("health", "GET", "/health"), args.api_key, timeout=10)
    fivexx = sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)
    print(f"cases: {len(corpus)} in {elapsed:.1f} s (slowest {slowest[0]:.2f} s: {slowest[1]})")
    print("by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items(), key=lambda kv: str(kv[0]))))
    print(f"5xx: {fivexx}")
    print(f"answers with problems (5xx or not OpenAI-shaped): {len(bad)}")
    for line in bad[:30]:
        print("  " + line)
    print(f"GET /health afterwards: {health}")
    if args.worker_pid:
        after = rss_kib(args.worker_pid)
        print(f"worker {args.worker_pid} VmRSS: {rss_before} KiB before, {after} KiB after")
    return 1 if bad or health != 200 or any(not isinstance(s, int) for s in statuses) else 0


if __name__ == "__main__":
    raise SystemExit(main())
