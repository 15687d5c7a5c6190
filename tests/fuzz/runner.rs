//! Runs one fuzz target: a CI-sized number of cases unless PROPTEST_CASES
//! says otherwise, failures shrunk and persisted (and replayed first) in
//! tests/fuzz/regressions/TARGET.txt, and a bound on the time and memory of
//! every case.

use std::cell::Cell;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use crate::alloc;

/// CPU time one case may take on its own thread, generous for a debug
/// build; an endless loop or a quadratic blow-up exceeds it. CPU time, not
/// wall time: other processes on a loaded machine cannot make a linear
/// decode look slow.
pub const CASE_TIME: Duration = Duration::from_secs(2);

/// This thread's CPU time (user + system) from /proc/thread-self/stat, in
/// clock ticks of 10 ms (fields 14 and 15, after the command name).
fn thread_cpu() -> Duration {
    let text =
        std::fs::read_to_string("/proc/thread-self/stat").expect("read /proc/thread-self/stat");
    let rest = &text[text.rfind(')').expect("stat has a command name") + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().expect("numeric utime/stime"))
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

/// Heap one decode may take beyond its input: a small multiple of the
/// input plus a constant. A length field trusted as an allocation size
/// or a copy per byte exceeds it.
pub fn mem_bound(input_len: usize) -> usize {
    32 * input_len + (256 << 10)
}

/// The number of cases: PROPTEST_CASES when set, else `ci_cases`.
pub fn config(name: &str, ci_cases: u32) -> Config {
    let mut c = if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default()
    } else {
        Config::with_cases(ci_cases)
    };
    let path = format!(
        "{}/tests/fuzz/regressions/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    c.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(Box::leak(
        path.into_boxed_str(),
    ))));
    c
}

/// Runs `test` on values of `strategy`; panics with the shrunk input on
/// failure. Prints the number of cases run (bench/fuzz-long sums them).
pub fn fuzz<S: Strategy>(
    name: &str,
    ci_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(config(name, ci_cases));
    let cases = Cell::new(0u64);
    let start = Instant::now();
    let result = runner.run(&strategy, |v| {
        cases.set(cases.get() + 1);
        test(v)
    });
    match result {
        Ok(()) => eprintln!(
            "fuzz {name}: {} cases passed in {} ms",
            cases.get(),
            start.elapsed().as_millis()
        ),
        Err(e) => panic!("fuzz {name}: {e}"),
    }
}

/// Runs one decode, failing the case when it takes longer than
/// [`CASE_TIME`] or allocates more than [`mem_bound`] of `input_len`.
pub fn bounded<T>(what: &str, input_len: usize, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let base = alloc::live();
    alloc::reset_peak();
    let start = thread_cpu();
    let out = f();
    let took = thread_cpu().saturating_sub(start);
    let peak = alloc::peak_since_reset(base);
    if took > CASE_TIME {
        return Err(TestCaseError::fail(format!(
            "{what}: {} ms of CPU on {input_len} bytes of input (bound {} ms)",
            took.as_millis(),
            CASE_TIME.as_millis()
        )));
    }
    if peak > mem_bound(input_len) {
        return Err(TestCaseError::fail(format!(
            "{what}: {peak} bytes of heap on {input_len} bytes of input (bound {})",
            mem_bound(input_len)
        )));
    }
    Ok(out)
}
