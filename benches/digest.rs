//! Digest verification speed: Ferry's streaming sha256 hasher (criterion), then one line
//! comparing it with `openssl speed -evp sha256` on 16 KiB blocks, the machine's ceiling:
//! `sha256_verify ferry=<GB/s> peer=<GB/s> ratio=<ferry/openssl> GB/s`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, Criterion, Throughput};
use ferry::oci::{DigestAlgorithm, Hasher};
use std::process::Command;
use std::time::Instant;

/// Hashes `chunk` `times` times in one stream, as an upload of that many chunks would be verified.
fn hash_repeated(chunk: &[u8], times: usize) -> ferry::oci::Digest {
    let mut h = Hasher::new(DigestAlgorithm::Sha256);
    for _ in 0..times {
        h.update(chunk);
    }
    h.finish()
}

/// openssl's sha256 throughput on 16 KiB blocks, in GB/s.
fn openssl_gbps() -> Option<f64> {
    let out =
        Command::new("openssl").args(["speed", "-evp", "sha256", "-bytes", "16384", "-seconds", "3"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line: "sha256   123456.78k" (thousands of bytes per second).
    let line = text.lines().rev().find(|l| l.trim_start().starts_with("sha256"))?;
    let k: f64 = line.split_whitespace().last()?.trim_end_matches('k').parse().ok()?;
    Some(k * 1000.0 / 1e9)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("sha256_1mib", |b| {
        b.iter(|| {
            let mut h = Hasher::new(DigestAlgorithm::Sha256);
            h.update(black_box(&chunk));
            h.finish()
        })
    });
    g.finish();
    c.final_summary();

    // A direct figure for the comparison line: best of 3 passes over 1 GiB. Like openssl's, the
    // input is hot in cache, so both measure the hash and not memory bandwidth.
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            black_box(hash_repeated(&chunk, 1024));
            (1u64 << 30) as f64 / 1e9 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max);
    match openssl_gbps() {
        Some(peer) => println!("sha256_verify ferry={best:.2} peer={peer:.2} ratio={:.2} GB/s", best / peer),
        None => println!("sha256_verify ferry={best:.2} GB/s (openssl speed unavailable)"),
    }
}
