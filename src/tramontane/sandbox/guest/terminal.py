"""Terminals in the sandbox: a shell on a pseudo-terminal, for `sandbox.pty`.

The shell is an ordinary child of the agent (listed, killed, reaped and given a
deadline like a command), whose stdin, stdout and stderr are the slave side of a
fresh pty from the sandbox's own devpts; the agent holds the master side and
streams what the terminal prints as "stdout" events of the request that opened
it. Input and size changes are their own requests naming the shell's pid.
The seccomp filter forbids TIOCSTI and TIOCLINUX in both tiers, so the shell
cannot push keystrokes into any other terminal.
"""

import base64
import fcntl
import os
import struct
import termios
import time

from .fileops import HOME, Failure, errno_name, kind_of

MAX_SIZE = 1000  # rows or columns
TERM = "xterm-256color"


def window(rows, cols):
    if not (1 <= rows <= MAX_SIZE and 1 <= cols <= MAX_SIZE):
        raise Failure("invalid", f"rows and cols must be 1 to {MAX_SIZE}")
    return struct.pack("HHHH", rows, cols, 0, 0)


def spawn(agent, argv, cwd, env, size):
    """Forks `argv` as the leader of a new session whose controlling terminal is a
    new pty; returns (pid, master fd)."""
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    fcntl.ioctl(master, termios.TIOCSWINSZ, size)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (master, slave, status_r, status_w):
            os.close(fd)
        raise agent.fork_failure(exc) from None
    if pid == 0:
        try:
            os.close(master)
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for target in (0, 1, 2):
                os.dup2(slave, target)
            if slave > 2:
                os.close(slave)
            agent.prepare_child()
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        except OSError as exc:
            os.write(status_w, f"{errno_name(exc.errno)} {exc.strerror}: {exc.filename or argv[0]}".encode())
        finally:
            os._exit(127)
    os.close(slave)
    os.close(status_w)
    failure = os.read(status_r, 4096).decode()
    os.close(status_r)
    if failure:
        os.waitpid(pid, 0)
        os.close(master)
        name, _, message = failure.partition(" ")
        raise Failure(kind_of(name), message)
    os.set_blocking(master, False)
    return pid, master


class Terminals:
    """The agent's "pty_*" requests."""

    def __init__(self, agent, child_type):
        self.agent = agent
        self.child_type = child_type

    def ops(self):
        return {"pty_open": self.open, "pty_input": self.input, "pty_resize": self.resize}

    def open(self, request):
        agent = self.agent
        size = window(int(request.get("rows", 24)), int(request.get("cols", 80)))
        cwd = request.get("cwd") or HOME
        env = {**agent.env, "TERM": TERM, **(request.get("env") or {})}
        cmd = request.get("cmd") or "/bin/bash -i -l"
        timeout = request.get("timeout")
        deadline = time.monotonic() + timeout if timeout else None
        pid, master = spawn(agent, ["/bin/bash", "-c", "exec " + cmd], cwd, env, size)
        child = self.child_type(request["id"], pid, cmd, cwd, master, master, deadline)
        child.streams = {master: "stdout"}
        child.pty = master
        agent.watch(child)
        agent.send({"id": request["id"], "ev": "start", "pid": pid})
        return None

    def master(self, request):
        child = self.agent.children.get(int(request["pid"]))
        if child is None or getattr(child, "pty", None) is None or child.pty not in child.streams:
            raise Failure("not_found", f"no terminal with pid {request['pid']}")
        return child.pty

    def input(self, request):
        """Writes what the terminal takes now; the host sends the rest again."""
        data = base64.b64decode(request["data"])
        try:
            written = os.write(self.master(request), data)
        except BlockingIOError:
            written = 0
        return {"written": written}

    def resize(self, request):
        # The kernel sends SIGWINCH to the terminal's foreground process group.
        fcntl.ioctl(self.master(request), termios.TIOCSWINSZ, window(int(request["rows"]), int(request["cols"])))
        return {}
