"""The agent inside every sandbox (the role E2B's envd plays in its VMs).

It runs under the host's /usr/bin/python3 (`python3 -I -S`, see launcher.py), so
it uses the standard library only and imports little: its start-up is on the
path of every sandbox creation. Everything the host asks
(commands, files, code) goes through it over stdin/stdout, one JSON object per
line, which means file operations resolve paths with the sandbox's own view of
the filesystem: a symlink planted by sandboxed code cannot point the host
anywhere.

Requests: {"id": n, "op": ..., ...}. Replies: {"id": n, "ev": ...}; "ok" and
"error" end a request, "start", "stdout", "stderr", "exit", "result" and "chunk"
belong to streams. The host treats everything said here as untrusted.

The agent is the sandbox's PID 1 (bwrap --as-pid-1 in tier 1, the guest's init in
tier 2) and not dumpable, so no process of the sandbox can reach its memory or its
descriptors; being init, it ignores every signal sandboxed code may send it. The
host's first line is a fresh key, read before anything else runs: every line the
agent sends starts with a MAC over a sequence number and the line, so a process
that got hold of the channel some other way still cannot speak on it.

The agent never blocks on sandboxed code: file operations refuse non-regular files,
pipes from children are non-blocking, and a full process table (a fork bomb) is a
clear error while `killall` (kill(-1) from PID 1, which needs no new process)
always works.
"""

import codecs
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import resource
import select
import selectors
import signal
import struct
import time

from .fileops import HOME, MAX_REPLY_BYTES, OPS, Failure, errno_name, failure_from, kind_of, read

CHUNK = 65536
KEY_BYTES = 32
MAC_BYTES = 16
MAX_MESSAGE_CHARS = 2000  # error messages
MAX_PS_CMD_CHARS = 512
CHILD_OOM_SCORE_ADJ = b"500"  # sandboxed work dies before the agent when memory runs out
# Sandboxed work yields the CPU to the agent (nice 0) within the sandbox's own quota,
# so hundreds of spinning processes cannot starve it; against other sandboxes it
# changes nothing (each has its own cgroup, or its own VM). Users may go up to 19.
CHILD_NICE = 10
SIGINT_GRACE_S = 2.0
PR_SET_DUMPABLE = 4
LIBC = ctypes.CDLL(None, use_errno=True)
GUEST_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERPRETER_BOOT = f"import sys; sys.path.insert(0, {GUEST_ROOT!r}); from guest.interpreter import main; main()"
FORWARDER_BOOT = f"import sys; sys.path.insert(0, {GUEST_ROOT!r}); from guest.forwarder import main; main(sys.argv[1])"
PROXY_PORT = 3128  # where HTTP_PROXY points in sandboxes with an egress allow-list
EXTENSION_OPS = {
    **dict.fromkeys(("pty_open", "pty_input", "pty_resize"), "terminal"),
    **dict.fromkeys(("port_open", "port_send", "port_ack", "port_close"), "tunnel"),
    **dict.fromkeys(("watch", "unwatch"), "watcher"),
}


class Child:
    """A process the agent started; its output pipes stream to request `rid`."""

    def __init__(self, rid, pid, cmd, cwd, out_fd, err_fd, deadline):
        self.rid, self.pid, self.cmd, self.cwd = rid, pid, cmd, cwd
        self.streams = {out_fd: "stdout", err_fd: "stderr"}
        self.decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in self.streams}
        self.deadline = deadline
        self.started = time.time()
        self.error = None


def mac(key, seq, line):
    """What authenticates line number `seq` (the host checks it the same way)."""
    return hashlib.blake2b(seq.to_bytes(8, "big") + line, key=key, digest_size=MAC_BYTES).hexdigest().encode()


def read_key():
    """The host's first line: the channel key, hex. Read byte by byte so nothing
    of the requests behind it is consumed here."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte or len(line) > 4 * KEY_BYTES:
            raise SystemExit("no channel key from the host")
        line += byte
    return bytes.fromhex(line.decode())


class Agent:
    def __init__(self, key, pids_limit=None, egress_socket=None, clock_fd=None):
        self.key = key
        self.clock_fd = clock_fd  # a microVM's clock keeper (see vmboot.start_clock_keeper)
        self.seq = 0
        self.pids_limit = pids_limit
        self.egress_socket = egress_socket
        self.env = dict(os.environ)
        self.sel = selectors.DefaultSelector()
        self.partial = []  # pieces of a request line still arriving (file uploads are long)
        self.children = {}  # pid -> Child
        self.repl = None  # Child running the interpreter
        self.repl_io = None  # (request fd, response fd, response buffer)
        self.repl_rid = None  # request being executed
        self.repl_interrupted_at = None
        self.repl_garbled = False  # the cell wrote past MAX_REPLY_BYTES on the reply pipe
        self.parts = {}  # name -> optional part, see extension()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        os.set_blocking(0, False)
        self.sel.register(0, selectors.EVENT_READ, "stdin")

    # -- output to the host

    def send(self, message):
        line = json.dumps(message, separators=(",", ":")).encode()
        if len(line) > MAX_REPLY_BYTES:  # never expected: each producer caps its own
            message = {"id": message.get("id"), "ev": "error", "kind": "too_large", "message": "reply too large"}
            line = json.dumps(message).encode()
        data = mac(self.key, self.seq, line) + b" " + line + b"\n"
        self.seq += 1
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(1, view) :]
            except BlockingIOError:  # in a microVM stdout is stdin's non-blocking port
                select.select([], [1], [])

    # -- main loop

    def run(self):
        while True:
            timeout = self.next_timeout()
            for key, mask in self.sel.select(timeout):
                if key.data == "stdin":
                    if not self.read_requests():
                        return
                elif key.data == "wake":
                    try:
                        os.read(key.fd, 4096)
                    except BlockingIOError:
                        pass
                    self.reap()
                # Handling an earlier event of this batch (a reaped child) may have
                # closed this one's fd, whose number a new pipe may even reuse.
                elif key.data == "repl":
                    if self.repl_io is not None and key.fd == self.repl_io[1]:
                        self.read_repl_response()
                elif hasattr(key.data, "on_ready"):  # a tunnel or a watch
                    key.data.on_ready(key.fd, mask)
                elif key.fd in key.data.streams:
                    self.pump(key.data, key.fd)
            self.enforce_deadlines()

    def extension(self, op):
        """The handler of a request served by one of the agent's optional parts
        (terminals, port tunnels, file watches), imported on first use so that
        sandboxes that never use them do not pay for the imports at start."""
        part = EXTENSION_OPS.get(op)
        if part is None:
            return None
        if part not in self.parts:
            self.parts[part] = load_part(part, self)
        return self.parts[part].ops()[op]

    def read_requests(self):
        try:
            chunk = os.read(0, 1 << 20)
        except BlockingIOError:
            return True
        if not chunk:
            return False  # the host went away
        if b"\n" not in chunk:
            self.partial.append(chunk)
            return True
        *lines, rest = (b"".join(self.partial) + chunk).split(b"\n")
        self.partial = [rest] if rest else []
        for line in lines:
            try:
                request = json.loads(line)
            except ValueError:
                continue  # the tail of a line cut by a VM's pause to disk (see op_rekey)
            rid = request.get("id")
            try:
                op = request["op"]
                handler = OPS.get(op) or self.extension(op) or getattr(self, "op_" + op)
                result = handler(request)
                if result is not None:
                    self.send({"id": rid, "ev": "ok", **result})
            except Failure as exc:
                self.fail(rid, exc)
            except OSError as exc:
                self.fail(rid, failure_from(exc))
        return True

    def op_rekey(self, request):
        """A microVM resumed from disk talks to a new host channel: it sends a new
        key (its first line, like the first key) and MACs restart from 0. Lines
        of the old channel still in flight fail the new key and are dropped there."""
        self.key = bytes.fromhex(request["key"])
        self.seq = 0
        return {}

    def op_set_clock(self, request):
        """A microVM's wall clock: it has no clock of its own at boot, and it stands
        still while the VM is on disk, so the host sets it after each boot and resume
        (through the clock keeper, see vmboot). A tier-1 sandbox shares the host's."""
        if self.clock_fd is None:
            return {}
        try:
            os.write(self.clock_fd, struct.pack("<q", int(request["time_ns"])))
        except (KeyError, TypeError, ValueError, OverflowError, struct.error) as exc:
            raise Failure("invalid", f"time_ns: {exc}") from None
        return {}

    def fail(self, rid, failure):
        self.send({"id": rid, "ev": "error", "kind": failure.kind, "message": str(failure)[:MAX_MESSAGE_CHARS]})

    def op_read(self, request):
        return read(request, self.send)

    # -- processes

    def spawn(self, argv, cwd, env, extra_fds=()):
        """Forks `argv` in its own session; returns (pid, stdout fd, stderr fd)."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (out_r, out_w, err_r, err_w, status_r, status_w):
                os.close(fd)
            raise self.fork_failure(exc) from None
        if pid == 0:
            try:
                os.setsid()
                # Parked above the targets first, so no dup2 below clobbers a source.
                sources = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in extra_fds]
                os.dup2(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                for target, fd in enumerate(sources, start=3):
                    os.dup2(fd, target)
                self.prepare_child()
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            except OSError as exc:
                os.write(status_w, f"{errno_name(exc.errno)} {exc.strerror}: {exc.filename or argv[0]}".encode())
            finally:
                os._exit(127)  # whatever happened, this copy of the agent must not go on
        for fd in (out_w, err_w, status_w):
            os.close(fd)
        failure = os.read(status_r, 4096).decode()
        os.close(status_r)
        if failure:
            os.waitpid(pid, 0)
            os.close(out_r)
            os.close(err_r)
            name, _, message = failure.partition(" ")
            raise Failure(kind_of(name), message)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        return pid, out_r, err_r

    @staticmethod
    def prepare_child():
        """What every process the agent starts gets, in the child before exec."""
        os.setpriority(os.PRIO_PROCESS, 0, CHILD_NICE)
        LIBC.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # this child's /proc files are its own again
        with open("/proc/self/oom_score_adj", "wb") as f:
            f.write(CHILD_OOM_SCORE_ADJ)

    def fork_failure(self, exc):
        if exc.errno == errno.EAGAIN:
            return Failure(
                "pids_exhausted",
                f"the sandbox reached its limit of {self.pids_limit} processes (pids); end some, "
                "or kill them all (DELETE /v1/sandboxes/{id}/processes)",
            )
        if exc.errno == errno.ENOMEM:
            return Failure("memory_exhausted", "the sandbox's memory limit is reached; no process can start")
        return failure_from(exc)

    def watch(self, child):
        self.children[child.pid] = child
        for fd in child.streams:
            self.sel.register(fd, selectors.EVENT_READ, child)

    def op_exec(self, request):
        cwd = request.get("cwd") or HOME
        env = {**self.env, **(request.get("env") or {})}
        timeout = request.get("timeout")
        deadline = time.monotonic() + timeout if timeout else None
        argv = ["/bin/bash", "-c", request["cmd"]]
        pid, out_r, err_r = self.spawn(argv, cwd, env)
        self.watch(Child(request["id"], pid, request["cmd"], cwd, out_r, err_r, deadline))
        self.send({"id": request["id"], "ev": "start", "pid": pid})
        return None

    def op_kill(self, request):
        pid, sig = int(request["pid"]), int(request.get("signal", signal.SIGKILL))
        try:
            # Commands lead their own process group: take their children along.
            if pid in self.children:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return {"killed": False}
        return {"killed": True}

    def op_killall(self, request):
        """SIGKILLs every process of the sandbox but the agent: kill(-1) from PID 1
        reaches the whole PID namespace, and needs no free pid. Forking bombs race
        it, so it repeats until nothing else is left (bounded)."""
        killed = 0
        for _ in range(100):
            others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
            if not others:
                break
            killed = max(killed, len(others))
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.reap()
            time.sleep(0.01)
        if self.egress_socket is not None:
            self.start_forwarder(self.egress_socket)  # part of the sandbox, not of its code
        return {"killed": killed}

    def op_ps(self, request):
        processes, size = [], 0
        for c in self.children.values():
            if c is self.repl:
                continue
            processes.append({"pid": c.pid, "cmd": c.cmd[:MAX_PS_CMD_CHARS], "cwd": c.cwd[:MAX_PS_CMD_CHARS],
                              "started_at": c.started})  # fmt: skip
            size += 2 * MAX_PS_CMD_CHARS + 80
            if size > MAX_REPLY_BYTES // 2:
                break
        return {"processes": processes}

    def start_forwarder(self, proxy_path):
        """Relays 127.0.0.1:PROXY_PORT to the host's egress proxy at `proxy_path`.
        Not one of the listed processes: it is part of the sandbox, not a command."""
        import socket  # only sandboxes with egress pay for the import

        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", PROXY_PORT))
            listener.listen(128)
            argv = ["/usr/bin/python3", "-I", "-S", "-c", FORWARDER_BOOT, proxy_path]
            _, out_r, err_r = self.spawn(argv, "/", self.env, extra_fds=(listener.fileno(),))
        finally:
            listener.close()
        os.close(out_r)
        os.close(err_r)

    def op_disk(self, request):
        """Bytes used and available on the sandbox's writable filesystems."""
        disks = {}
        for path in (HOME, "/tmp"):
            st = os.statvfs(path)
            disks[path] = {"total": st.f_blocks * st.f_frsize, "used": (st.f_blocks - st.f_bfree) * st.f_frsize}
        return {"disks": disks}

    def op_configure(self, request):
        self.env.update(request.get("env") or {})
        return {}

    def pump(self, child, fd):
        """Forwards what `fd` holds now; closes it at end of file."""
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:  # a terminal's master reads EIO once no process holds its slave
                if exc.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                self.close_stream(child, fd)
                return
            self.emit(child, fd, data)
            if len(data) < CHUNK:
                return

    def emit(self, child, fd, data, final=False):
        text = child.decoders[fd].decode(data, final)
        rid = self.repl_rid if child is self.repl else child.rid
        if text and rid is not None:
            self.send({"id": rid, "ev": child.streams[fd], "data": text})

    def close_stream(self, child, fd):
        self.emit(child, fd, b"", final=True)
        self.sel.unregister(fd)
        os.close(fd)
        del child.streams[fd]

    def drain(self, child):
        """Everything the child wrote before it exited; later writers (its
        background children) lose their pipe."""
        for fd in list(child.streams):
            self.pump(child, fd)
            if fd in child.streams:
                self.close_stream(child, fd)

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self.drain(child)
            code = os.waitstatus_to_exitcode(status)
            exit_code = 128 - code if code < 0 else code
            if child is self.repl:
                self.repl_exited(exit_code)
            else:
                self.send({"id": child.rid, "ev": "exit", "exit_code": exit_code, "error": child.error})

    def enforce_deadlines(self):
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.deadline is not None and now >= child.deadline:
                child.deadline = None
                if child is self.repl:
                    self.interrupt_repl()
                else:
                    child.error = "timeout"
                    try:
                        os.killpg(child.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if self.repl_interrupted_at is not None and now - self.repl_interrupted_at > SIGINT_GRACE_S:
            self.repl_interrupted_at = None
            os.killpg(self.repl.pid, signal.SIGKILL)

    def next_timeout(self):
        deadlines = [c.deadline for c in self.children.values() if c.deadline is not None]
        if self.repl_interrupted_at is not None:
            deadlines.append(self.repl_interrupted_at + SIGINT_GRACE_S)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    # -- code interpreter

    def op_code(self, request):
        if self.repl_rid is not None:
            raise Failure("busy", "the code interpreter is running another execution")
        if self.repl is None:
            self.start_repl(request)
        timeout = request.get("timeout")
        self.repl.deadline = time.monotonic() + timeout if timeout else None
        self.repl_rid = request["id"]
        payload = json.dumps({"code": request["code"]}).encode() + b"\n"
        view = memoryview(payload)
        while view:
            view = view[os.write(self.repl_io[0], view) :]
        return None

    def op_interrupt(self, request):
        if self.repl_rid is not None and self.repl_interrupted_at is None:
            self.interrupt_repl()
        return {}

    def start_repl(self, request):
        req_r, req_w = os.pipe2(os.O_CLOEXEC)
        resp_r, resp_w = os.pipe2(os.O_CLOEXEC)
        env = {**self.env, "MPLBACKEND": "Agg"}
        argv = ["/usr/bin/python3", "-c", INTERPRETER_BOOT]
        try:
            pid, out_r, err_r = self.spawn(argv, request.get("cwd") or HOME, env, extra_fds=(req_r, resp_w))
        finally:
            os.close(req_r)
            os.close(resp_w)
        os.set_blocking(resp_r, False)
        self.repl = Child(None, pid, "python3 (code interpreter)", HOME, out_r, err_r, None)
        self.watch(self.repl)
        self.repl_io = (req_w, resp_r, b"")
        self.sel.register(resp_r, selectors.EVENT_READ, "repl")

    def read_repl_response(self):
        req_w, resp_r, buf = self.repl_io
        try:
            chunk = os.read(resp_r, CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            return  # handled when the process is reaped
        buf += chunk
        *lines, buf = buf.split(b"\n")
        if len(buf) > MAX_REPLY_BYTES:  # the cell's code writes to the protocol pipe
            buf, self.repl_garbled = b"", True
        self.repl_io = (req_w, resp_r, buf)
        for line in lines:
            # Output printed before the reply is already in the pipes: send it first.
            for fd in list(self.repl.streams):
                self.pump(self.repl, fd)
            self.repl.deadline = None
            self.repl_interrupted_at = None
            rid, self.repl_rid = self.repl_rid, None
            try:
                if self.repl_garbled or len(line) > MAX_REPLY_BYTES:
                    raise ValueError("oversized")
                reply = json.loads(line)
                if not isinstance(reply, dict):
                    raise ValueError(reply)
            except ValueError:
                self.repl_garbled = False  # the cell's code wrote to the protocol pipe itself
                error = {"name": "ProtocolError", "value": "garbled interpreter reply", "traceback": ""}
                reply = {"results": [], "error": error, "execution_count": None}
            if rid is not None:
                self.send({"id": rid, "ev": "result", **reply})

    def interrupt_repl(self):
        os.kill(self.repl.pid, signal.SIGINT)
        self.repl_interrupted_at = time.monotonic()

    def repl_exited(self, exit_code):
        req_w, resp_r, _ = self.repl_io
        self.sel.unregister(resp_r)
        os.close(resp_r)
        os.close(req_w)
        self.repl = self.repl_io = None
        self.repl_interrupted_at = None
        rid, self.repl_rid = self.repl_rid, None
        if rid is not None:
            message = f"the interpreter exited with code {exit_code}; its state is lost"
            error = {"name": "InterpreterDied", "value": message, "traceback": ""}
            self.send({"id": rid, "ev": "result", "results": [], "error": error, "execution_count": None})


def load_part(name, agent):
    if name == "terminal":
        from .terminal import Terminals

        return Terminals(agent, Child)
    if name == "tunnel":
        from .tunnel import Tunnels

        return Tunnels(agent)
    from .watcher import Watches

    return Watches(agent)


def main(rlimits, egress_socket=None, clock_fd=None):
    key = read_key()
    # Only the host's pipes may cross into commands: drop whatever bwrap left open.
    if clock_fd is None:
        os.closerange(3, 1 << 16)
    else:
        os.closerange(3, clock_fd)
        os.closerange(clock_fd + 1, 1 << 16)
        os.set_inheritable(clock_fd, False)
    # Soft and hard: nothing started from here can raise them again.
    for limit, value in rlimits.items():
        resource.setrlimit(int(limit), (value, value))
    # Sandboxed code runs as the same uid: not dumpable, the agent's /proc/<pid>/mem
    # and fds are closed to it, so it cannot take the agent over. (spawn() makes
    # each child dumpable again.)
    LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    pids_limit = {int(k): v for k, v in rlimits.items()}.get(resource.RLIMIT_NPROC)
    agent = Agent(key, pids_limit, egress_socket, clock_fd)
    if egress_socket is not None:
        agent.start_forwarder(egress_socket)
    agent.run()
