"""A tiny replica for the control-plane tests: serves on $HOST:$PORT (HOST is set
on Ray nodes; loopback otherwise) and reports its pid.

GET /anything       -> {"pid", "path"}
GET /sleep?s=F      -> waits F seconds, then answers
GET /crash?after=F  -> waits F seconds, then the process dies mid-request
GET /stream         -> five lines, flushed one by one
GET /headers        -> {"pid", "headers"}: the request's headers, names lowercased
GET /env?name=X     -> {"pid", "value"}: environment variable X
GET /file?path=X    -> {"pid", "value", "mode", "dir_mode"}: secret file X of $TRAMONTANE_SECRETS_DIR
GET /version        -> {"pid", "version"}: $APP_VERSION
POST /v1/...        -> {"pid", "model"} from the JSON body
"""

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, payload: dict) -> None:
        body = json.dumps({"pid": os.getpid(), **payload}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/env":
            self._send({"value": os.environ.get(parse_qs(url.query)["name"][0])})
            return
        if url.path == "/file":
            directory = os.environ["TRAMONTANE_SECRETS_DIR"]
            path = os.path.join(directory, parse_qs(url.query)["path"][0])
            with open(path) as file:
                value = file.read()
            mode, dir_mode = os.stat(path).st_mode & 0o777, os.stat(directory).st_mode & 0o777
            self._send({"value": value, "mode": mode, "dir_mode": dir_mode, "dir": directory})
            return
        if url.path == "/version":
            self._send({"version": os.environ.get("APP_VERSION")})
            return
        query = {k: float(v[0]) for k, v in parse_qs(url.query).items()}
        if url.path == "/sleep":
            time.sleep(query.get("s", 0.0))
        elif url.path == "/crash":
            time.sleep(query.get("after", 0.0))
            os._exit(1)
        elif url.path == "/stream":
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(5):
                line = f"line {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/headers":
            self._send({"headers": {k.lower(): v for k, v in self.headers.items()}})
            return
        self._send({"path": self.path})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        self._send({"path": self.path, "model": body.get("model")})

    def log_message(self, format: str, *args: object) -> None:
        print(format % args, flush=True)


if __name__ == "__main__":
    print(f"replica {os.getpid()} listening on {os.environ['PORT']}", flush=True)
    ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler).serve_forever()
