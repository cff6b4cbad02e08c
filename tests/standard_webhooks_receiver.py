"""A webhook receiver that checks every request with the Standard Webhooks library
(PyPI `standardwebhooks`), as a receiver of prescale's webhooks would; used by
tests/standard_webhooks.rs.

Usage: python3 standard_webhooks_receiver.py CONFIG_JSON

CONFIG_JSON maps each path to what the receiver holds for it:
  {"/scale": {"whsec": ["whsec_..."], "plain": ["a plain secret"], "first": [503]}, ...}
`whsec` secrets are handed to the library as written; a `plain` secret as
"whsec_" + base64(secret), as the documentation tells receivers to; `first` are statuses
answered to the first requests on that path (e.g. to make prescale retry).

Prints `listening PORT` once, then one JSON line per request: the path, the status
answered, the headers (lower-cased), the body, and for each secret whether the library
accepted the request, refused it with the body tampered with, and refused it when held
with a wrong secret. Answers 200 when every check came out as it should, 400 otherwise.
"""

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError as e:
    sys.exit(
        f"cannot import standardwebhooks ({e}); install it with "
        "`python3 -m pip install standardwebhooks==1.3.0` (tests/run.sh does)"
    )

CONFIG = json.loads(sys.argv[1])
WRONG = "whsec_" + base64.b64encode(b"not the secret").decode()
LOCK = threading.Lock()
SEEN = {}


def library_secrets(path):
    held = CONFIG.get(path, {})
    plain = ["whsec_" + base64.b64encode(s.encode("utf-8")).decode() for s in held.get("plain", [])]
    return held.get("whsec", []) + plain


def verifies(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return None
    except WebhookVerificationError as e:
        return str(e) or type(e).__name__


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        tampered = bytearray(body)
        tampered[len(tampered) // 2] ^= 1
        tampered = bytes(tampered)
        secrets = library_secrets(self.path)
        errors = [verifies(s, body, headers) for s in secrets]
        tampered_errors = [verifies(s, tampered, headers) for s in secrets]
        wrong_error = verifies(WRONG, body, headers)
        ok = (
            bool(secrets)
            and all(e is None for e in errors)
            and all(e is not None for e in tampered_errors)
            and wrong_error is not None
        )
        with LOCK:
            n = SEEN.get(self.path, 0)
            SEEN[self.path] = n + 1
            first = CONFIG.get(self.path, {}).get("first", [])
            status = first[n] if n < len(first) else (200 if ok else 400)
            print(
                json.dumps(
                    {
                        "path": self.path,
                        "status": status,
                        "headers": headers,
                        "body": body.decode("utf-8"),
                        "errors": errors,
                        "tampered_errors": tampered_errors,
                        "wrong_error": wrong_error,
                    }
                ),
                flush=True,
            )
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"checked")

    def log_message(self, format, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
