#!/usr/bin/env python3
"""Record AdmissionReviews sent by a real API server, for tests/data/.

    hack/record-reviews.py PORT CERT KEY OUTDIR

Answers every review with allowed=true and writes each request body to
OUTDIR/<seq>-<path>-<operation>-<resource>[-<subresource>].json.
"""
import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.makedirs(out, exist_ok=True)
seq = [0]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        review = json.loads(body)
        req = review["request"]
        seq[0] += 1
        name = "%03d-%s-%s-%s%s.json" % (
            seq[0], self.path.strip("/"), req["operation"].lower(), req["resource"]["resource"],
            "-" + req["subResource"] if req.get("subResource") else "")
        with open(os.path.join(out, name), "w") as f:
            json.dump(review, f, indent=1, sort_keys=True)
        resp = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": {"uid": req["uid"], "allowed": True}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(resp)))
        self.end_headers()
        self.wfile.write(resp)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
