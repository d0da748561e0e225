"""The stateful code interpreter inside a sandbox: a small REPL server.

The agent starts it under the host's python3 with requests on fd 3 and replies
on fd 4, one JSON object per line; stdout and stderr are plain pipes the agent
streams, so output from subprocesses and C extensions is caught too. Globals
persist between requests. A reply carries the value of a trailing expression
(text, and HTML/PNG where the object offers them), every open matplotlib figure as
a PNG, and the error with its traceback.
"""

import ast
import base64
import io
import json
import linecache
import os
import sys
import traceback

REQUESTS_FD, REPLIES_FD = 3, 4
CELL_PREFIX = "<cell "
# What a reply may carry: the agent refuses longer ones (fileops.MAX_REPLY_BYTES is 2 MiB).
MAX_REPLY_BYTES = 1536 * 1024


class Interpreter:
    def __init__(self):
        self.namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        self.count = 0

    def execute(self, code):
        self.count += 1
        results, error = [], None
        # Registered like a file, so tracebacks (now and from later cells) quote its lines.
        filename = f"{CELL_PREFIX}{self.count}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename, "exec")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, filename, "exec"), self.namespace)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), filename, "eval"), self.namespace)
                if value is not None:
                    self.namespace["_"] = value
                    results.append(represent(value))
        except BaseException as exc:  # KeyboardInterrupt (timeouts) and SystemExit included
            error = describe(exc)
        results.extend(figures())
        sys.stdout.flush()
        sys.stderr.flush()
        return {"results": results, "error": error, "execution_count": self.count}


def represent(value):
    text = repr(value)
    cut = len(text) > MAX_REPLY_BYTES // 2
    if cut:  # here, before the JSON reply copies it again
        text = text[: MAX_REPLY_BYTES // 12] + "...[truncated]"
    result = {"text": text, "is_main_result": True, "_cut": cut}
    for method, key in (("_repr_html_", "html"), ("_repr_png_", "png")):
        render = getattr(value, method, None)
        if callable(render):
            try:
                data = render()
            except Exception:
                continue
            if isinstance(data, bytes):
                data = base64.b64encode(data).decode()
            if isinstance(data, str):
                result[key] = data
    return result


def figures():
    """Every figure the cell left open, as PNG, then closed (as Jupyter's inline backend does)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    found = []
    for number in pyplot.get_fignums():
        figure = pyplot.figure(number)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        found.append({"text": repr(figure), "png": base64.b64encode(buffer.getvalue()).decode()})
    pyplot.close("all")
    return found


def fit(reply):
    """The reply as one JSON line within MAX_REPLY_BYTES: past it, the largest
    formats are dropped and texts cut, and the error says so."""
    cut = any([result.pop("_cut", False) for result in reply["results"]])
    line = json.dumps(reply).encode()
    if len(line) <= MAX_REPLY_BYTES and not cut:
        return line
    budget = MAX_REPLY_BYTES // 2 // max(1, len(reply["results"]))
    for result in reply["results"]:
        for key in ("png", "html"):
            if len(result.get(key) or "") > budget:
                del result[key]
        if len(result.get("text") or "") > budget // 6:  # json.dumps may escape each character into 6
            result["text"] = result["text"][: budget // 6] + "...[truncated]"
    if reply["error"] is None:
        reply["error"] = {
            "name": "ResultTooLarge",
            "value": f"the cell's results are larger than the {MAX_REPLY_BYTES} bytes a reply may carry; "
            "they were truncated (write large outputs to a file and read it with the files API)",
            "traceback": "",
        }
    else:
        reply["error"] = {k: str(v)[: budget // 6] for k, v in reply["error"].items()}
    return json.dumps(reply).encode()


def describe(exc):
    frames = traceback.extract_tb(exc.__traceback__)
    # Drop the interpreter's own frames: the user's traceback starts in their cell.
    while frames and not frames[0].filename.startswith(CELL_PREFIX):
        frames.pop(0)
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    lines += traceback.format_exception_only(type(exc), exc)
    return {"name": type(exc).__name__, "value": str(exc), "traceback": "".join(lines)}


def main():
    for fd in (REQUESTS_FD, REPLIES_FD):
        os.set_inheritable(fd, False)  # keep the protocol away from the user's subprocesses
    requests = os.fdopen(REQUESTS_FD, "rb")
    replies = os.fdopen(REPLIES_FD, "wb")
    # Whole lines reach the agent as they are printed; execute() flushes the rest.
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    interpreter = Interpreter()
    sys.argv = [""]
    # The user's imports see their working directory first, not the guest code.
    guest_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:] = [p for p in sys.path if p != guest_root]
    for line in requests:
        reply = interpreter.execute(json.loads(line)["code"])
        replies.write(fit(reply) + b"\n")
        replies.flush()


if __name__ == "__main__":
    main()
