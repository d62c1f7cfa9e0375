"""Small programs run inside the guest namespace (with this Python) by the real-stack tests."""

UDP_CLIENT = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((host, port))
ok = 0
for i in range(n):
    msg = (b"ping-%d-" % i) * (1 + i % 50)
    s.send(msg)
    try:
        if s.recv(65535) == msg:
            ok += 1
    except ConnectionRefusedError:
        print("REFUSED"); sys.exit(0)
    except socket.timeout:
        print("TIMEOUT"); sys.exit(0)
print("OK", ok)
"""

TCP_CONNECT = r"""
import socket, sys, time
t = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()
    print("CONNECTED", time.monotonic() - t)
except ConnectionRefusedError:
    print("REFUSED", time.monotonic() - t)
except OSError as exc:
    print("ERROR", exc, time.monotonic() - t)
"""

DNS_TCP = r"""
import socket, struct, sys
name = sys.argv[3]
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(struct.pack("!H", len(q)) + q)
buf = b""
while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
    chunk = s.recv(4096)
    if not chunk:
        break
    buf += chunk
msg = buf[2:]
print("ANSWERS", struct.unpack("!H", msg[6:8])[0], ".".join(str(b) for b in msg[-4:]))
"""

ECHO_SERVER_IN_GUEST = r"""
import socket, sys
addr = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, int(sys.argv[1])))
s.settimeout(10)
print("READY", flush=True)
data, peer = s.recvfrom(65535)
s.sendto(data, peer)
"""

MANY_FLOWS = r"""
import hashlib, selectors, socket, sys, time
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def content(i):
    block = hashlib.sha256(b"flow-%d" % i).digest()
    return (block * (size // 32 + 1))[:size]

sel = selectors.DefaultSelector()
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((host, port))
    sel.register(s, selectors.EVENT_WRITE, [i, hashlib.sha256(), False])
done = ok = failed = 0
deadline = time.monotonic() + 240
while done < n and time.monotonic() < deadline:
    for key, ev in sel.select(1):
        st = key.data
        s = key.fileobj
        if not st[2]:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                sel.unregister(s); s.close(); done += 1; failed += 1
                continue
            s.send(b"GET %d\n" % st[0])
            st[2] = True
            sel.modify(s, selectors.EVENT_READ, st)
            continue
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if data:
            st[1].update(data)
        else:
            sel.unregister(s); s.close(); done += 1
            if st[1].digest() == hashlib.sha256(content(st[0])).digest():
                ok += 1
print("DONE", done, "OK", ok, "FAILED", failed)
"""

UPLOAD_FLOWS = r"""
import hashlib, selectors, socket, struct, sys, time
host, port, n, seconds, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
min_bytes = int(sys.argv[6]) if len(sys.argv) > 6 else 0
CHUNK = 65536
# every flow writes as fast as it can for `seconds` (and at least `min_bytes`), then half-closes and waits for
# the sink reply "<bytes> <sha256>"
sel = selectors.DefaultSelector()
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((host, port))
    buf = bytearray(struct.pack("!II", i, 0) + hashlib.sha256(b"flow-%d" % i).digest() * (CHUNK // 32 - 1) + bytes(24))
    # flow, digest, bytes written, chunk buffer, current view, its offset, chunk number, reply
    sel.register(s, selectors.EVENT_WRITE, [i, hashlib.sha256(), 0, buf, memoryview(b"PUT %d\n" % i), 0, 0, b""])
done = ok = failed = 0
sent = delivered = 0
t0 = time.monotonic()
stop_at, deadline = t0 + seconds, t0 + limit
while done < n and time.monotonic() < deadline:
    writing = time.monotonic() < stop_at
    for key, ev in sel.select(1):
        st = key.data
        s = key.fileobj
        if ev & selectors.EVENT_WRITE:
            try:
                k = s.send(st[4][st[5]:])
            except BlockingIOError:
                continue
            except OSError:
                sel.unregister(s); s.close(); done += 1; failed += 1
                continue
            st[5] += k
            if st[5] == len(st[4]):
                if not writing and st[2] >= min_bytes:
                    s.shutdown(socket.SHUT_WR)
                    sel.modify(s, selectors.EVENT_READ, st)
                    continue
                struct.pack_into("!I", st[3], 4, st[6])  # numbered chunks: reordering changes the digest
                st[6] += 1
                st[1].update(st[3])
                st[2] += CHUNK
                sent += CHUNK
                st[4], st[5] = memoryview(st[3]), 0
            continue
        try:
            data = s.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if data:
            st[7] += data
            continue
        sel.unregister(s); s.close(); done += 1
        reply = st[7].split()
        if len(reply) == 2:
            delivered += int(reply[0])
        if reply == [b"%d" % st[2], st[1].hexdigest().encode()]:
            ok += 1
        else:
            failed += 1
print("DONE", done, "OK", ok, "FAILED", failed, "LOST", sent - delivered, "STUCK", n - done, "SENT", sent,
      "SECONDS", round(time.monotonic() - t0, 1))
"""

IDLE_FLOWS = r"""
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port), timeout=10) for _ in range(n)]
print("OPEN", len(socks), flush=True)
sys.stdin.readline()
"""

TCP_ECHO_SERVER_IN_GUEST = r"""
import socket, sys
addr = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, int(sys.argv[1])))
s.listen(4)
s.settimeout(20)
print("READY", flush=True)
conn, peer = s.accept()
print("PEER", peer[0], flush=True)
while True:
    data = conn.recv(65536)
    if not data:
        break
    conn.sendall(data)
conn.close()
"""

SLOW_READER = r"""
import hashlib, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
time.sleep(float(sys.argv[3]))  # let the host fill our window: zero-window periods follow
h = hashlib.sha256()
n = 0
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    h.update(chunk)
    n += len(chunk)
    if n % (1 << 20) < 4096:
        time.sleep(0.05)
print("GOT", n, h.hexdigest())
"""
