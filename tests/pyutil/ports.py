"""Loopback ports for the tests that start the real binary."""
import socket


def free_port():
    """A port nothing listens on right now (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def busy_port():
    """A listening socket on 127.0.0.1 (the caller keeps it open) and its port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]
