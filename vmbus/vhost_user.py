"""The vhost-user protocol, back-end side, sans-IO: message framing and the state the
front-end (QEMU) sets up (features, memory table, vrings, eventfds).

A message is a 12-byte header (request, flags, size; little-endian) and `size` bytes of
payload; file descriptors ride along as SCM_RIGHTS. Replies carry flags VERSION|REPLY.
The IO layer feeds bytes and fds in and sends what `replies()` returns; mmapping the memory
table's fds and polling kick eventfds is the IO layer's job too.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Optional

HEADER = struct.Struct("<III")
VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
MAX_PAYLOAD = 4096

GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
GET_CONFIG, SET_CONFIG = 24, 25

VIRTIO_F_VERSION_1 = 1 << 32
VIRTIO_RING_F_EVENT_IDX = 1 << 29
VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
PROTOCOL_F_REPLY_ACK = 1 << 3
PROTOCOL_F_CONFIG = 1 << 9
VRING_NOFD_MASK = 0x100
VRING_INDEX_MASK = 0xFF

DEVICE_FEATURES = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES
PROTOCOL_FEATURES = PROTOCOL_F_CONFIG | PROTOCOL_F_REPLY_ACK


class VhostUserError(Exception):
    """The front-end broke the protocol; the connection cannot continue."""


@dataclass
class MemRegion:
    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int
    fd: int


@dataclass
class Vring:
    num: int = 0
    base: int = 0
    desc: int = 0     # front-end virtual addresses, as sent
    used: int = 0
    avail: int = 0
    kick: Optional[int] = None
    call: Optional[int] = None
    err: Optional[int] = None
    enabled: bool = False
    started: bool = False


@dataclass
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)


class VhostUserBackend:
    """State machine for one front-end connection of a device with `queues` vrings."""

    def __init__(self, queues: int, config: bytes) -> None:
        self.vrings = [Vring() for _ in range(queues)]
        self.config = config
        self.features = 0
        self.protocol_features = 0
        self.owner = False
        self.memory: list[MemRegion] = []
        self.memory_changed = False
        self._buf = bytearray()
        self._fds: list[int] = []
        self._out: list[tuple[bytes, list[int]]] = []
        self.events: list[tuple[str, int]] = []   # ("start"|"stop"|"kick"|"call", vring) for the IO layer

    # --- input --------------------------------------------------------------------------
    def feed(self, data: bytes, fds: list[int] | None = None) -> list[Message]:
        self._buf += data
        self._fds += fds or []
        messages = []
        while len(self._buf) >= HEADER.size:
            request, flags, size = HEADER.unpack_from(self._buf)
            if size > MAX_PAYLOAD:
                raise VhostUserError(f"message {request} announces {size} bytes of payload")
            if len(self._buf) < HEADER.size + size:
                break
            payload = bytes(self._buf[HEADER.size:HEADER.size + size])
            del self._buf[:HEADER.size + size]
            messages.append(Message(request, flags, payload))
        for msg in messages:
            # A stream read may carry several messages and their fds together: each message
            # that takes fds takes them, in order, from what has arrived.
            msg.fds = self._take_fds(msg)
            self._handle(msg)
        return messages

    def _take_fds(self, msg: Message) -> list[int]:
        wanted = 0
        if msg.request == SET_MEM_TABLE and len(msg.payload) >= 4:
            wanted = struct.unpack_from("<I", msg.payload)[0]
        elif msg.request in (SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR) and len(msg.payload) >= 8:
            wanted = 0 if struct.unpack_from("<Q", msg.payload)[0] & VRING_NOFD_MASK else 1
        if wanted > len(self._fds):
            raise VhostUserError(f"message {msg.request} needs {wanted} fds, {len(self._fds)} arrived")
        taken, self._fds = self._fds[:wanted], self._fds[wanted:]
        return taken

    def replies(self) -> list[tuple[bytes, list[int]]]:
        out, self._out = self._out, []
        return out

    def _reply(self, msg: Message, payload: bytes) -> None:
        self._out.append((HEADER.pack(msg.request, VERSION | FLAG_REPLY, len(payload)) + payload, []))

    def _u64(self, msg: Message) -> int:
        if len(msg.payload) < 8:
            raise VhostUserError(f"message {msg.request}: payload of {len(msg.payload)} bytes, 8 expected")
        return struct.unpack_from("<Q", msg.payload)[0]

    def _state(self, msg: Message) -> tuple[int, int]:
        if len(msg.payload) < 8:
            raise VhostUserError(f"message {msg.request}: vring state too short")
        index, num = struct.unpack_from("<II", msg.payload)
        return self._vring_index(index), num

    def _vring_index(self, index: int) -> int:
        if index >= len(self.vrings):
            raise VhostUserError(f"vring {index} does not exist (device has {len(self.vrings)})")
        return index

    def _handle(self, msg: Message) -> None:
        r = msg.request
        ack_needed = bool(msg.flags & FLAG_NEED_REPLY) and self.protocol_features & PROTOCOL_F_REPLY_ACK
        if r == GET_FEATURES:
            self._reply(msg, struct.pack("<Q", DEVICE_FEATURES))
            return
        if r == GET_PROTOCOL_FEATURES:
            self._reply(msg, struct.pack("<Q", PROTOCOL_FEATURES))
            return
        if r == GET_QUEUE_NUM:
            self._reply(msg, struct.pack("<Q", len(self.vrings)))
            return
        if r == GET_VRING_BASE:
            index, _ = self._state(msg)
            vring = self.vrings[index]
            vring.started = False
            self.events.append(("stop", index))
            self._reply(msg, struct.pack("<II", index, vring.base))
            return
        if r == GET_CONFIG:
            if len(msg.payload) < 12:
                raise VhostUserError("GET_CONFIG payload too short")
            offset, size, flags = struct.unpack_from("<III", msg.payload)
            data = self.config[offset:offset + size].ljust(size, b"\0")
            self._reply(msg, struct.pack("<III", offset, size, flags) + data)
            return
        if r == SET_FEATURES:
            features = self._u64(msg)
            if features & ~DEVICE_FEATURES:
                raise VhostUserError(f"front-end set features {features:#x} the device does not offer")
            self.features = features
        elif r == SET_PROTOCOL_FEATURES:
            self.protocol_features = self._u64(msg) & PROTOCOL_FEATURES
        elif r == SET_OWNER:
            self.owner = True
        elif r == RESET_OWNER:
            self.owner = False
        elif r == SET_MEM_TABLE:
            self._set_mem_table(msg)
        elif r == SET_VRING_NUM:
            index, num = self._state(msg)
            if not 0 < num <= 32768 or num & (num - 1):
                raise VhostUserError(f"vring {index}: invalid size {num}")
            self.vrings[index].num = num
        elif r == SET_VRING_BASE:
            index, base = self._state(msg)
            self.vrings[index].base = base & 0xFFFF
        elif r == SET_VRING_ADDR:
            if len(msg.payload) < 40:
                raise VhostUserError("SET_VRING_ADDR payload too short")
            index, _flags, desc, used, avail, _log = struct.unpack_from("<IIQQQQ", msg.payload)
            vring = self.vrings[self._vring_index(index)]
            vring.desc, vring.used, vring.avail = desc, used, avail
        elif r in (SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR):
            value = self._u64(msg)
            index = self._vring_index(value & VRING_INDEX_MASK)
            fd = None if value & VRING_NOFD_MASK or not msg.fds else msg.fds[0]
            vring = self.vrings[index]
            name = {SET_VRING_KICK: "kick", SET_VRING_CALL: "call", SET_VRING_ERR: "err"}[r]
            setattr(vring, name, fd)
            if r == SET_VRING_KICK and fd is not None:
                self.events.append(("kick", index))
                if not self.features & VHOST_USER_F_PROTOCOL_FEATURES:
                    vring.enabled = True  # without protocol features a kick fd starts the ring
                self._maybe_start(index)
            elif r == SET_VRING_CALL:
                self.events.append(("call", index))
        elif r == SET_VRING_ENABLE:
            index, enable = self._state(msg)
            self.vrings[index].enabled = bool(enable)
            self._maybe_start(index)
        elif r == SET_CONFIG:
            pass  # the vsock config (guest CID) is read-only for the guest
        else:
            raise VhostUserError(f"unsupported vhost-user request {r}")
        if ack_needed:
            self._reply(msg, struct.pack("<Q", 0))

    def _set_mem_table(self, msg: Message) -> None:
        if len(msg.payload) < 8:
            raise VhostUserError("SET_MEM_TABLE payload too short")
        count, _ = struct.unpack_from("<II", msg.payload)
        if count != len(msg.fds) or count == 0 or len(msg.payload) < 8 + 32 * count:
            raise VhostUserError(f"SET_MEM_TABLE: {count} regions, {len(msg.fds)} fds")
        regions = []
        for i in range(count):
            guest_addr, size, user_addr, offset = struct.unpack_from("<QQQQ", msg.payload, 8 + 32 * i)
            regions.append(MemRegion(guest_addr, size, user_addr, offset, msg.fds[i]))
        self.memory = regions
        self.memory_changed = True

    def _maybe_start(self, index: int) -> None:
        vring = self.vrings[index]
        if vring.enabled and vring.kick is not None and vring.num and vring.desc and not vring.started:
            vring.started = True
            self.events.append(("start", index))

    def take_events(self) -> list[tuple[str, int]]:
        out, self.events = self.events, []
        return out


def vsock_config(guest_cid: int) -> bytes:
    """virtio-vsock device config: the guest's CID (le64)."""
    return struct.pack("<Q", guest_cid)
