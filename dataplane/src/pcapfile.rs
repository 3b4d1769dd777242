//! Reading pcap (both byte orders, µs and ns timestamps) and pcapng, writing pcap.
//!
//! Readers never panic on a corrupt or truncated file: they return an error with
//! the byte offset of the record that is wrong. Only Ethernet captures (link type
//! 1) are accepted; any other link type is an error that names it.

use std::path::{Path, PathBuf};

pub const LINKTYPE_ETHERNET: u32 = 1;

/// Largest frame we accept from a capture (jumbo + some).
pub const MAX_FRAME: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: byte offset {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: usize,
        what: String,
    },
    #[error("{path}: link type {linktype} ({name}) is not supported; dpgw replays Ethernet captures (link type 1)")]
    LinkType {
        path: PathBuf,
        linktype: u32,
        name: &'static str,
    },
}

fn linktype_name(lt: u32) -> &'static str {
    match lt {
        0 => "NULL/loopback",
        1 => "ETHERNET",
        12 | 14 | 101 => "RAW",
        105 => "IEEE802_11",
        113 => "LINUX_SLL",
        127 => "IEEE802_11_RADIOTAP",
        228 => "IPV4",
        229 => "IPV6",
        276 => "LINUX_SLL2",
        _ => "unknown",
    }
}

/// A packet of a capture, borrowed from [`Capture::data`].
#[derive(Clone, Copy, Debug)]
pub struct Record {
    pub offset: usize,
    pub len: usize,
    /// Timestamp in nanoseconds since the epoch.
    pub ts_ns: u64,
}

/// A whole capture in memory.
#[derive(Debug, Default)]
pub struct Capture {
    pub data: Vec<u8>,
    pub records: Vec<Record>,
}

impl Capture {
    pub fn packet(&self, r: &Record) -> &[u8] {
        &self.data[r.offset..r.offset + r.len]
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Record, &[u8])> {
        self.records.iter().map(move |r| (r, self.packet(r)))
    }
}

/// Reads a pcap or pcapng file.
pub fn read_file(path: &Path) -> Result<Capture, PcapError> {
    let data = std::fs::read(path).map_err(|source| PcapError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(data, path)
}

/// Parses capture bytes (pcap or pcapng, detected from the magic number).
pub fn parse(data: Vec<u8>, path: &Path) -> Result<Capture, PcapError> {
    let corrupt = |offset: usize, what: String| PcapError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what,
    };
    if data.len() < 4 {
        return Err(corrupt(
            0,
            format!("file too short ({} bytes) for a capture header", data.len()),
        ));
    }
    let magic = [data[0], data[1], data[2], data[3]];
    match magic {
        [0x0a, 0x0d, 0x0d, 0x0a] => parse_pcapng(data, path),
        _ => parse_pcap(data, path),
    }
}

fn rd_u16(d: &[u8], off: usize, be: bool) -> u16 {
    let b = [d[off], d[off + 1]];
    if be {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    }
}

fn rd_u32(d: &[u8], off: usize, be: bool) -> u32 {
    let b = [d[off], d[off + 1], d[off + 2], d[off + 3]];
    if be {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

fn parse_pcap(data: Vec<u8>, path: &Path) -> Result<Capture, PcapError> {
    let corrupt = |offset: usize, what: String| PcapError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what,
    };
    let (be, nanos) = match [data[0], data[1], data[2], data[3]] {
        [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
        m => {
            return Err(corrupt(
                0,
                format!(
                    "not a pcap or pcapng file (magic {:02x}{:02x}{:02x}{:02x})",
                    m[0], m[1], m[2], m[3]
                ),
            ))
        }
    };
    if data.len() < 24 {
        return Err(corrupt(
            0,
            "truncated pcap global header (24 bytes needed)".into(),
        ));
    }
    let linktype = rd_u32(&data, 20, be) & 0x0fff_ffff;
    if linktype != LINKTYPE_ETHERNET {
        return Err(PcapError::LinkType {
            path: path.to_path_buf(),
            linktype,
            name: linktype_name(linktype),
        });
    }
    let mut records = Vec::new();
    let mut off = 24;
    while off < data.len() {
        if data.len() - off < 16 {
            return Err(corrupt(
                off,
                format!("truncated record header ({} of 16 bytes)", data.len() - off),
            ));
        }
        let sec = rd_u32(&data, off, be) as u64;
        let frac = rd_u32(&data, off + 4, be) as u64;
        let incl = rd_u32(&data, off + 8, be) as usize;
        if incl > MAX_FRAME {
            return Err(corrupt(
                off,
                format!("record length {incl} exceeds {MAX_FRAME}"),
            ));
        }
        let body = off + 16;
        if data.len() - body < incl {
            return Err(corrupt(
                off,
                format!(
                    "truncated record: {incl} bytes declared, {} present",
                    data.len() - body
                ),
            ));
        }
        let ts_ns = sec * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        records.push(Record {
            offset: body,
            len: incl,
            ts_ns,
        });
        off = body + incl;
    }
    Ok(Capture { data, records })
}

fn parse_pcapng(data: Vec<u8>, path: &Path) -> Result<Capture, PcapError> {
    let corrupt = |offset: usize, what: String| PcapError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what,
    };
    // Per section: byte order; per interface: link type and timestamp resolution.
    let mut be = false;
    let mut ifaces: Vec<(u32, u64)> = Vec::new(); // (linktype, units per second)
    let mut records = Vec::new();
    let mut off = 0;
    while off < data.len() {
        if data.len() - off < 12 {
            return Err(corrupt(
                off,
                format!("truncated block header ({} bytes left)", data.len() - off),
            ));
        }
        let btype_raw = [data[off], data[off + 1], data[off + 2], data[off + 3]];
        if btype_raw == [0x0a, 0x0d, 0x0d, 0x0a] {
            // Section header: the byte-order magic decides the endianness.
            let bom = [data[off + 8], data[off + 9], data[off + 10], data[off + 11]];
            be = match bom {
                [0x1a, 0x2b, 0x3c, 0x4d] => true,
                [0x4d, 0x3c, 0x2b, 0x1a] => false,
                _ => return Err(corrupt(off + 8, "bad pcapng byte-order magic".into())),
            };
            ifaces.clear();
        }
        let btype = rd_u32(&data, off, be);
        let blen = rd_u32(&data, off + 4, be) as usize;
        if blen < 12 || blen % 4 != 0 {
            return Err(corrupt(off, format!("bad block length {blen}")));
        }
        if data.len() - off < blen {
            return Err(corrupt(
                off,
                format!(
                    "truncated block: {blen} bytes declared, {} present",
                    data.len() - off
                ),
            ));
        }
        let body = off + 8;
        let body_len = blen - 12;
        match btype {
            0x0000_0001 => {
                // Interface description: linktype u16, reserved u16, snaplen u32, options.
                if body_len < 8 {
                    return Err(corrupt(off, "truncated interface description block".into()));
                }
                let lt = rd_u16(&data, body, be) as u32;
                let mut units = 1_000_000u64;
                // Options: look for if_tsresol (code 9).
                let mut o = body + 8;
                let end = body + body_len;
                while o + 4 <= end {
                    let code = rd_u16(&data, o, be);
                    let len = rd_u16(&data, o + 2, be) as usize;
                    if code == 0 {
                        break;
                    }
                    if o + 4 + len > end {
                        return Err(corrupt(o, "option runs past its block".into()));
                    }
                    if code == 9 && len >= 1 {
                        let v = data[o + 4];
                        units = if v & 0x80 != 0 {
                            1u64.checked_shl((v & 0x7f) as u32).unwrap_or(0)
                        } else {
                            10u64.checked_pow((v & 0x7f) as u32).unwrap_or(0)
                        };
                        if units == 0 {
                            return Err(corrupt(o, format!("unsupported if_tsresol {v:#x}")));
                        }
                    }
                    o += 4 + len.div_ceil(4) * 4;
                }
                ifaces.push((lt, units));
            }
            0x0000_0006 => {
                // Enhanced packet: if_id, ts_hi, ts_lo, caplen, origlen, data.
                if body_len < 20 {
                    return Err(corrupt(off, "truncated enhanced packet block".into()));
                }
                let ifid = rd_u32(&data, body, be) as usize;
                let Some(&(lt, units)) = ifaces.get(ifid) else {
                    return Err(corrupt(
                        off,
                        format!("packet refers to undeclared interface {ifid}"),
                    ));
                };
                if lt != LINKTYPE_ETHERNET {
                    return Err(PcapError::LinkType {
                        path: path.to_path_buf(),
                        linktype: lt,
                        name: linktype_name(lt),
                    });
                }
                let ts = ((rd_u32(&data, body + 4, be) as u64) << 32)
                    | rd_u32(&data, body + 8, be) as u64;
                let caplen = rd_u32(&data, body + 12, be) as usize;
                if caplen > body_len - 20 || caplen > MAX_FRAME {
                    return Err(corrupt(
                        off,
                        format!("captured length {caplen} exceeds its block"),
                    ));
                }
                let ts_ns = (ts as u128 * 1_000_000_000u128 / units as u128) as u64;
                records.push(Record {
                    offset: body + 20,
                    len: caplen,
                    ts_ns,
                });
            }
            0x0000_0003 => {
                // Simple packet: origlen, data (interface 0, no timestamp).
                if body_len < 4 {
                    return Err(corrupt(off, "truncated simple packet block".into()));
                }
                let Some(&(lt, _)) = ifaces.first() else {
                    return Err(corrupt(off, "simple packet before any interface".into()));
                };
                if lt != LINKTYPE_ETHERNET {
                    return Err(PcapError::LinkType {
                        path: path.to_path_buf(),
                        linktype: lt,
                        name: linktype_name(lt),
                    });
                }
                let orig = rd_u32(&data, body, be) as usize;
                let caplen = orig.min(body_len - 4);
                records.push(Record {
                    offset: body + 4,
                    len: caplen,
                    ts_ns: 0,
                });
            }
            _ => {} // Section header handled above; others (stats, name resolution) ignored.
        }
        let trailer = rd_u32(&data, off + blen - 4, be) as usize;
        if trailer != blen {
            return Err(corrupt(
                off + blen - 4,
                format!("block trailer length {trailer} != {blen}"),
            ));
        }
        off += blen;
    }
    Ok(Capture { data, records })
}

/// Builds a pcap file (little-endian, nanosecond timestamps, Ethernet) in memory.
#[derive(Debug)]
pub struct PcapWriter {
    pub buf: Vec<u8>,
}

impl Default for PcapWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PcapWriter {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(&global_header());
        PcapWriter { buf }
    }

    pub fn write(&mut self, ts_ns: u64, frame: &[u8]) {
        write_record(&mut self.buf, ts_ns, frame);
    }
}

pub fn global_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_3c4du32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&(MAX_FRAME as u32).to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    h
}

/// Appends one record (nanosecond pcap) to `out`.
#[inline]
pub fn write_record(out: &mut Vec<u8>, ts_ns: u64, frame: &[u8]) {
    let sec = (ts_ns / 1_000_000_000) as u32;
    let ns = (ts_ns % 1_000_000_000) as u32;
    let len = frame.len() as u32;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&sec.to_le_bytes());
    h[4..8].copy_from_slice(&ns.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..16].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.pcap")
    }

    #[test]
    fn test_round_trip() {
        let mut w = PcapWriter::new();
        w.write(1_500_000_123, &[1, 2, 3]);
        w.write(2_000_000_000, &[4; 60]);
        let c = parse(w.buf.clone(), p()).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.packet(&c.records[0]), &[1, 2, 3]);
        assert_eq!(c.records[0].ts_ns, 1_500_000_123);
        assert_eq!(c.packet(&c.records[1]).len(), 60);
    }

    #[test]
    fn test_truncated_every_length() {
        let mut w = PcapWriter::new();
        w.write(1, &[9; 40]);
        w.write(2, &[8; 40]);
        let full = w.buf;
        for cut in 0..full.len() {
            let r = parse(full[..cut].to_vec(), p());
            match cut {
                24 => assert_eq!(r.unwrap().records.len(), 0),
                80 => assert_eq!(r.unwrap().records.len(), 1),
                _ => {
                    let e = r.unwrap_err().to_string();
                    assert!(e.contains("byte offset"), "cut {cut}: {e}");
                }
            }
        }
    }

    #[test]
    fn test_big_endian_micro() {
        let mut d = vec![0xa1, 0xb2, 0xc3, 0xd4, 0, 2, 0, 4];
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(&65535u32.to_be_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(&7u32.to_be_bytes());
        d.extend_from_slice(&2u32.to_be_bytes());
        d.extend_from_slice(&2u32.to_be_bytes());
        d.extend_from_slice(&[0xaa, 0xbb]);
        let c = parse(d, p()).unwrap();
        assert_eq!(c.records.len(), 1);
        assert_eq!(c.records[0].ts_ns, 3_000_007_000);
        assert_eq!(c.packet(&c.records[0]), &[0xaa, 0xbb]);
    }

    #[test]
    fn test_other_linktype_named() {
        let mut h = global_header();
        h[20..24].copy_from_slice(&101u32.to_le_bytes());
        let e = parse(h.to_vec(), p()).unwrap_err().to_string();
        assert!(e.contains("101") && e.contains("RAW"), "{e}");
    }

    #[test]
    fn test_garbage() {
        let e = parse(b"hello world, not a pcap".to_vec(), p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a pcap"), "{e}");
    }
}
