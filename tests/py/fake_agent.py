#!/usr/bin/env python3
"""A stand-in for `swarmnet agent`, for the harness's own tests: takes the
agent's command line, answers GET/HEAD /_ping on the -H unix socket and
serves /metrics on --metrics-addr, counting its starts in the data dir (to
show a restart reuses it). It does nothing else.
"""

import argparse
import http.server
import os
import socketserver
import sys
import threading


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body_for = {}

    def log_message(self, fmt, *args):
        sys.stderr.write("fake-agent: " + (fmt % args) + "\n")

    def address_string(self):
        return "unix"

    def _send(self, status, body, ctype="text/plain; charset=utf-8"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", "1.53")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?")[0]
        if path.endswith("/_ping"):
            self._send(200, "OK")
        elif path == "/metrics":
            self._send(200, Handler.body_for["metrics"]())
        else:
            self._send(404, '{"message":"page not found"}', "application/json")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd")
    p.add_argument("--data-dir", required=True)
    p.add_argument("-H", dest="host", required=True)
    p.add_argument("--hostname", required=True)
    p.add_argument("--metrics-addr", required=True)
    args, _ = p.parse_known_args()
    assert args.cmd == "agent", args.cmd

    starts_file = os.path.join(args.data_dir, "starts")
    starts = int(open(starts_file).read()) if os.path.exists(starts_file) else 0
    starts += 1
    with open(starts_file, "w") as f:
        f.write(str(starts))
    Handler.body_for["metrics"] = lambda: (
        "# TYPE fake_agent_starts counter\n"
        f'fake_agent_starts_total{{hostname="{args.hostname}"}} {starts}\n'
    )

    ip, port = args.metrics_addr.rsplit(":", 1)
    metrics = http.server.ThreadingHTTPServer((ip, int(port)), Handler)
    threading.Thread(target=metrics.serve_forever, daemon=True).start()

    sock = args.host.removeprefix("unix://")
    if os.path.exists(sock):
        os.unlink(sock)
    api = UnixHTTPServer(sock, Handler)
    print(f"fake-agent {args.hostname}: start {starts}, serving {sock}", file=sys.stderr, flush=True)
    api.serve_forever()


if __name__ == "__main__":
    main()
