"""Code that runs inside a sandbox, on the host's /usr/bin/python3: the agent,
its file operations and the code interpreter. Standard library only; the host
places these files in the sandbox read-only (bwrap --ro-bind-data) and never
imports them itself."""
