//! The split-brain checker: reads a disk file written by stand-in VMs
//! (tests/support/sb_writer.c, 64-byte records appended with O_APPEND +
//! fsync) and finds every write made by one VM instance after another
//! instance of the same VM had started writing.
//!
//! The file's order is the order in which CephFS applied the appends, so
//! no clock is compared: instances are ordered by their first record, and
//! a record is a violation when an instance that first wrote later has
//! already written (two live writers). A line that does not parse (torn or
//! interleaved appends) is reported too.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub host: u32,
    pub vm: u32,
    pub inc: u32,
    pub seq: u64,
    /// CLOCK_BOOTTIME of the writer, in ms (one machine: comparable).
    pub t_ms: u64,
    /// When its instance began trying to write (CLOCK_BOOTTIME, ms): a
    /// live writer from then on, even while the file system holds its
    /// open or appends back.
    pub go_ms: u64,
    /// Its place in the file (record number, 64 bytes each).
    pub pos: usize,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host {} vm {} incarnation {} seq {} t={} ms (writing since {} ms)",
            self.host, self.vm, self.inc, self.seq, self.t_ms, self.go_ms
        )
    }
}

#[derive(Debug)]
pub enum Violation {
    /// `late` (record number `at` in the file) was written by an instance
    /// after `newer` (the first record of a later instance) was written.
    LateWrite {
        at: usize,
        late: Record,
        newer: Record,
    },
    /// Record number `at` does not parse.
    Damaged { at: usize, text: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::LateWrite { at, late, newer } => write!(
                f,
                "record #{at} [{late}] written after [{newer}] (another instance's first write): two live writers"
            ),
            Violation::Damaged { at, text } => {
                write!(f, "record #{at} is damaged: {text:?}")
            }
        }
    }
}

pub fn parse(line: &str) -> Option<Record> {
    let mut r = Record {
        host: 0,
        vm: 0,
        inc: 0,
        seq: 0,
        t_ms: 0,
        go_ms: 0,
        pos: 0,
    };
    let mut seen = 0;
    for w in line.split_whitespace() {
        let (k, v) = w.split_once('=')?;
        match k {
            "h" => r.host = v.parse().ok()?,
            "vm" => r.vm = v.parse().ok()?,
            "inc" => r.inc = v.parse().ok()?,
            "seq" => r.seq = v.parse().ok()?,
            "t" => r.t_ms = v.parse().ok()?,
            "go" => r.go_ms = v.parse().ok()?,
            _ => return None,
        }
        seen += 1;
    }
    (seen == 6).then_some(r)
}

/// The records of a disk file, the lines that do not parse, and the
/// number of all-zero records ("holes").
///
/// A hole is an append whose new file size reached the MDS while its data
/// never reached the OSDs: seen once, as the last write of a host whose
/// storage link was cut and which was then reset (its FUSE connection
/// aborted). It carries no data, so it cannot be a second live writer's
/// write; it is counted and shown, not reported as a violation.
pub fn records(data: &[u8]) -> (Vec<Record>, Vec<Violation>, usize) {
    let mut recs = Vec::new();
    let mut bad = Vec::new();
    let mut holes = 0;
    for (i, chunk) in data.chunks(64).enumerate() {
        if chunk.len() == 64 && chunk.iter().all(|&b| b == 0) {
            holes += 1;
            continue;
        }
        let text = String::from_utf8_lossy(chunk);
        match (chunk.len() == 64 && chunk[63] == b'\n')
            .then(|| parse(&text))
            .flatten()
        {
            Some(r) => recs.push(Record { pos: i, ..r }),
            None => bad.push(Violation::Damaged {
                at: i,
                text: text.into_owned(),
            }),
        }
    }
    (recs, bad, holes)
}

/// Every write by an instance after a later instance's first write, by
/// two rules; a record breaking both is reported once:
///
/// - file order: a record placed after the first record of an instance
///   that started writing later;
/// - the writers' clock (one machine, one CLOCK_BOOTTIME): a record its
///   writer issued after another instance, which started later, had
///   begun trying to write (`go`). This catches a second writer whose
///   open or appends CephFS holds back while the first one keeps writing
///   (seen: the waiting client's records land only once the other writer
///   is gone). No false alarm is possible: a record exists only if its
///   writer was alive at its timestamp, and an instance is alive from its
///   `go` to its last record.
pub fn check(data: &[u8]) -> (usize, Vec<Violation>) {
    let (recs, mut out, _) = records(data);
    // (host, inc) identifies an instance: index of its first record.
    let mut first: Vec<((u32, u32), usize)> = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        if !first.iter().any(|(k, _)| *k == (r.host, r.inc)) {
            first.push(((r.host, r.inc), i));
        }
    }
    let first_of = |r: &Record| {
        first
            .iter()
            .find(|(k, _)| *k == (r.host, r.inc))
            .map(|x| x.1)
            .expect("every record's instance is known")
    };
    let mut latest: Option<usize> = None;
    for (i, r) in recs.iter().enumerate() {
        let f = first_of(r);
        if f == i {
            latest = Some(i);
        }
        let l = latest.expect("an instance was seen");
        let mine = recs[f].go_ms;
        let by_order = (f != l).then_some(l);
        // The newest instance that issued its first write before r, and
        // started after r's instance.
        let by_clock = first
            .iter()
            .map(|&(_, j)| j)
            .filter(|&j| j != f && recs[j].go_ms > mine && recs[j].go_ms < r.t_ms)
            .max_by_key(|&j| recs[j].go_ms);
        if let Some(n) = by_order.or(by_clock) {
            out.push(Violation::LateWrite {
                at: r.pos,
                late: r.clone(),
                newer: recs[n].clone(),
            });
        }
    }
    (recs.len(), out)
}

/// Per instance, in order of first write: host, incarnation, number of
/// records, first and last record number in the file.
pub fn summary(data: &[u8]) -> String {
    let (recs, _, holes) = records(data);
    let zero: Vec<String> = data
        .chunks(64)
        .enumerate()
        .filter(|(_, c)| c.len() == 64 && c.iter().all(|&b| b == 0))
        .map(|(i, _)| format!("#{i}"))
        .collect();
    let mut v: Vec<((u32, u32), usize, usize, usize)> = Vec::new();
    for r in &recs {
        match v.iter_mut().find(|x| x.0 == (r.host, r.inc)) {
            Some(x) => {
                x.1 += 1;
                x.3 = r.pos;
            }
            None => v.push(((r.host, r.inc), 1, r.pos, r.pos)),
        }
    }
    let mut out: Vec<String> = v
        .iter()
        .map(|((h, inc), n, a, b)| format!("host {h} inc {inc}: {n} records #{a}..#{b}"))
        .collect();
    if holes > 0 {
        out.push(format!(
            "{holes} all-zero record(s) (lost appends) at {}",
            zero.join(", ")
        ));
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instance `inc` began writing at `inc * 10` ms in these tests.
    fn rec(h: u32, inc: u32, seq: u64, t: u64) -> Vec<u8> {
        rec_go(h, inc, seq, t, inc as u64 * 10)
    }

    fn rec_go(h: u32, inc: u32, seq: u64, t: u64, go: u64) -> Vec<u8> {
        let mut v = format!("h={h} vm=0 inc={inc} seq={seq} t={t} go={go}").into_bytes();
        v.resize(63, b' ');
        v.push(b'\n');
        v
    }
    #[test]
    fn handover_is_clean_and_late_writes_are_caught() {
        let ok = [
            rec(1, 1, 0, 10),
            rec(1, 1, 1, 20),
            rec(2, 2, 0, 30),
            rec(2, 2, 1, 40),
        ]
        .concat();
        let (n, v) = check(&ok);
        assert_eq!((n, v.len()), (4, 0), "{v:?}");
        // Interleaved in the file.
        let bad = [
            rec(1, 1, 0, 10),
            rec(2, 2, 0, 20),
            rec(1, 1, 1, 30),
            rec(2, 2, 1, 40),
        ]
        .concat();
        let (_, v) = check(&bad);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].to_string().contains("host 1 vm 0 incarnation 1 seq 1"));
        // Held back by the file system: the second writer's first record
        // lands last, but the first one wrote after it was issued.
        let held = [rec(1, 1, 0, 10), rec(1, 1, 1, 30), rec(2, 2, 0, 20)].concat();
        let (_, v) = check(&held);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].to_string().contains("seq 1 t=30"), "{}", v[0]);
        // Held back before its first record was even issued (CephFS kept
        // the second writer's open waiting): it began at 25, the first
        // one wrote at 30.
        let open_held = [rec(1, 1, 0, 10), rec(1, 1, 1, 30), rec_go(2, 2, 0, 50, 25)].concat();
        let (_, v) = check(&open_held);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].to_string().contains("seq 1 t=30"), "{}", v[0]);
        // A handover where the new instance began after the old one's
        // last write is clean.
        let clean = [rec(1, 1, 0, 10), rec(1, 1, 1, 30), rec_go(2, 2, 0, 50, 31)].concat();
        assert_eq!(check(&clean).1.len(), 0);
        let hole = [rec(1, 1, 0, 10), vec![0; 64], rec(2, 2, 0, 20)].concat();
        assert_eq!(check(&hole).1.len(), 0);
        assert_eq!(records(&hole).2, 1);
        let mut torn = rec(1, 1, 0, 10);
        torn.extend_from_slice(b"h=2 vm=0");
        assert_eq!(check(&torn).1.len(), 1);
    }
}
