//! Reading pcap (both byte orders, µs and ns timestamps) and pcapng, writing pcap.
//!
//! Readers never panic on a corrupt or truncated file: they return an error with
//! the byte offset of the record that is wrong. Only Ethernet captures (link type
//! 1) are accepted; any other link type is an error that names it.
//!
//! The formats are parsed by the `pcap-file` crate's zero-copy slice parsers
//! over the file read whole; this module adds what replay needs on top: the
//! index of records into that one buffer, the Ethernet-only and
//! [`MAX_FRAME`] policy, and errors that name the file and byte offset.
//! Classic pcap records are taken raw (`next_raw_packet`), so that, as with
//! libpcap, a capture cut at a snapshot length (orig_len > snaplen) reads.
//! The pcap writer stays here: it is 16 bytes per record on the replay
//! output path, appended to buffers the caller owns.
//!
//! Why the crate and not our own reader (issue 13): `benches` `pcap-ab`
//! (release, medians of 9 alternating loads, 2 shared cores) loaded a 2M-packet
//! 388 MB pcap in 809 ms with our reader and 802 ms with pcap-file
//! 3.0.0-rc.3, its pcapng conversion in 843 / 902 ms, a 250k x 1500 B pcap
//! in 614 / 586 ms: the file read dominates, and the parsers alone (241 /
//! 285, 154 / 205, 46 / 53 ms on bytes in memory) are not what a replay
//! waits for. 3.0.0-rc.3 and not 2.0.0 (see `Cargo.toml`) because 2.0.0
//! read both pcapng files in `shared/testdata/pcap` with timestamps 1000x
//! off and rejected one of its snaplen-cut pcaps.

use std::path::{Path, PathBuf};

use pcap_file::pcap::{PcapParseError, PcapParser, PcapTsResolution};
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::DataLink;

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
    if data.starts_with(&PCAPNG_MAGIC) {
        parse_pcapng(data, path)
    } else {
        parse_pcap(data, path)
    }
}

/// The magic number of a pcapng section header block.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
/// The magic numbers of pcap (µs and ns timestamps, either byte order), as
/// the file's first 4 bytes: known before the parser, which wants the whole
/// 24-byte header first, so that a short file of something else is "not a
/// pcap" rather than a truncated one.
const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0x4d, 0x3c, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
];

/// A parser error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Where in `data` the remainder `rem` starts.
fn offset_of(data: &[u8], rem: &[u8]) -> usize {
    data.len() - rem.len()
}

/// Where in `data` the sub-slice `part` starts (the parsers hand out
/// borrowed slices of `data`).
fn position(data: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - data.as_ptr() as usize
}

fn link_type_error(path: &Path, dl: DataLink) -> PcapError {
    // The top bits of a pcap header's link-type field carry the FCS length.
    let linktype = u32::from(dl) & 0x0fff_ffff;
    PcapError::LinkType {
        path: path.to_path_buf(),
        linktype,
        name: linktype_name(linktype),
    }
}

fn is_ethernet(dl: DataLink) -> bool {
    u32::from(dl) & 0x0fff_ffff == LINKTYPE_ETHERNET
}

fn parse_pcap(data: Vec<u8>, path: &Path) -> Result<Capture, PcapError> {
    let corrupt = |offset: usize, what: String| PcapError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what,
    };
    let magic = [data[0], data[1], data[2], data[3]];
    if !PCAP_MAGICS.contains(&magic) {
        return Err(corrupt(
            0,
            format!(
                "not a pcap or pcapng file (magic {:08x})",
                u32::from_be_bytes(magic)
            ),
        ));
    }
    let (mut rem, parser) = match PcapParser::new(&data) {
        Ok(x) => x,
        Err(PcapParseError::IncompleteBuffer(..)) => {
            return Err(corrupt(
                0,
                "truncated pcap global header (24 bytes needed)".into(),
            ))
        }
        Err(e) => return Err(corrupt(0, chain(&e))),
    };
    let header = parser.header();
    if !is_ethernet(header.datalink) {
        return Err(link_type_error(path, header.datalink));
    }
    let frac_ns = match header.ts_resolution {
        PcapTsResolution::MicroSecond => 1000,
        PcapTsResolution::NanoSecond => 1,
    };
    let mut records = Vec::new();
    while !rem.is_empty() {
        let off = offset_of(&data, rem);
        // Raw records: the snapshot length and the original length are not
        // checked against the captured length (a capture cut at a snaplen
        // says orig_len > snaplen, and libpcap and Wireshark read it too).
        let (next, pkt) = match parser.next_raw_packet(rem) {
            Ok(x) => x,
            Err(PcapParseError::IncompleteBuffer(..)) if rem.len() < 16 => {
                return Err(corrupt(
                    off,
                    format!("truncated record header ({} of 16 bytes)", rem.len()),
                ));
            }
            Err(PcapParseError::IncompleteBuffer(need, have)) => {
                return Err(corrupt(
                    off,
                    format!("truncated record: {need} bytes declared, {have} present"),
                ))
            }
            Err(e) => return Err(corrupt(off, chain(&e))),
        };
        let incl = pkt.data.len();
        if incl > MAX_FRAME {
            return Err(corrupt(
                off,
                format!("record length {incl} exceeds {MAX_FRAME}"),
            ));
        }
        records.push(Record {
            offset: position(&data, &pkt.data),
            len: incl,
            ts_ns: u64::from(pkt.ts_sec) * 1_000_000_000 + u64::from(pkt.ts_frac) * frac_ns,
        });
        rem = next;
    }
    Ok(Capture { data, records })
}

fn parse_pcapng(data: Vec<u8>, path: &Path) -> Result<Capture, PcapError> {
    let corrupt = |offset: usize, what: String| PcapError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what,
    };
    let (mut rem, mut parser) = PcapNgParser::new(&data).map_err(|e| corrupt(0, chain(&e)))?;
    let mut records = Vec::new();
    while !rem.is_empty() {
        let off = offset_of(&data, rem);
        let (next, block) = parser
            .next_block(rem)
            .map_err(|e| corrupt(off, chain(&e)))?;
        let (linktype, packet, ts_ns) = match &block {
            Block::EnhancedPacket(b) => {
                let Some(iface) = parser.interfaces().get(b.interface_id as usize) else {
                    return Err(corrupt(
                        off,
                        format!("packet refers to undeclared interface {}", b.interface_id),
                    ));
                };
                (
                    iface.linktype,
                    &b.data[..],
                    u64::try_from(b.timestamp.as_nanos()).unwrap_or(u64::MAX),
                )
            }
            Block::SimplePacket(b) => {
                let Some(iface) = parser.interfaces().first() else {
                    return Err(corrupt(off, "simple packet before any interface".into()));
                };
                // The data runs to the end of the block: padding included.
                let len = (b.original_len as usize).min(b.data.len());
                (iface.linktype, &b.data[..len], 0)
            }
            // Section headers and interfaces are the parser's state; the
            // rest (statistics, name resolution, ...) is not replayed.
            _ => {
                rem = next;
                continue;
            }
        };
        if !is_ethernet(linktype) {
            return Err(link_type_error(path, linktype));
        }
        if packet.len() > MAX_FRAME {
            return Err(corrupt(
                off,
                format!("captured length {} exceeds {MAX_FRAME}", packet.len()),
            ));
        }
        records.push(Record {
            offset: position(&data, packet),
            len: packet.len(),
            ts_ns,
        });
        rem = next;
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

    /// pcapng blocks (little-endian) for the tests below.
    fn block(btype: u32, body: &[u8]) -> Vec<u8> {
        let len = 12 + body.len().div_ceil(4) * 4;
        let mut b = btype.to_le_bytes().to_vec();
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.extend_from_slice(body);
        b.resize(len - 4, 0);
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b
    }

    fn shb() -> Vec<u8> {
        let mut body = vec![0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0];
        body.extend_from_slice(&u64::MAX.to_le_bytes()); // section length unknown
        block(0x0a0d_0d0a, &body)
    }

    /// An interface; `tsresol` adds an if_tsresol option, `end_of_options`
    /// terminates the option list with opt_endofopt (readers must not need it).
    fn idb(linktype: u16, tsresol: Option<u8>, end_of_options: bool) -> Vec<u8> {
        let mut body = linktype.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&65535u32.to_le_bytes());
        if let Some(r) = tsresol {
            body.extend_from_slice(&[9, 0, 1, 0, r, 0, 0, 0]);
        }
        if end_of_options {
            body.extend_from_slice(&[0; 4]);
        }
        block(1, &body)
    }

    fn epb(ifid: u32, ts: u64, data: &[u8]) -> Vec<u8> {
        let mut body = ifid.to_le_bytes().to_vec();
        body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        block(6, &body)
    }

    #[test]
    fn test_pcapng_timestamp_resolutions() {
        // Default (µs), if_tsresol 9 (ns) and 2^-10 s; no opt_endofopt on the last.
        let mut f = shb();
        f.extend(idb(1, None, true));
        f.extend(idb(1, Some(9), true));
        f.extend(idb(1, Some(0x8a), false));
        f.extend(epb(0, 1_500_000, &[1; 60]));
        f.extend(epb(1, 1_500_000, &[2; 61]));
        f.extend(epb(2, 3 * 1024, &[3; 62]));
        let c = parse(f, p()).unwrap();
        let got: Vec<(u64, usize, u8)> = c.iter().map(|(r, d)| (r.ts_ns, r.len, d[0])).collect();
        assert_eq!(
            got,
            [
                (1_500_000_000, 60, 1),
                (1_500_000, 61, 2),
                (3_000_000_000, 62, 3)
            ]
        );
    }

    #[test]
    fn test_pcapng_errors_name_offsets() {
        let mut f = shb();
        let idb_at = f.len();
        f.extend(idb(1, None, true));
        let epb_at = f.len();
        f.extend(epb(0, 1, &[1; 60]));
        for cut in 0..f.len() {
            if cut == epb_at || cut == idb_at {
                assert!(parse(f[..cut].to_vec(), p()).is_ok(), "cut {cut}");
                continue;
            }
            let e = parse(f[..cut].to_vec(), p()).unwrap_err().to_string();
            assert!(e.contains("byte offset"), "cut {cut}: {e}");
        }
        let mut undeclared = f.clone();
        undeclared.extend(epb(3, 1, &[1; 60]));
        let e = parse(undeclared, p()).unwrap_err().to_string();
        assert!(e.contains(&format!("byte offset {}", f.len())), "{e}");
        let mut raw = shb();
        raw.extend(idb(101, None, true));
        raw.extend(epb(0, 1, &[1; 60]));
        let e = parse(raw, p()).unwrap_err().to_string();
        assert!(e.contains("link type 101 (RAW)"), "{e}");
    }

    #[test]
    fn test_snaplen_cut_capture_reads() {
        // tcpdump -s 64: a 1500-byte packet, 64 bytes of it captured.
        let mut h = global_header();
        h[16..20].copy_from_slice(&64u32.to_le_bytes());
        let mut d = h.to_vec();
        for v in [1u32, 0, 64, 1500] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend_from_slice(&[7; 64]);
        let c = parse(d, p()).unwrap();
        assert_eq!(c.records.len(), 1);
        assert_eq!(c.packet(&c.records[0]), &[7; 64]);
        assert_eq!(c.records[0].ts_ns, 1_000_000_000);
    }

    #[test]
    fn test_mutations_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut w = PcapWriter::new();
        w.write(5, &[1; 60]);
        w.write(6, &[2; 70]);
        let mut ng = shb();
        ng.extend(idb(1, Some(6), true));
        ng.extend(epb(0, 9, &[1; 60]));
        ng.extend(block(3, &[6, 0, 0, 0, 5, 5, 5, 5, 5, 5]));
        // The simple packet: 6 bytes, padded to 8 in its block.
        let c = parse(ng.clone(), p()).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.packet(&c.records[1]), &[5; 6]);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(13);
        for base in [w.buf, ng] {
            for _ in 0..20_000 {
                let mut f = base.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..f.len());
                    f[at] = rng.gen();
                }
                f.truncate(rng.gen_range(0..=f.len()));
                if let Ok(c) = parse(f, p()) {
                    for (r, d) in c.iter() {
                        assert!(r.len <= MAX_FRAME && d.len() == r.len);
                    }
                }
            }
        }
    }
}
