"""Wire constants and precompiled structs shared by the protocol modules."""

from __future__ import annotations

import struct

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_LEN = 14
BROADCAST_MAC = b"\xff" * 6
#: locally administered, unicast; the same for the gateway and DNS addresses
HOST_MAC = bytes.fromhex("525500000202")

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

#: TCP sequence numbers are modulo 2**32; a difference at or above HALF means "behind"
MASK = 0xFFFFFFFF
HALF = 0x80000000

#: room in front of every frame we build for the 10-byte virtio-net header
HEADROOM = 10
VNET = struct.Struct("<BBHHHH")
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_TCPV6 = 4
VNET_HDR_NONE = bytes(10)

ETH = struct.Struct("!6s6sH")
TCP = struct.Struct("!HHIIHHHH")
UDP = struct.Struct("!HHHH")
ICMP_ECHO = struct.Struct("!BBHHH")

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
