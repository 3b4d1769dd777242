#!/usr/bin/env python3
"""Builds the seed corpora of dpgw's fuzz targets from the repository's captures,
the shared test data and the hand-written seeds in fuzz/seeds/.

    python3 fuzz/seed-corpus.py            # writes fuzz/corpus/<target>/

Frames are extracted from pcap and pcapng files with a small reader here (no
third-party modules), so the corpus does not depend on the code under test.
Idempotent: file names are content hashes.
"""
import hashlib
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "testdata")
OUT = os.path.join(HERE, "corpus")


def put(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frames(path):
    """Yields the frames of a pcap or pcapng file (Ethernet or not; the
    fuzzers do not care)."""
    with open(path, "rb") as f:
        b = f.read()
    if len(b) < 24:
        return
    if b[:4] == b"\x0a\x0d\x0d\x0a":
        off, bo = 0, "<"
        while off + 12 <= len(b):
            btype, blen = struct.unpack_from(bo + "II", b, off)
            if btype == 0x0A0D0D0A:
                bo = "<" if b[off + 8:off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
                btype, blen = struct.unpack_from(bo + "II", b, off)
            if blen < 12 or off + blen > len(b):
                return
            if btype == 6 and blen >= 32:
                caplen = struct.unpack_from(bo + "I", b, off + 20)[0]
                yield b[off + 28:off + 28 + caplen]
            elif btype == 3 and blen >= 16:
                plen = struct.unpack_from(bo + "I", b, off + 8)[0]
                yield b[off + 12:off + 12 + min(plen, blen - 16)]
            off += blen
        return
    magic = b[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        bo = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        bo = ">"
    else:
        return
    off = 24
    while off + 16 <= len(b):
        incl = struct.unpack_from(bo + "I", b, off + 8)[0]
        if off + 16 + incl > len(b):
            return
        yield b[off + 16:off + 16 + incl]
        off += 16 + incl


def vxlan_inner(f):
    """The inner frame of a VXLAN-in-UDP frame (ports 4789/8472), or None."""
    off, et = 14, f[12:14] if len(f) >= 14 else b""
    for _ in range(2):
        if et in (b"\x81\x00", b"\x88\xa8") and len(f) >= off + 4:
            et, off = f[off + 2:off + 4], off + 4
    if et == b"\x08\x00" and len(f) >= off + 20:
        hl = (f[off] & 15) * 4
        if f[off + 9] != 17:
            return None
        udp = off + hl
    elif et == b"\x86\xdd" and len(f) >= off + 40:
        if f[off + 6] != 17:
            return None
        udp = off + 40
    else:
        return None
    if len(f) < udp + 16:
        return None
    dport = struct.unpack_from(">H", f, udp + 2)[0]
    if dport not in (4789, 8472):
        return None
    return f[udp + 16:]


def captures():
    paths = [os.path.join(ROOT, "pcaps", "demo.pcap")]
    for d in ("general", "vxlan", "geneve"):
        p = os.path.join(SHARED, "pcap", d)
        if os.path.isdir(p):
            paths += [os.path.join(p, n) for n in sorted(os.listdir(p)) if n.endswith((".pcap", ".pcapng"))]
    return [p for p in paths if os.path.isfile(p)]


def main():
    n = {}
    def add(t, data):
        put(t, data)
        n[t] = n.get(t, 0) + 1

    for path in captures():
        size = os.path.getsize(path)
        if size <= 16384:
            add("pcapfile", open(path, "rb").read())
        for i, f in enumerate(frames(path)):
            if i >= 64:  # a few per capture is plenty: the fuzzer mutates
                break
            add("decap", f)
            add("pipeline", b"\x00" + f)
            add("pipeline", b"\x01" + f)
            add("inner", f)
            inner = vxlan_inner(f)
            if inner:
                add("inner", inner)
    # ClassBench: small slices of every filter set.
    cb = os.path.join(SHARED, "classbench")
    for sub in ("cutsplit", "neurocuts"):
        d = os.path.join(cb, sub)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if "trace" in name or name.endswith(".md"):
                continue
            lines = open(os.path.join(d, name), encoding="utf-8", errors="replace").read().splitlines()
            for start in range(0, min(len(lines), 400), 20):
                add("classbench", ("\n".join(lines[start:start + 20]) + "\n").encode())
    # Configs: every TOML config of the repository plus the hand-written seeds.
    for base, _, files in os.walk(ROOT):
        if "/target" in base or "/.git" in base or "/fuzz" in base:
            continue
        for name in files:
            if name.endswith(".toml") and name != "Cargo.toml":
                add("config", open(os.path.join(base, name), "rb").read())
    seeds = os.path.join(HERE, "seeds")
    for name in sorted(os.listdir(seeds)):
        data = open(os.path.join(seeds, name), "rb").read()
        target = name.split(".", 1)[0]
        if target == "config":
            add("config", data)
            # The [acl] part alone is an AclSpec.
            text = data.decode()
            if "[acl]" in text:
                acl = []
                keep = False
                for line in text.splitlines():
                    if line.startswith("["):
                        keep = line.startswith("[acl") or line.startswith("[[acl")
                        if keep:
                            line = line.replace("[[acl.", "[[").replace("[acl]", "")
                    if keep:
                        acl.append(line)
                add("acl_spec", ("\n".join(acl) + "\n").encode())
        else:
            add(target, data)
    for t in sorted(n):
        print(f"{t}: {n[t]} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
