//! A minimal pcapng writer for `dpgwctl capture`: a section header, one
//! Ethernet interface per worker (nanosecond timestamps), and enhanced packet
//! blocks with a comment each. Blocks are written whole, so a reader of a
//! stream (`dpgwctl capture -w - | tshark -r -`) sees complete blocks only.

use std::io::{self, Write};

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

fn option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    let len = value.len().min(u16::MAX as usize - 4);
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&value[..len]);
    out.resize(out.len() + pad4(len) - len, 0);
}

fn block(w: &mut impl Write, kind: u32, body: &[u8]) -> io::Result<()> {
    let total = (12 + body.len()) as u32;
    let mut b = Vec::with_capacity(total as usize);
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&total.to_le_bytes());
    w.write_all(&b)
}

/// Writes the section header and one interface per name (`if_name`), with
/// link type Ethernet and nanosecond timestamps.
pub fn write_header(w: &mut impl Write, interfaces: &[String], snaplen: u32) -> io::Result<()> {
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    option(
        &mut shb,
        4,
        concat!("dpgwctl ", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    option(&mut shb, 0, &[]);
    block(w, 0x0A0D_0D0A, &shb)?;
    for name in interfaces {
        let mut idb = Vec::new();
        idb.extend_from_slice(&1u16.to_le_bytes()); // LINKTYPE_ETHERNET
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&snaplen.to_le_bytes());
        option(&mut idb, 2, name.as_bytes()); // if_name
        option(&mut idb, 9, &[9]); // if_tsresol: 10^-9
        option(&mut idb, 0, &[]);
        block(w, 1, &idb)?;
    }
    Ok(())
}

/// Writes one enhanced packet block on interface `iface`.
pub fn write_packet(
    w: &mut impl Write,
    iface: u32,
    ts_ns: u64,
    data: &[u8],
    orig_len: u32,
    comment: &str,
) -> io::Result<()> {
    let mut epb = Vec::with_capacity(32 + pad4(data.len()) + pad4(comment.len()) + 8);
    epb.extend_from_slice(&iface.to_le_bytes());
    epb.extend_from_slice(&((ts_ns >> 32) as u32).to_le_bytes());
    epb.extend_from_slice(&(ts_ns as u32).to_le_bytes());
    epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
    epb.extend_from_slice(&orig_len.max(data.len() as u32).to_le_bytes());
    epb.extend_from_slice(data);
    epb.resize(epb.len() + pad4(data.len()) - data.len(), 0);
    if !comment.is_empty() {
        option(&mut epb, 1, comment.as_bytes()); // opt_comment
    }
    option(&mut epb, 0, &[]);
    block(w, 6, &epb)
}

/// Decodes the lowercase hex of a `WatchRecord`'s `data`.
pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("bad hex: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_blocks_are_aligned_and_sized() {
        let mut out = Vec::new();
        write_header(&mut out, &["worker 0".into(), "worker 1".into()], 65535).unwrap();
        write_packet(&mut out, 1, 1_700_000_000_123_456_789, &[1, 2, 3], 3, "tx").unwrap();
        // Walk the blocks: each length is a multiple of 4 and repeated at its end.
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < out.len() {
            let kind = u32::from_le_bytes(out[at..at + 4].try_into().unwrap());
            let len = u32::from_le_bytes(out[at + 4..at + 8].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            let tail = u32::from_le_bytes(out[at + len - 4..at + len].try_into().unwrap());
            assert_eq!(tail as usize, len);
            kinds.push(kind);
            at += len;
        }
        assert_eq!(kinds, vec![0x0A0D_0D0A, 1, 1, 6]);
        assert_eq!(unhex("00ff10").unwrap(), vec![0, 255, 16]);
        assert!(unhex("0").is_err());
    }
}
