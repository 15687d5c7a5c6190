use super::*;

/// The workers below are this test program, re-executed to run one of
/// the ignored `worker_*` functions.
const TEST: Worker = Worker {
    env: "VMLEASE_TEST_WORKER",
    kill: true,
};

fn args(worker: &str) -> Vec<String> {
    [
        "--ignored",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        &format!("detach::tests::{worker}"),
    ]
    .map(String::from)
    .to_vec()
}

fn marked(body: &[u8], code: &str) -> Vec<u8> {
    let mut v = body.to_vec();
    v.extend_from_slice(MARK);
    v.extend_from_slice(code.as_bytes());
    v
}

#[test]
fn the_code_is_cut_off_stdout() {
    let mut p = Pipe::new(true);
    p.push(&marked(b"ID  NAME\n1   a\n", "3\n"));
    assert!(p.done());
    assert_eq!(p.answer(), (b"ID  NAME\n1   a\n".to_vec(), Some(3)));
    let mut p = Pipe::new(true);
    p.push(b"no mark");
    assert!(!p.done());
    assert_eq!(p.answer(), (b"no mark".to_vec(), None));
}

#[test]
fn a_mark_split_across_reads_is_found_and_waits_for_its_code() {
    let all = marked(b"answer", "0\nafter");
    for cut in 1..all.len() - 1 {
        let mut p = Pipe::new(true);
        p.push(&all[..cut]);
        assert!(
            !p.done() || cut > b"answer".len() + MARK.len() + 1,
            "cut at {cut}"
        );
        p.push(&all[cut..]);
        assert!(p.done(), "cut at {cut}");
        assert_eq!(p.answer(), (b"answer".to_vec(), Some(0)), "cut at {cut}");
    }
    // On stderr the mark alone ends the answer.
    let mut p = Pipe::new(false);
    p.push(&marked(b"vmlease: oops\n", "\n"));
    assert!(p.done());
    assert_eq!(p.answer().0, b"vmlease: oops\n");
}

#[test]
fn the_answer_is_relayed_though_the_worker_stays() {
    let t = Instant::now();
    match TEST.run(&args("worker_answers_then_hangs"), Some(b"xml"), 20_000) {
        Outcome::Answered {
            code,
            stdout,
            stderr,
        } => {
            assert_eq!(code, Some(4));
            assert!(String::from_utf8_lossy(&stdout).contains("out: xml\n"));
            assert!(String::from_utf8_lossy(&stderr).ends_with("err: said\n"));
        }
        other => panic!("expected an answer, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_worker_without_answer_is_given_up_at_the_deadline() {
    let t = Instant::now();
    let pid = match TEST.run(&args("worker_hangs"), None, 1_500) {
        Outcome::NoAnswer {
            pid,
            after_ms,
            stderr,
        } => {
            assert!((1_500..10_000).contains(&after_ms), "after {after_ms} ms");
            assert!(String::from_utf8_lossy(&stderr).contains("err: hanging"));
            pid
        }
        other => panic!("expected no answer, got {other:?}"),
    };
    assert!(t.elapsed() >= Duration::from_millis(1_500));
    // Killed (kill: true): a zombie or gone, never waited for by us.
    let stat = format!("/proc/{pid}/stat");
    let mut seen = String::new();
    for _ in 0..500 {
        seen = std::fs::read_to_string(&stat).unwrap_or_default();
        if seen.is_empty() || seen.contains(") Z ") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("worker {pid} still alive 5 s after the deadline: {seen}");
}

#[test]
fn a_worker_that_exits_without_answer_gives_its_status() {
    match TEST.run(&args("worker_exits_7"), None, 20_000) {
        Outcome::Exited { status, stderr, .. } => {
            assert_eq!(status.code(), Some(7));
            assert!(String::from_utf8_lossy(&stderr).contains("err: leaving"));
        }
        other => panic!("expected an exit, got {other:?}"),
    }
}

#[test]
#[ignore = "a worker of the tests above"]
fn worker_answers_then_hangs() {
    assert!(TEST.is_this_process());
    let mut xml = String::new();
    std::io::stdin().read_to_string(&mut xml).unwrap();
    println!("out: {xml}");
    eprintln!("err: said");
    TEST.finish(4);
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
#[ignore = "a worker of the tests above"]
fn worker_hangs() {
    assert!(TEST.is_this_process());
    eprintln!("err: hanging");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
#[ignore = "a worker of the tests above"]
fn worker_exits_7() {
    assert!(TEST.is_this_process());
    eprintln!("err: leaving");
    std::process::exit(7);
}
