"""The test guest's program: exercises AF_VSOCK against the host through the device under
test and reports on the console.

    guest_vsock.py connect PORT TEXT      connect to the host's PORT, send TEXT, print the reply
    guest_vsock.py bulk PORT MIB          send MIB MiB, half-close, print the reply (host's sha256)
    guest_vsock.py listen PORT            accept one connection on PORT and echo it
    guest_vsock.py sink PORT              accept one connection on PORT, count bytes to EOF
    guest_vsock.py latency PORT N         connect+close N times, print the median in ms
    guest_vsock.py parallel PORT N        N connections at once, each sends and reads back its own text
    guest_vsock.py killmid PORT           a child streams and is SIGKILLed mid-stream; then connect again
"""
import socket
import sys
import time

HOST = 2


def read_all(sock):
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def accept_one(port):
    srv = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    srv.bind((socket.VMADDR_CID_ANY, port))
    srv.listen(1)
    print("guest: listening", flush=True)
    conn, _ = srv.accept()
    srv.close()
    return conn


def main(argv):
    mode, port = argv[0], int(argv[1])
    if mode == "parallel":
        count = int(argv[2])
        socks = []
        for _ in range(count):
            s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            s.connect((HOST, port))
            socks.append(s)
        for i, s in enumerate(socks):
            s.sendall(f"conn {i}".encode())
            s.shutdown(socket.SHUT_WR)
        ok = 0
        for i, s in enumerate(socks):
            ok += read_all(s) == f"echo conn {i}".encode()
            s.close()
        print(f"guest: parallel ok {ok}/{count}", flush=True)
        return 0
    if mode == "killmid":
        import os
        import signal
        child = os.fork()
        if child == 0:
            s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            s.connect((HOST, port))
            chunk = bytes(65536)
            while True:
                s.sendall(chunk)
        time.sleep(1.5)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.connect((HOST, port))
        s.sendall(b"after")
        s.shutdown(socket.SHUT_WR)
        print(f"guest: reply {s.recv(100).decode()}", flush=True)
        return 0
    if mode == "latency":
        samples = []
        for _ in range(int(argv[2])):
            t0 = time.perf_counter()
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.connect((HOST, port))
            samples.append(time.perf_counter() - t0)
            sock.close()
        print(f"guest: connect median {sorted(samples)[len(samples) // 2] * 1000:.2f} ms", flush=True)
        return 0
    if mode == "sink":
        conn = accept_one(port)
        total, t0 = 0, time.perf_counter()
        buf = bytearray(1 << 16)
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            total += n
        print(f"guest: received {total} bytes in {time.perf_counter() - t0:.2f} s", flush=True)
        conn.close()
        return 0
    if mode == "listen":
        conn = accept_one(port)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
        conn.close()
        print("guest: echo done", flush=True)
        return 0
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        sock.connect((HOST, port))
    except OSError as err:
        print(f"guest: connect failed: {err.strerror}", flush=True)
        return 1
    if mode == "connect":
        sock.sendall(argv[2].encode())
        sock.shutdown(socket.SHUT_WR)
    elif mode == "bulk":
        chunk = bytes(range(256)) * 256  # 64 KiB; the host checks the sha256 of the whole stream
        for _ in range(int(argv[2]) * 16):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        print("guest: sent", flush=True)
    print(f"guest: reply {read_all(sock).decode(errors='replace')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
