#!/usr/bin/env python3
"""A webhook receiver for trying prescale: checks each request's `Prescale-Signature`
and prints the actions that verify. Python's standard library only.

    python3 examples/receiver.py --port 9000 --secret-file config/webhook-secret

It answers 200 to a request whose signature verifies (and is at most 5 minutes old), 401
otherwise, and prints one line per request. It changes nothing: point a real platform's
receiver at the same contract (docs/webhooks.md). tests/receiver_check.rs runs it.
"""

import argparse
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def verify(secret: bytes, header: str, body: bytes, tolerance: int = 300) -> bool:
    """The check of docs/webhooks.md: any `v1` matches HMAC-SHA256(secret, t + "." + body)."""
    pairs = [p.split("=", 1) for p in header.split(",") if "=" in p]
    t = next((v for k, v in pairs if k == "t"), None)
    if t is None or not t.isdigit():
        return False
    mac = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    ok = any(hmac.compare_digest(mac, v) for k, v in pairs if k == "v1")
    return ok and abs(time.time() - int(t)) <= tolerance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret-file", required=True)
    args = parser.parse_args()
    with open(args.secret_file, "rb") as f:
        secret = f.read().rstrip()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            header = self.headers.get("Prescale-Signature", "")
            if verify(secret, header, body):
                self.send_response(200)
                self.end_headers()
                try:
                    action = json.loads(body)
                    what = f"{action.get('kind')} {action.get('target')}"
                    if action.get("kind") == "scale":
                        what += f": {action.get('from')} -> {action.get('to')}"
                except ValueError:
                    what = "a body that is not JSON"
                key = self.headers.get("Idempotency-Key", "-")
                print(f"valid {self.path} {what} (key {key})", flush=True)
            else:
                self.send_response(401)
                self.end_headers()
                print(f"INVALID signature on {self.path}: refused", flush=True)

        def log_message(self, *_args) -> None:
            pass  # one line per request is printed above

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
