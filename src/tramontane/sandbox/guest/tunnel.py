"""TCP connections to servers listening inside the sandbox, for exposed ports.

The host reaches a sandbox's port only through here: the agent connects to
loopback in the sandbox's own network (its network namespace in tier 1, the
guest's in tier 2), never to another address, and relays bytes over the channel.
Both directions are flow-controlled, so neither a fast server nor a fast client
makes anyone buffer without bound: the agent stops reading the socket once
WINDOW bytes wait for the host's "port_ack", and answers a "port_send" only
when all of it is written to the socket (the host sends the next after that).
"""

import base64
import errno
import selectors
import socket

from .fileops import Failure, failure_from

WINDOW = 256 * 1024
READ_CHUNK = 64 * 1024
MAX_TUNNELS = 64
LOOPBACKS = (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6))


class Tunnel:
    def __init__(self, tunnels, rid, port):
        self.tunnels, self.rid, self.port = tunnels, rid, port
        self.sock = None
        self.connected = False
        self.unacked = 0
        self.pending = b""  # from the host, not yet written to the socket
        self.pending_rid = None  # the port_send answered once `pending` is written
        self.closed = False
        self.families = list(LOOPBACKS)

    def connect(self):
        """Tries the next loopback address; False when none is left."""
        while self.families:
            host, family = self.families.pop(0)
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            code = sock.connect_ex((host, self.port))
            if code in (0, errno.EINPROGRESS):
                self.sock = sock
                self.tunnels.agent.sel.register(sock, selectors.EVENT_WRITE, self)
                return True
            sock.close()
        return False

    def interest(self):
        events = 0
        if self.connected and self.unacked < WINDOW:
            events |= selectors.EVENT_READ
        if self.pending or not self.connected:
            events |= selectors.EVENT_WRITE
        return events

    def update(self):
        sel = self.tunnels.agent.sel
        events = self.interest()
        registered = self.sock.fileno() in sel.get_map()
        if events and registered:
            sel.modify(self.sock, events, self)
        elif events:
            sel.register(self.sock, events, self)
        elif registered:
            sel.unregister(self.sock)

    def on_ready(self, fd, mask):
        if self.closed or self.sock is None or fd != self.sock.fileno():
            return
        if not self.connected:
            self.finish_connect()
            return
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if not self.closed and mask & selectors.EVENT_READ:
            self.read()
        if not self.closed:
            self.update()

    def finish_connect(self):
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.tunnels.agent.sel.unregister(self.sock)
            self.sock.close()
            self.sock = None
            if code == errno.ECONNREFUSED and self.connect():
                return
            self.tunnels.forget(self)
            self.tunnels.agent.send({"id": self.rid, "ev": "error", "kind": "refused",
                                     "message": f"nothing listens on port {self.port} in the sandbox"})  # fmt: skip
            return
        self.connected = True
        self.tunnels.agent.send({"id": self.rid, "ev": "start", "conn": self.rid})
        self.update()

    def read(self):
        try:
            data = self.sock.recv(min(READ_CHUNK, WINDOW - self.unacked))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.unacked += len(data)
        self.tunnels.agent.send({"id": self.rid, "ev": "data", "data": base64.b64encode(data).decode()})

    def flush(self):
        try:
            while self.pending:
                self.pending = self.pending[self.sock.send(self.pending) :]
        except BlockingIOError:
            return
        except OSError as exc:
            self.answer_send(failure_from(exc))
            self.close()
            return
        self.answer_send(None)

    def answer_send(self, failure):
        rid, self.pending_rid = self.pending_rid, None
        if rid is None:
            return
        if failure is None:
            self.tunnels.agent.send({"id": rid, "ev": "ok"})
        else:
            self.tunnels.agent.fail(rid, failure)

    def close(self):
        """Ends the connection; the host hears "exit" on the request that opened it."""
        if self.closed:
            return
        self.closed = True
        if self.sock is not None:
            if self.sock.fileno() in self.tunnels.agent.sel.get_map():
                self.tunnels.agent.sel.unregister(self.sock)
            self.sock.close()
        self.pending = b""
        self.answer_send(Failure("closed", "the connection was closed"))
        self.tunnels.forget(self)
        self.tunnels.agent.send({"id": self.rid, "ev": "exit", "exit_code": 0})


class Tunnels:
    """The agent's "port_*" requests."""

    def __init__(self, agent):
        self.agent = agent
        self.open_tunnels = {}  # rid of port_open -> Tunnel

    def ops(self):
        return {"port_open": self.open, "port_send": self.send, "port_ack": self.ack, "port_close": self.close}

    def forget(self, tunnel):
        self.open_tunnels.pop(tunnel.rid, None)

    def find(self, request):
        tunnel = self.open_tunnels.get(request.get("conn"))
        if tunnel is None:
            raise Failure("not_found", "no such connection")
        return tunnel

    def open(self, request):
        port = request.get("port")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise Failure("invalid", "port must be 1 to 65535")
        if len(self.open_tunnels) >= MAX_TUNNELS:
            raise Failure("busy", f"at most {MAX_TUNNELS} connections to the sandbox's ports at once")
        tunnel = Tunnel(self, request["id"], port)
        if not tunnel.connect():
            raise Failure("refused", f"nothing listens on port {port} in the sandbox")
        self.open_tunnels[tunnel.rid] = tunnel
        return None

    def send(self, request):
        tunnel = self.find(request)
        if tunnel.pending_rid is not None:
            raise Failure("busy", "the previous data is still being written")
        tunnel.pending = base64.b64decode(request["data"])
        tunnel.pending_rid = request["id"]
        if tunnel.connected:
            tunnel.flush()
            if not tunnel.closed:
                tunnel.update()
        return None

    def ack(self, request):
        tunnel = self.open_tunnels.get(request.get("conn"))
        if tunnel is not None:
            tunnel.unacked = max(0, tunnel.unacked - int(request.get("bytes", 0)))
            if tunnel.connected:
                tunnel.update()
        return None

    def close(self, request):
        tunnel = self.open_tunnels.get(request.get("conn"))
        if tunnel is not None:
            tunnel.close()
        return {}
