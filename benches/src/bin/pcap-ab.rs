//! `pcap-ab`: what loading a replay capture costs with dpgw's own reader
//! (`dataplane::pcapfile::read_file`) and with the `pcap-file` crate, to
//! decide whether the crate should replace ours (issue 13).
//!
//! ```text
//! pcap-ab [--runs N] [--json] FILE...
//! ```
//!
//! Every contender produces what the pcap backend preloads, a
//! `pcapfile::Capture` (the file's bytes and an index of its records):
//!
//! * `ours`: `pcapfile::read_file` (since issue 13, itself built on
//!   pcap-file 3.0.0-rc.3's slice parsers; the hand-written reader it
//!   replaced was measured against the crates in the commit that added this
//!   harness);
//! * `pcap-file 2` / `pcap-file 3-rc.3`: `std::fs::read`, then the crate's
//!   zero-copy `PcapParser` / `PcapNgParser` over the bytes, records indexed
//!   where the parser found them (what `pcapfile.rs` would become);
//! * `pcap-file 2 reader`: the crate's streaming `PcapReader` /
//!   `PcapNgReader` over a `BufReader<File>`, each packet copied into the
//!   capture (the obvious port, for comparison).
//!
//! Then the parsers alone: the index built over bytes already in memory
//! (`pcapfile::parse` against the crates' slice parsers), since reading the
//! file dominates a load.
//!
//! Runs alternate between the contenders (ours, then each crate variant,
//! then ours again ...) so that a busy neighbour slows all of them alike;
//! the median and the fastest of `--runs` loads are printed, with the ratio
//! of medians to ours. Each variant's records (offset, length, timestamp)
//! are also compared with ours, since a faster reader that reads something
//! else is no alternative. Build with `--release`.

use std::hint::black_box;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use dataplane::pcapfile::{self, Capture, Record};

#[derive(Parser)]
#[command(about = "Load time of captures: dpgw's pcap reader against the pcap-file crate")]
struct Cli {
    /// Loads per contender (median and fastest are reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Captures to load (pcap or pcapng, Ethernet).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// The index of `data` built by one of the `pcap-file` crates' slice
/// parsers: `$m` is the crate (`pcap_file` or `pcap_file3`), `$pkt` gives a
/// pcap packet's (data address, length, timestamp in ns) (fields in 2.x,
/// methods in 3.x). Timestamps come from the crate, so a crate that misreads
/// them shows up in the comparison.
macro_rules! index_with {
    ($m:ident, $data:expr, $pkt:expr) => {{
        use $m::pcap::PcapParser;
        use $m::pcapng::{Block, PcapNgParser};
        use $m::DataLink;
        let data: &[u8] = $data;
        let base = data.as_ptr() as usize;
        let mut records = Vec::new();
        let mut push = |d: &[u8], ts_ns: u64| {
            records.push(Record {
                offset: d.as_ptr() as usize - base,
                len: d.len(),
                ts_ns,
            })
        };
        if data.starts_with(&PCAPNG_MAGIC) {
            let (mut rem, mut p) = PcapNgParser::new(data).map_err(|e| e.to_string())?;
            while !rem.is_empty() {
                let (r, block) = p
                    .next_block(rem)
                    .map_err(|e| format!("byte offset {}: {e}", data.len() - rem.len()))?;
                match &block {
                    Block::EnhancedPacket(b) => {
                        let ok = p
                            .interfaces()
                            .get(b.interface_id as usize)
                            .is_some_and(|i| i.linktype == DataLink::ETHERNET);
                        if !ok {
                            return Err("not Ethernet".to_string());
                        }
                        push(&b.data, b.timestamp.as_nanos() as u64);
                    }
                    Block::SimplePacket(b) => push(&b.data, 0),
                    _ => {}
                }
                rem = r;
            }
        } else {
            let (mut rem, p) = PcapParser::new(data).map_err(|e| e.to_string())?;
            if p.header().datalink != DataLink::ETHERNET {
                return Err("not Ethernet".to_string());
            }
            while !rem.is_empty() {
                let (r, pkt) = p
                    .next_packet(rem)
                    .map_err(|e| format!("byte offset {}: {e}", data.len() - rem.len()))?;
                let (at, len, ts_ns) = $pkt(&pkt);
                records.push(Record {
                    offset: at - base,
                    len,
                    ts_ns,
                });
                rem = r;
            }
        }
        Ok::<Vec<Record>, String>(records)
    }};
}

fn ours(path: &Path) -> Result<Capture, String> {
    pcapfile::read_file(path).map_err(|e| e.to_string())
}

fn index2(data: &[u8]) -> Result<Vec<Record>, String> {
    index_with!(pcap_file, data, |p: &pcap_file::pcap::PcapPacket| {
        (
            p.data.as_ptr() as usize,
            p.data.len(),
            p.timestamp.as_nanos() as u64,
        )
    })
}

fn index3(data: &[u8]) -> Result<Vec<Record>, String> {
    index_with!(pcap_file3, data, |p: &pcap_file3::pcap::PcapPacket| {
        (
            p.data().as_ptr() as usize,
            p.data().len(),
            p.timestamp().as_nanos() as u64,
        )
    })
}

fn pcap_file2(path: &Path) -> Result<Capture, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let records = index2(&data)?;
    Ok(Capture { data, records })
}

fn pcap_file3(path: &Path) -> Result<Capture, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let records = index3(&data)?;
    Ok(Capture { data, records })
}

/// The streaming readers of pcap-file 2, copying every packet.
fn pcap_file2_reader(path: &Path) -> Result<Capture, String> {
    use pcap_file::pcap::PcapReader;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let mut head = [0u8; 4];
    {
        use std::io::Read;
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .map_err(|e| e.to_string())?;
    }
    let file = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path).map_err(|e| e.to_string())?,
    );
    let mut cap = Capture::default();
    let mut push = |d: &[u8], ts_ns: u64| {
        cap.records.push(Record {
            offset: cap.data.len(),
            len: d.len(),
            ts_ns,
        });
        cap.data.extend_from_slice(d);
    };
    if head == PCAPNG_MAGIC {
        let mut r = PcapNgReader::new(file).map_err(|e| e.to_string())?;
        while let Some(b) = r.next_block() {
            match b.map_err(|e| e.to_string())? {
                Block::EnhancedPacket(b) => push(&b.data, b.timestamp.as_nanos() as u64),
                Block::SimplePacket(b) => push(&b.data, 0),
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(file).map_err(|e| e.to_string())?;
        while let Some(p) = r.next_packet() {
            let p = p.map_err(|e| e.to_string())?;
            push(&p.data, p.timestamp.as_nanos() as u64);
        }
    }
    Ok(cap)
}

type Loader = fn(&Path) -> Result<Capture, String>;

const CONTENDERS: [(&str, Loader); 4] = [
    ("ours", ours),
    ("pcap-file 2", pcap_file2),
    ("pcap-file 3-rc.3", pcap_file3),
    ("pcap-file 2 reader", pcap_file2_reader),
];

/// Whether `got` holds the same packets as `want`: "agrees", or where and how not.
fn agreement(want: &Capture, got: &Capture) -> String {
    if want.records.len() != got.records.len() {
        return format!("{} records, ours {}", got.records.len(), want.records.len());
    }
    for (i, (a, b)) in want.records.iter().zip(&got.records).enumerate() {
        if want.packet(a) != got.packet(b) {
            return format!("record {i}: other bytes");
        }
        if a.ts_ns != b.ts_ns {
            return format!("record {i}: timestamp {} ns, ours {} ns", b.ts_ns, a.ts_ns);
        }
    }
    "agrees".to_string()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let cli = Cli::parse();
    let runs = cli.runs.max(1);
    let mut out = Vec::new();
    for path in &cli.files {
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let reference = ours(path);
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); CONTENDERS.len()];
        let mut errors: Vec<Option<String>> = vec![None; CONTENDERS.len()];
        let mut agree: Vec<String> = vec![String::new(); CONTENDERS.len()];
        for (i, (_, load)) in CONTENDERS.iter().enumerate() {
            match (load(path), &reference) {
                (Ok(c), Ok(r)) => agree[i] = agreement(r, &c),
                (Err(e), _) => errors[i] = Some(e),
                (Ok(_), Err(e)) => agree[i] = format!("ours fails: {e}"),
            }
        }
        for _ in 0..runs {
            for (i, (_, load)) in CONTENDERS.iter().enumerate() {
                if errors[i].is_some() {
                    continue;
                }
                let t = Instant::now();
                let c = black_box(load(path));
                let dt = t.elapsed().as_secs_f64() * 1e3;
                drop(c);
                times[i].push(dt);
            }
        }
        // The parsers alone, on bytes already in memory (the file read, which
        // dominates a load, left out).
        let bytes_in = std::fs::read(path).unwrap_or_default();
        let mut parse_times: [Vec<f64>; 3] = Default::default();
        if reference.is_ok() {
            for _ in 0..runs {
                let d = bytes_in.clone();
                let t = Instant::now();
                let c = black_box(pcapfile::parse(d, path));
                parse_times[0].push(t.elapsed().as_secs_f64() * 1e3);
                drop(c);
                for (k, index) in [(1, index2 as fn(&[u8]) -> _), (2, index3)] {
                    let t = Instant::now();
                    let r = black_box(index(&bytes_in));
                    parse_times[k].push(t.elapsed().as_secs_f64() * 1e3);
                    drop(r);
                }
            }
        }
        let ours_median = if times[0].is_empty() {
            f64::NAN
        } else {
            median(&mut times[0].clone())
        };
        let packets = reference.as_ref().map(|c| c.records.len()).unwrap_or(0);
        let mut rows = Vec::new();
        for (i, (name, _)) in CONTENDERS.iter().enumerate() {
            let row = if let Some(e) = &errors[i] {
                serde_json::json!({ "reader": name, "error": e })
            } else {
                let mut t = times[i].clone();
                let med = median(&mut t);
                serde_json::json!({
                    "reader": name,
                    "median_ms": med,
                    "min_ms": t[0],
                    "vs_ours": med / ours_median,
                    "records": agree[i],
                })
            };
            rows.push(row);
        }
        let mut parse_rows = Vec::new();
        if !parse_times[0].is_empty() {
            let ours_parse = median(&mut parse_times[0].clone());
            for (k, name) in ["ours", "pcap-file 2", "pcap-file 3-rc.3"]
                .iter()
                .enumerate()
            {
                let mut t = parse_times[k].clone();
                let med = median(&mut t);
                parse_rows.push(serde_json::json!({
                    "reader": name,
                    "median_ms": med,
                    "min_ms": t[0],
                    "vs_ours": med / ours_parse,
                }));
            }
        }
        out.push(serde_json::json!({
            "file": path.display().to_string(),
            "parse_only": parse_rows,
            "bytes": bytes,
            "packets": packets,
            "runs": runs,
            "readers": rows,
        }));
    }
    if cli.json {
        println!("{}", serde_json::Value::Array(out));
        return;
    }
    for f in &out {
        println!(
            "{} ({} bytes, {} packets, median of {} alternating loads)",
            f["file"].as_str().unwrap_or(""),
            f["bytes"],
            f["packets"],
            f["runs"]
        );
        println!(
            "  {:<20} {:>10} {:>10} {:>8}  records",
            "reader", "median ms", "min ms", "vs ours"
        );
        for r in f["readers"].as_array().into_iter().flatten() {
            let name = r["reader"].as_str().unwrap_or("");
            if let Some(e) = r["error"].as_str() {
                println!("  {name:<20} error: {e}");
                continue;
            }
            println!(
                "  {:<20} {:>10.2} {:>10.2} {:>7.2}x  {}",
                name,
                r["median_ms"].as_f64().unwrap_or(f64::NAN),
                r["min_ms"].as_f64().unwrap_or(f64::NAN),
                r["vs_ours"].as_f64().unwrap_or(f64::NAN),
                r["records"].as_str().unwrap_or("")
            );
        }
        for r in f["parse_only"].as_array().into_iter().flatten() {
            println!(
                "  {:<20} {:>10.2} {:>10.2} {:>7.2}x  (index only, bytes in memory)",
                r["reader"].as_str().unwrap_or(""),
                r["median_ms"].as_f64().unwrap_or(f64::NAN),
                r["min_ms"].as_f64().unwrap_or(f64::NAN),
                r["vs_ours"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
}
