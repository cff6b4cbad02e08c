#!/usr/bin/env python3
"""A webhook receiver for trying prescale: verifies each request with the Standard Webhooks
library and prints the actions that verify.

    pip install standardwebhooks
    python3 examples/receiver.py --port 9000 --secret-file config/webhook-secret

The secret file holds the secret as prescale is configured with it: a `whsec_<base64>`
secret is handed to the library unchanged, any other one as `whsec_` + its base64 (see
docs/webhooks.md, "The secret's format"). A request verifies when one of its
`webhook-signature` entries matches and its `webhook-timestamp` is at most 5 minutes old
(the library's rule): it is answered 200; anything else 401. One line is printed per
request. It changes nothing: point a real platform's receiver at the same contract.
tests/receiver_check.rs runs it.
"""

import argparse
import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError:
    sys.exit("examples/receiver.py needs the Standard Webhooks library: pip install standardwebhooks")


def library_secret(secret: bytes) -> str:
    """The secret as the library takes it."""
    if secret.startswith(b"whsec_"):
        return secret.decode()
    return "whsec_" + base64.b64encode(secret).decode()


def describe(body: bytes) -> str:
    action = json.loads(body) if body else {}
    what = f"{action.get('kind')} {action.get('target')}"
    if action.get("kind") == "scale":
        what += f": {action.get('from')} -> {action.get('to')}"
    return what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret-file", required=True)
    args = parser.parse_args()
    with open(args.secret_file, "rb") as f:
        webhook = Webhook(library_secret(f.read().rstrip()))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                webhook.verify(body, headers)
            except WebhookVerificationError:
                self.send_response(401)
                self.end_headers()
                print(f"INVALID signature on {self.path}: refused", flush=True)
                return
            except ValueError:
                pass  # verified, but the body is not JSON: described below
            self.send_response(200)
            self.end_headers()
            try:
                what = describe(body)
            except ValueError:
                what = "a body that is not JSON"
            key = headers.get("webhook-id", "-")
            print(f"valid {self.path} {what} (key {key})", flush=True)

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
