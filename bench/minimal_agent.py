"""The floor for start-up in the same UVM: a Python agent that only answers
NegotiateProtocol (what reference-figures.md's "36-line Python agent" did), importing
nothing but builtins. Booted by the bench with hcsshim's init line in place of /bin/gcs."""
import _socket
import os

BRIDGE_PORT = 0x40000000
REPLY = (b'{"Result":0,"ActivityId":"00000000-0000-0000-0000-000000000000","Version":4,"Capabilities":'
         b'{"SupportedSchemaVersions":[{"Major":2,"Minor":1}],"RuntimeOsType":"Linux","GuestDefinedCapabilities":{}}}')


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def main():
    sock = _socket.socket(_socket.AF_VSOCK, _socket.SOCK_STREAM)
    sock.connect((2, BRIDGE_PORT))
    while True:
        header = read_exact(sock, 16)
        ident = int.from_bytes(header[:4], "little")
        size = int.from_bytes(header[4:8], "little")
        read_exact(sock, size - 16)
        reply_id = 0x20000000 | (ident & 0x0FFFFFFF)
        sock.sendall(reply_id.to_bytes(4, "little") + (16 + len(REPLY)).to_bytes(4, "little") + header[8:16] + REPLY)


if __name__ == "__main__":
    try:
        main()
    except EOFError:
        os._exit(0)
