"""Relays TCP connections on the sandbox's 127.0.0.1:3128 to the host's egress
proxy, whose Unix socket is bind-mounted into the sandbox: HTTP clients find a
proxy where they expect one (HTTP_PROXY), in a network namespace that has no
other way out. It only moves bytes; the host proxy decides what may pass.

Started by the agent with the listening socket as fd 3, so connections made
before this process is up wait in the backlog instead of being refused.
"""

import asyncio
import socket

CHUNK = 65536


async def pipe(reader, writer):
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


async def serve(proxy_path):
    async def relay(client_reader, client_writer):
        try:
            proxy_reader, proxy_writer = await asyncio.open_unix_connection(proxy_path)
        except OSError:
            client_writer.close()
            return
        # Done when the proxy's side ends; the client may half-close before that.
        sending = asyncio.create_task(pipe(client_reader, proxy_writer))
        try:
            await pipe(proxy_reader, client_writer)
        finally:
            sending.cancel()
            proxy_writer.close()
            client_writer.close()

    listener = socket.socket(fileno=3)
    server = await asyncio.start_server(relay, sock=listener)
    await server.serve_forever()


def main(proxy_path):
    asyncio.run(serve(proxy_path))
