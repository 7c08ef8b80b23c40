//! Upload and download of one file through the Azure Files endpoint against a plain copy of the
//! same file on the same disk, in one run: a real `batchai server` with its Files listener, an
//! account from `batchai admin storage-account create`, and rounds that each
//! - copy the source file with `std::fs::copy` (the baseline: what `cp` does, no fsync), and
//!   again followed by an fsync,
//! - upload it as the SDKs do: Create File, then 4 MiB Put Range requests, `--clients` at a
//!   time, SharedKey-signed, reading the source as they go (the server publishes the file after
//!   an fsync once every byte is there),
//! - download it in 4 MiB ranged GETs, `--clients` at a time, written into a local file.
//!
//! The download is checked against the source once per round.

use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::Args;
use crate::server::{ServerProc, batchai_bin};
use crate::stats::{machine_note, pct};

const MIB: u64 = 1024 * 1024;
const RANGE: u64 = 4 * MIB;
const ACCOUNT: &str = "benchacct";
const SHARE: &str = "bench";

/// A SharedKey-signing client for the path-style endpoint.
struct Files {
    http: reqwest::Client,
    base: String,
    key: Vec<u8>,
}

impl Files {
    /// Sends `method` to `/{account}/{path}?{query}` with the `x-ms-*` headers given, signed.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        ms_headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<reqwest::Response> {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let mut headers: Vec<(String, String)> = ms_headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        headers.push(("x-ms-date".into(), date));
        headers.push(("x-ms-version".into(), "2019-02-02".into()));
        headers.sort();
        let len = body.as_ref().map(Vec::len).unwrap_or(0);
        let len = if len == 0 { String::new() } else { len.to_string() };
        let mut text = format!("{method}\n\n\n{len}\n\n\n\n\n\n\n\n\n");
        for (k, v) in &headers {
            text.push_str(&format!("{k}:{v}\n"));
        }
        text.push_str(&format!("/{ACCOUNT}/{ACCOUNT}/{path}"));
        let mut sorted: Vec<_> = query.to_vec();
        sorted.sort();
        for (k, v) in &sorted {
            text.push_str(&format!("\n{k}:{v}"));
        }
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        mac.update(text.as_bytes());
        let sig = STANDARD.encode(mac.finalize().into_bytes());
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let url = format!("{}/{ACCOUNT}/{path}?{}", self.base, query.join("&"));
        let mut req = self.http.request(method, url).header("authorization", format!("SharedKey {ACCOUNT}:{sig}"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let res = req.send().await?;
        if !res.status().is_success() {
            bail!("{} {path}: {} {}", res.status(), res.status(), res.text().await.unwrap_or_default());
        }
        Ok(res)
    }
}

/// Runs `f(offset)` for every 4 MiB range of `size` bytes, `clients` at a time.
async fn ranges<F, Fut>(size: u64, clients: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let offset = next.fetch_add(RANGE, std::sync::atomic::Ordering::Relaxed);
                if offset >= size {
                    return anyhow::Ok(());
                }
                f(offset).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Reads `len` bytes at `offset` into a new buffer, without zeroing it first as `read_at`
/// into `vec![0; len]` would.
fn read_at(path: &std::path::Path, offset: u64, len: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut buf)?;
    ensure!(buf.len() as u64 == len, "the source ended at {offset} + {}", buf.len());
    Ok(buf)
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9)
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let machine = machine_note();
    let size = args.file_mib * MIB;
    let clients = args.clients.unwrap_or(2);
    let (work, _guard) = super::work_dir(args.work_dir.as_deref())?;
    let bin = batchai_bin(args.batchai_bin.as_deref())?;
    let server = ServerProc::start(&bin, &work, args.pg_admin()?, &super::server_env(args)).await?;
    let base = server.files.clone().context("the server serves no Files endpoint")?;
    let created = server.admin(&["storage-account", "create", ACCOUNT]).await?;
    let key = STANDARD.decode(created["key"].as_str().context("key in admin output")?)?;
    let files = Arc::new(Files { http: reqwest::Client::new(), base, key });
    files.send(reqwest::Method::PUT, SHARE, &[("restype", "share")], &[], None).await?;

    // Incompressible content, made quickly (xorshift), on the same disk as the server's data.
    let src_path = work.join("source.bin");
    let mut content = Vec::with_capacity(size as usize);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while (content.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        content.extend_from_slice(&x.to_le_bytes());
    }
    content.truncate(size as usize);
    std::fs::write(&src_path, &content)?;
    let src = Arc::new(src_path.clone());

    let (mut copy, mut synced, mut up, mut down) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let dst = work.join("copy.bin");
        let t = Instant::now();
        std::fs::copy(&src_path, &dst)?;
        copy.push(t.elapsed());
        std::fs::remove_file(&dst)?;
        // The upload is durable when acknowledged (the server fsyncs before publishing); the
        // copy that matches that is one followed by an fsync.
        let t = Instant::now();
        std::fs::copy(&src_path, &dst)?;
        std::fs::File::open(&dst)?.sync_all()?;
        synced.push(t.elapsed());
        std::fs::remove_file(&dst)?;

        let name = format!("{SHARE}/file-{round}.bin");
        let t = Instant::now();
        files
            .send(
                reqwest::Method::PUT,
                &name,
                &[],
                &[("x-ms-type", "file".into()), ("x-ms-content-length", size.to_string())],
                None,
            )
            .await?;
        {
            let (files, src, name) = (files.clone(), src.clone(), name.clone());
            ranges(size, clients, move |offset| {
                let (files, src, name) = (files.clone(), src.clone(), name.clone());
                async move {
                    let len = RANGE.min(size - offset);
                    let data = tokio::task::spawn_blocking(move || read_at(&src, offset, len)).await??;
                    let range = format!("bytes={offset}-{}", offset + len - 1);
                    let headers = [("x-ms-range", range), ("x-ms-write", "update".into())];
                    files.send(reqwest::Method::PUT, &name, &[("comp", "range")], &headers, Some(data)).await?;
                    Ok(())
                }
            })
            .await?;
        }
        up.push(t.elapsed());

        let out_path = work.join("download.bin");
        let out = Arc::new(std::fs::File::create(&out_path)?);
        let t = Instant::now();
        {
            let (files, out, name) = (files.clone(), out.clone(), name.clone());
            ranges(size, clients, move |offset| {
                let (files, out, name) = (files.clone(), out.clone(), name.clone());
                async move {
                    let len = RANGE.min(size - offset);
                    let range = format!("bytes={offset}-{}", offset + len - 1);
                    let mut res = files.send(reqwest::Method::GET, &name, &[], &[("x-ms-range", range)], None).await?;
                    // Written as received, without joining the chunks into one buffer first.
                    let (mut chunks, mut got) = (Vec::new(), 0);
                    while let Some(chunk) = res.chunk().await? {
                        got += chunk.len() as u64;
                        chunks.push(chunk);
                    }
                    ensure!(got == len, "range at {offset}: {got} bytes instead of {len}");
                    tokio::task::spawn_blocking(move || {
                        let mut at = offset;
                        for chunk in chunks {
                            out.write_all_at(&chunk, at)?;
                            at += chunk.len() as u64;
                        }
                        std::io::Result::Ok(())
                    })
                    .await??;
                    Ok(())
                }
            })
            .await?;
        }
        down.push(t.elapsed());
        ensure!(std::fs::read(&out_path)? == content, "round {round}: the download differs from the source");
        std::fs::remove_file(&out_path)?;
        files.send(reqwest::Method::DELETE, &name, &[], &[], None).await?;
    }
    copy.sort();
    synced.sort();
    up.sort();
    down.sort();
    let rate = |v: &[Duration]| mib_per_s(size, pct(v, 50.0));
    println!(
        "files: backend {}, {} MiB file, 4 MiB ranges, {clients} at a time, {} rounds; {}",
        args.backend(),
        args.file_mib,
        copy.len(),
        super::code_note()
    );
    println!("| transfer (median of {} rounds) | time | MiB/s | ratio to the copy |", copy.len());
    println!("|---|---|---|---|");
    let copy_rate = rate(&copy);
    for (what, v) in [
        ("plain copy (`std::fs::copy`, same disk)", &copy),
        ("copy + fsync (as durable as an upload)", &synced),
        ("upload through the Files endpoint (fsync'd before it is published)", &up),
        ("download through the Files endpoint", &down),
    ] {
        println!("| {what} | {} ms | {:.0} | {:.2} |", pct(v, 50.0).as_millis(), rate(v), rate(v) / copy_rate);
    }
    println!();
    println!("{machine}");
    Ok(())
}
