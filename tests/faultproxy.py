"""A TCP proxy on 127.0.0.1 that can cut the line: an S3 endpoint dying in the middle of a transfer."""

from __future__ import annotations

import contextlib
import socket
import threading


class FlakyProxy:
    """Forwards to `upstream_port`; after `cut_after` bytes in either direction it drops every
    connection and stops listening, as a crashed endpoint would."""

    def __init__(self, upstream_port: int, cut_after: int | None = None):
        self.upstream = ("127.0.0.1", upstream_port)
        self.cut_after = cut_after
        self.transferred = 0
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dead = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.dead.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [client, server]
            if self.dead.is_set():  # cut while this connection was being set up
                self.cut()
                return
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                with self.lock:
                    self.transferred += len(chunk)
                    over = self.cut_after is not None and self.transferred > self.cut_after
                if over:
                    self.cut()
                    return
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """The endpoint dies: open connections reset, new ones refused."""
        self.dead.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            for sock in self.sockets:
                # shutdown reaches the peer at once; a bare close would wait for the thread blocked
                # in recv() on this socket, leaving the client hanging on a silent connection.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
