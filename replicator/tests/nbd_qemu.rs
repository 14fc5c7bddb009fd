//! NBD server against real clients (qemu-io, qemu-img) and a hand-written raw protocol client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use tandem_replicator::nbd::proto::{self, Errno, InfoRequest, RequestHeader};
use tandem_replicator::nbd::{serve_with, ExportMap, ServerOptions};
use tandem_replicator::volume::{FileVolume, VolumeBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const SIZE: u64 = 64 * 1024 * 1024;
const LIMIT: Duration = Duration::from_secs(120);

/// A running server over one 64 MiB image exported as `disk0`.
struct Server {
    addr: SocketAddr,
    path: PathBuf,
    volume: Arc<FileVolume>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        Self::start_opts(ServerOptions::default()).await
    }

    /// A writable server with these limits.
    async fn start_opts(options: ServerOptions) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk0.img");
        let volume = Arc::new(FileVolume::create(&path, SIZE).unwrap());
        Self::start_with(dir, path, volume, options).await
    }

    async fn start_read_only() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk0.img");
        let mut content = vec![0u8; SIZE as usize];
        content[..65536].fill(0x5a);
        std::fs::write(&path, &content).unwrap();
        let volume = Arc::new(FileVolume::open(&path, true).unwrap());
        Self::start_with(dir, path, volume, ServerOptions::default()).await
    }

    async fn start_with(
        dir: tempfile::TempDir,
        path: PathBuf,
        volume: Arc<FileVolume>,
        options: ServerOptions,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let exports = ExportMap::new();
        exports
            .insert("disk0", Arc::clone(&volume) as Arc<dyn VolumeBackend>)
            .unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(serve_with(listener, Arc::new(exports), options, rx));
        Server {
            addr,
            path,
            volume,
            stop,
            task,
            dir,
        }
    }

    fn url(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    /// Stops the server and waits for it; returns the image's folder so it outlives the stop.
    async fn stop(self) -> tempfile::TempDir {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server did not stop within 10 s")
            .unwrap();
        self.dir
    }
}

/// True when qemu-io is installed; otherwise prints why the calling test is skipped.
fn have_qemu(test: &str) -> bool {
    let found = std::process::Command::new("which")
        .arg("qemu-io")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        println!("SKIPPED {test}: qemu-io is not installed (which qemu-io failed)");
    }
    found
}

async fn run(program: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    tokio::time::timeout(LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in {LIMIT:?}"))
        .unwrap()
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs qemu-io with `-c` commands against `url` (writeback cache; `extra` goes first).
async fn qemu_io(url: &str, extra: &[&str], commands: &[String]) -> Output {
    let mut args: Vec<&str> = vec!["-f", "raw", "-t", "writeback"];
    args.extend_from_slice(extra);
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.push(url);
    run("qemu-io", &args).await
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("failed") && !stdout.contains("error"),
        "{what} reported a failure: {}",
        describe(out)
    );
}

/// Deterministic pseudo-random numbers (xorshift) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test]
async fn qemu_io_write_read_flush_lands_in_the_backing_file() {
    if !have_qemu("qemu_io_write_read_flush_lands_in_the_backing_file") {
        return;
    }
    let server = Server::start().await;
    let cmds = [
        "write -P 0xab 0 64k".to_string(),
        "read -P 0xab 0 64k".to_string(),
        "flush".to_string(),
    ];
    let out = qemu_io(&server.url("disk0"), &[], &cmds).await;
    assert_ok(&out, "qemu-io write/read/flush");
    let file = server.file();
    assert_eq!(file.len() as u64, SIZE);
    assert!(file[..65536].iter().all(|&b| b == 0xab));
    assert!(file[65536..131072].iter().all(|&b| b == 0));
    server.stop().await;
}

#[tokio::test]
async fn qemu_io_random_offset_patterns_read_back_and_land_on_disk() {
    if !have_qemu("qemu_io_random_offset_patterns_read_back_and_land_on_disk") {
        return;
    }
    let server = Server::start().await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Non-overlapping writes at unaligned offsets: one per 1 MiB slot.
    let mut writes = Vec::new();
    for slot in 0..40u64 {
        let offset = slot * (1 << 20) + rng.next() % (512 * 1024);
        let len = 1 + rng.next() % (256 * 1024);
        let pattern = (1 + slot * 7 % 250) as u8;
        writes.push((offset, len, pattern));
    }
    let w: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("write -P {p} {o} {l}"))
        .collect();
    assert_ok(
        &qemu_io(&server.url("disk0"), &[], &w).await,
        "random writes",
    );
    let r: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("read -P {p} {o} {l}"))
        .collect();
    assert_ok(
        &qemu_io(&server.url("disk0"), &["-r"], &r).await,
        "random reads",
    );
    // A wrong pattern must fail: proves the read check is real.
    let (o, l, p) = writes[3];
    let bad = [format!("read -P {} {o} {l}", p.wrapping_add(1))];
    let out = qemu_io(&server.url("disk0"), &["-r"], &bad).await;
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("failed"),
        "a wrong pattern verified: {}",
        describe(&out)
    );
    let file = server.file();
    for (i, (o, l, p)) in writes.iter().enumerate() {
        let range = &file[*o as usize..(*o + *l) as usize];
        assert!(
            range.iter().all(|b| b == p),
            "#{i}: write {o}+{l} of {p} not on disk"
        );
        assert_eq!(
            file[(*o + *l) as usize],
            0,
            "#{i}: byte after write {o}+{l} touched"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn qemu_io_write_zeroes_and_discard_zero_the_range() {
    if !have_qemu("qemu_io_write_zeroes_and_discard_zero_the_range") {
        return;
    }
    let server = Server::start().await;
    let cmds = [
        "write -P 0xcd 0 1M".to_string(),
        "write -z 0 64k".to_string(),
        "discard 64k 64k".to_string(),
        "write -z -f 200k 3000".to_string(),
        "read -P 0 0 128k".to_string(),
        "read -P 0xcd 128k 64k".to_string(),
        "flush".to_string(),
    ];
    assert_ok(
        &qemu_io(&server.url("disk0"), &[], &cmds).await,
        "write -z / discard",
    );
    let file = server.file();
    assert!(file[..131072].iter().all(|&b| b == 0));
    assert!(file[131072..204800].iter().all(|&b| b == 0xcd));
    assert!(file[204800..207800].iter().all(|&b| b == 0));
    assert!(file[207800..1 << 20].iter().all(|&b| b == 0xcd));
    server.stop().await;
}

fn write_source_image(path: &Path) -> Vec<u8> {
    let mut rng = Rng(42);
    let mut src = vec![0u8; SIZE as usize];
    // Random data in most 1 MiB chunks, zeroes in every fourth (exercises zero writes).
    for (i, chunk) in src.chunks_mut(1 << 20).enumerate() {
        if i % 4 != 3 {
            for word in chunk.chunks_mut(8) {
                let v = rng.next().to_le_bytes();
                word.copy_from_slice(&v[..word.len()]);
            }
        }
    }
    std::fs::write(path, &src).unwrap();
    src
}

#[tokio::test]
async fn qemu_img_convert_writes_a_whole_image_byte_for_byte() {
    if !have_qemu("qemu_img_convert_writes_a_whole_image_byte_for_byte") {
        return;
    }
    let server = Server::start().await;
    // Junk in the target where the source is zero: convert must overwrite it.
    server
        .volume
        .write(3 << 20, vec![0xff; 1 << 20], false)
        .await
        .unwrap();
    let src_dir = tempfile::tempdir().unwrap();
    let src_path = src_dir.path().join("src.img");
    let src = write_source_image(&src_path);
    let out = run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src_path.to_str().unwrap(),
            &server.url("disk0"),
        ],
    )
    .await;
    assert!(out.status.success(), "qemu-img convert: {}", describe(&out));
    let file = server.file();
    assert_eq!(file.len(), src.len());
    let first_diff = file.iter().zip(&src).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "backing file differs from the source");
    server.stop().await;
}

#[tokio::test]
async fn qemu_img_info_reports_the_export_size() {
    if !have_qemu("qemu_img_info_reports_the_export_size") {
        return;
    }
    let server = Server::start().await;
    let out = run("qemu-img", &["info", "--output=json", &server.url("disk0")]).await;
    assert!(out.status.success(), "qemu-img info: {}", describe(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["virtual-size"].as_u64(), Some(SIZE), "{info}");
    server.stop().await;
}

#[tokio::test]
async fn read_only_export_refuses_qemu_writes_but_serves_reads() {
    if !have_qemu("read_only_export_refuses_qemu_writes_but_serves_reads") {
        return;
    }
    let server = Server::start_read_only().await;
    let before = server.file();
    let out = qemu_io(&server.url("disk0"), &[], &["write -P 1 0 4k".to_string()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || stdout.contains("failed"),
        "write to a read-only export succeeded: {}",
        describe(&out)
    );
    // qemu refuses a read-write open of an export advertised READ_ONLY.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "unexpected failure: {}",
        describe(&out)
    );
    let out = qemu_io(
        &server.url("disk0"),
        &["-r"],
        &["read -P 0x5a 0 64k".to_string()],
    )
    .await;
    assert_ok(&out, "read on a read-only export");
    assert_eq!(server.file(), before, "read-only image changed");
    server.stop().await;
}

#[tokio::test]
async fn fenced_export_refuses_qemu_writes_but_serves_reads() {
    if !have_qemu("fenced_export_refuses_qemu_writes_but_serves_reads") {
        return;
    }
    let server = Server::start().await;
    let ok = qemu_io(
        &server.url("disk0"),
        &[],
        &["write -P 0x11 0 4k".to_string()],
    )
    .await;
    assert_ok(&ok, "write before fencing");
    server.volume.set_fenced(true);
    let out = qemu_io(
        &server.url("disk0"),
        &[],
        &["write -P 0x22 0 4k".to_string()],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || stdout.contains("failed"),
        "write to a fenced export succeeded: {}",
        describe(&out)
    );
    // qemu refuses a read-write open of an export advertised READ_ONLY.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "unexpected failure: {}",
        describe(&out)
    );
    let out = qemu_io(
        &server.url("disk0"),
        &["-r"],
        &["read -P 0x11 0 4k".to_string()],
    )
    .await;
    assert_ok(&out, "read on a fenced export");
    assert!(server.file()[..4096].iter().all(|&b| b == 0x11));
    server.stop().await;
}

#[tokio::test]
async fn unknown_export_fails_cleanly_and_the_server_keeps_serving() {
    if !have_qemu("unknown_export_fails_cleanly_and_the_server_keeps_serving") {
        return;
    }
    let server = Server::start().await;
    let out = qemu_io(&server.url("nope"), &["-r"], &["read 0 4k".to_string()]).await;
    assert!(
        !out.status.success(),
        "unknown export opened: {}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no export named \"nope\""),
        "the client did not get NBD_REP_ERR_UNKNOWN with its message: {}",
        describe(&out)
    );
    let out = qemu_io(
        &server.url("disk0"),
        &["-r"],
        &["read -P 0 0 4k".to_string()],
    )
    .await;
    assert_ok(&out, "read after a failed open");
    server.stop().await;
}

// ------------------------------------------------------------------------------------------
// Raw protocol client: checks what qemu does not exercise (errors, unsupported options).
// ------------------------------------------------------------------------------------------

struct Raw {
    stream: TcpStream,
    handle: u64,
}

impl Raw {
    /// Connects and completes the greeting with FIXED_NEWSTYLE | NO_ZEROES.
    async fn connect(addr: SocketAddr) -> Raw {
        Self::greet(TcpStream::connect(addr).await.unwrap()).await
    }

    /// As [`Raw::connect`], from the loopback address `from` (127.x.y.z): another peer.
    async fn connect_from(addr: SocketAddr, from: [u8; 4]) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        Self::greet(socket.connect(addr).await.unwrap()).await
    }

    async fn greet(mut stream: TcpStream) -> Raw {
        let mut greeting = [0u8; proto::GREETING_LEN];
        stream.read_exact(&mut greeting).await.unwrap();
        let flags = proto::parse_greeting(&greeting).unwrap();
        assert_eq!(flags, proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES);
        stream.write_all(&3u32.to_be_bytes()).await.unwrap();
        Raw { stream, handle: 0 }
    }

    /// Sends an option; returns every reply up to and including the final one.
    async fn option(&mut self, option: u32, payload: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        proto::encode_option(option, payload, &mut out);
        self.stream.write_all(&out).await.unwrap();
        let mut replies = Vec::new();
        loop {
            let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
            self.stream.read_exact(&mut h).await.unwrap();
            let reply = proto::parse_option_reply(&h).unwrap();
            assert_eq!(reply.option, option);
            let mut data = vec![0u8; reply.length as usize];
            self.stream.read_exact(&mut data).await.unwrap();
            replies.push((reply.reply_type, data));
            if reply.reply_type != proto::REP_INFO && reply.reply_type != proto::REP_SERVER {
                return replies;
            }
        }
    }

    async fn go(&mut self, name: &str) -> (u64, u16) {
        let request = InfoRequest {
            name: name.into(),
            requests: vec![proto::INFO_BLOCK_SIZE],
        };
        let replies = self
            .option(proto::OPT_GO, &proto::encode_info_request(&request))
            .await;
        assert_eq!(replies.last().unwrap().0, proto::REP_ACK, "{replies:?}");
        let export = replies
            .iter()
            .find(|(t, d)| *t == proto::REP_INFO && d[..2] == proto::INFO_EXPORT.to_be_bytes())
            .expect("NBD_INFO_EXPORT missing");
        let size = u64::from_be_bytes(export.1[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes(export.1[10..12].try_into().unwrap());
        let block = replies
            .iter()
            .find(|(t, d)| *t == proto::REP_INFO && d[..2] == proto::INFO_BLOCK_SIZE.to_be_bytes())
            .expect("NBD_INFO_BLOCK_SIZE missing");
        assert_eq!(block.1[2..], [0, 0, 0, 1, 0, 0, 16, 0, 2, 0, 0, 0]);
        (size, flags)
    }

    /// Sends a request; returns the reply error and the read data (for successful reads).
    async fn request(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> (Errno, Vec<u8>) {
        self.handle += 1;
        let header = RequestHeader {
            flags,
            kind,
            handle: self.handle,
            offset,
            length,
        };
        let mut out = Vec::new();
        proto::encode_request(&header, data, &mut out);
        self.stream.write_all(&out).await.unwrap();
        let mut h = [0u8; proto::SIMPLE_REPLY_HEADER_LEN];
        self.stream.read_exact(&mut h).await.unwrap();
        let reply = proto::parse_simple_reply(&h).unwrap();
        assert_eq!(reply.handle, self.handle);
        let mut payload = Vec::new();
        if kind == proto::CMD_READ && reply.error == Errno::OK {
            payload = vec![0u8; length as usize];
            self.stream.read_exact(&mut payload).await.unwrap();
        }
        (reply.error, payload)
    }

    /// True when the server closed the connection (EOF).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

#[tokio::test]
async fn options_list_info_and_unsupported_get_the_right_replies() {
    let server = Server::start().await;
    let mut c = Raw::connect(server.addr).await;
    let list = c.option(proto::OPT_LIST, &[]).await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0].0, proto::REP_SERVER);
    assert_eq!(list[0].1, [0, 0, 0, 5, b'd', b'i', b's', b'k', b'0']);
    assert_eq!(list[1].0, proto::REP_ACK);
    for option in [
        proto::OPT_STRUCTURED_REPLY,
        proto::OPT_STARTTLS,
        proto::OPT_LIST_META_CONTEXT,
        proto::OPT_SET_META_CONTEXT,
        proto::OPT_EXTENDED_HEADERS,
        77,
    ] {
        let r = c.option(option, &[]).await;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, proto::REP_ERR_UNSUP, "option {option}");
    }
    let unknown = InfoRequest {
        name: "nope".into(),
        requests: vec![],
    };
    let r = c
        .option(proto::OPT_INFO, &proto::encode_info_request(&unknown))
        .await;
    assert_eq!(r[0].0, proto::REP_ERR_UNKNOWN);
    let r = c.option(proto::OPT_INFO, &[0, 0, 0, 9]).await;
    assert_eq!(r[0].0, proto::REP_ERR_INVALID);
    let r = c.option(proto::OPT_LIST, b"x").await;
    assert_eq!(r[0].0, proto::REP_ERR_INVALID);
    let known = InfoRequest {
        name: "disk0".into(),
        requests: vec![],
    };
    let r = c
        .option(proto::OPT_INFO, &proto::encode_info_request(&known))
        .await;
    assert_eq!(
        r.len(),
        2,
        "INFO without a block size request: export info + ACK"
    );
    // Still in negotiation after INFO: GO works.
    let (size, flags) = c.go("disk0").await;
    assert_eq!(size, SIZE);
    assert_eq!(flags, proto::transmission_flags(true, true));
    let (e, data) = c.request(proto::CMD_READ, 0, 0, 16, &[]).await;
    assert_eq!((e, data), (Errno::OK, vec![0; 16]));
    server.stop().await;
}

#[tokio::test]
async fn abort_gets_an_ack_and_the_connection_closes() {
    let server = Server::start().await;
    let mut c = Raw::connect(server.addr).await;
    let r = c.option(proto::OPT_ABORT, &[]).await;
    assert_eq!(r, vec![(proto::REP_ACK, vec![])]);
    assert!(c.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn export_name_enters_transmission_and_unknown_name_closes() {
    let server = Server::start().await;
    let mut c = Raw::connect(server.addr).await;
    let mut out = Vec::new();
    proto::encode_option(proto::OPT_EXPORT_NAME, b"disk0", &mut out);
    c.stream.write_all(&out).await.unwrap();
    let mut reply = [0u8; 10]; // NO_ZEROES negotiated: no 124-byte padding
    c.stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), SIZE);
    let (e, _) = c.request(proto::CMD_WRITE, 0, 0, 3, b"abc").await;
    assert_eq!(e, Errno::OK);
    assert_eq!(&server.file()[..3], b"abc");

    let mut c = Raw::connect(server.addr).await;
    let mut out = Vec::new();
    proto::encode_option(proto::OPT_EXPORT_NAME, b"nope", &mut out);
    c.stream.write_all(&out).await.unwrap();
    assert!(
        c.closed().await,
        "unknown EXPORT_NAME must close the session"
    );
    server.stop().await;
}

/// (what, command, flags, offset, length, payload, expected error)
type Case = (&'static str, u16, u16, u64, u32, Vec<u8>, Errno);

#[tokio::test]
async fn transmission_errors_follow_the_spec() {
    let server = Server::start().await;
    let mut c = Raw::connect(server.addr).await;
    c.go("disk0").await;
    let cases: Vec<Case> = vec![
        (
            "write in range",
            proto::CMD_WRITE,
            proto::CMD_FLAG_FUA,
            SIZE - 4,
            4,
            vec![9; 4],
            Errno::OK,
        ),
        (
            "write past end",
            proto::CMD_WRITE,
            0,
            SIZE - 2,
            4,
            vec![9; 4],
            Errno::ENOSPC,
        ),
        (
            "read past end",
            proto::CMD_READ,
            0,
            SIZE - 2,
            4,
            vec![],
            Errno::EINVAL,
        ),
        (
            "read offset overflow",
            proto::CMD_READ,
            0,
            u64::MAX,
            1,
            vec![],
            Errno::EINVAL,
        ),
        (
            "read too large",
            proto::CMD_READ,
            0,
            0,
            proto::MAX_PAYLOAD + 1,
            vec![],
            Errno::EINVAL,
        ),
        (
            "trim past end",
            proto::CMD_TRIM,
            0,
            SIZE,
            1,
            vec![],
            Errno::EINVAL,
        ),
        (
            "write zeroes past end",
            proto::CMD_WRITE_ZEROES,
            0,
            SIZE,
            1,
            vec![],
            Errno::ENOSPC,
        ),
        ("unknown command", 42, 0, 0, 0, vec![], Errno::EINVAL),
        (
            "unknown flag",
            proto::CMD_READ,
            1 << 9,
            0,
            1,
            vec![],
            Errno::EINVAL,
        ),
        ("flush", proto::CMD_FLUSH, 0, 0, 0, vec![], Errno::OK),
    ];
    for (i, (what, kind, flags, offset, len, data, want)) in cases.into_iter().enumerate() {
        let (got, _) = c.request(kind, flags, offset, len, &data).await;
        assert_eq!(got, want, "#{i} {what}: expect {want:?} got {got:?}");
    }
    let tail = server.file();
    assert_eq!(&tail[(SIZE - 4) as usize..], &[9, 9, 9, 9]);

    // Fenced mid-session: writes get EPERM, reads still work.
    server.volume.set_fenced(true);
    let (e, _) = c.request(proto::CMD_WRITE, 0, 0, 4, &[1; 4]).await;
    assert_eq!(e, Errno::EPERM);
    let (e, _) = c.request(proto::CMD_WRITE_ZEROES, 0, 0, 4, &[]).await;
    assert_eq!(e, Errno::EPERM);
    let (e, _) = c.request(proto::CMD_TRIM, 0, 0, 4, &[]).await;
    assert_eq!(e, Errno::EPERM);
    let (e, data) = c.request(proto::CMD_READ, 0, SIZE - 4, 4, &[]).await;
    assert_eq!((e, data), (Errno::OK, vec![9; 4]));

    // A new client sees the export as read-only.
    let mut c2 = Raw::connect(server.addr).await;
    let (_, flags) = c2.go("disk0").await;
    assert_ne!(flags & proto::TFLAG_READ_ONLY, 0);

    // Soft disconnect: no reply, the server closes.
    let mut out = Vec::new();
    let disc = RequestHeader {
        flags: 0,
        kind: proto::CMD_DISC,
        handle: 99,
        offset: 0,
        length: 0,
    };
    proto::encode_request(&disc, &[], &mut out);
    c.stream.write_all(&out).await.unwrap();
    assert!(c.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn bad_magic_and_oversized_write_close_the_connection() {
    let server = Server::start().await;
    let mut c = Raw::connect(server.addr).await;
    c.go("disk0").await;
    c.stream
        .write_all(&[0u8; proto::REQUEST_HEADER_LEN])
        .await
        .unwrap();
    assert!(c.closed().await);

    let mut c = Raw::connect(server.addr).await;
    c.go("disk0").await;
    let mut out = Vec::new();
    let huge = RequestHeader {
        flags: 0,
        kind: proto::CMD_WRITE,
        handle: 1,
        offset: 0,
        length: u32::MAX,
    };
    proto::encode_request(&huge, &[], &mut out);
    c.stream.write_all(&out).await.unwrap();
    assert!(c.closed().await);

    let mut c = Raw::connect(server.addr).await;
    let mut out = Vec::new();
    out.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&proto::OPT_GO.to_be_bytes());
    out.extend_from_slice(&u32::MAX.to_be_bytes());
    c.stream.write_all(&out).await.unwrap();
    assert!(
        c.closed().await,
        "an option over the length limit must close"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_serve_returns() {
    let server = Server::start().await;
    let mut idle = Raw::connect(server.addr).await;
    idle.go("disk0").await;
    let mut negotiating = Raw::connect(server.addr).await;
    // A client stalled in the middle of a write payload must not hold up shutdown.
    let mut stalled = Raw::connect(server.addr).await;
    stalled.go("disk0").await;
    let mut out = Vec::new();
    let write = RequestHeader {
        flags: 0,
        kind: proto::CMD_WRITE,
        handle: 1,
        offset: 0,
        length: 4096,
    };
    proto::encode_request(&write, &[0xee; 4096], &mut out);
    stalled
        .stream
        .write_all(&out[..proto::REQUEST_HEADER_LEN + 100])
        .await
        .unwrap();
    let addr = server.addr;
    let path = server.path.clone();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _dir = server.stop().await;
    assert!(idle.closed().await);
    assert!(negotiating.closed().await);
    assert!(stalled.closed().await);
    assert!(
        std::fs::read(&path).unwrap()[..4096]
            .iter()
            .all(|&b| b == 0),
        "a half-received write was applied"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open after shutdown"
    );
}

// ------------------------------------------------------------------------------------------
// Hardening: handshake and idle timeouts, handshake places, transmission slots.
// ------------------------------------------------------------------------------------------

/// Options with every limit at its default except those the test sets.
fn opts(f: impl FnOnce(&mut ServerOptions)) -> ServerOptions {
    let mut o = ServerOptions::default();
    f(&mut o);
    o
}

/// Reads (discarding) until EOF or a reset; returns how long that took, or `None` if the
/// socket was still open after `limit`.
async fn eof_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

// Multi-threaded: the server accepts while this thread blocks in `connect` (the listen
// backlog alone may hold fewer than 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_tcp_connections_do_not_lock_qemu_out() {
    if !have_qemu("two_hundred_idle_tcp_connections_do_not_lock_qemu_out") {
        return;
    }
    let server = Server::start().await;
    // 1. Two hundred sockets connect and never send a byte: more than the 128 transmission
    //    slots, fewer than the 256 handshake places.
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 2. qemu-io still gets in, well before the idle sockets' handshake timeout (10 s).
    let cmds = [
        "write -P 0xab 0 64k".to_string(),
        "read -P 0xab 0 64k".to_string(),
    ];
    let out = tokio::time::timeout(
        Duration::from_secs(8),
        qemu_io(&server.url("disk0"), &[], &cmds),
    )
    .await
    .expect("qemu-io was locked out by 200 idle connections");
    assert_ok(&out, "qemu-io beside 200 idle connections");
    assert!(server.file()[..65536].iter().all(|&b| b == 0xab));
    drop(idle);
    server.stop().await;
}

#[tokio::test]
async fn client_stalled_mid_handshake_is_dropped_after_the_handshake_timeout() {
    let timeout = Duration::from_secs(1);
    let margin = Duration::from_secs(3);
    let server = Server::start_opts(opts(|o| o.handshake_timeout = timeout)).await;
    // 1. Three clients stall at three points: before the flags, mid-flags, mid-option.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut mid_flags = TcpStream::connect(server.addr).await.unwrap();
    let mut greeting = [0u8; proto::GREETING_LEN];
    mid_flags.read_exact(&mut greeting).await.unwrap();
    mid_flags.write_all(&[0, 0]).await.unwrap();
    let mut mid_option = Raw::connect(server.addr).await;
    let mut option = Vec::new();
    proto::encode_option(proto::OPT_LIST, &[], &mut option);
    mid_option.stream.write_all(&option[..10]).await.unwrap();
    // 2. Each is closed by the server after the timeout, not before.
    let stalled = std::time::Instant::now();
    for (i, stream) in [&mut silent, &mut mid_flags, &mut mid_option.stream]
        .into_iter()
        .enumerate()
    {
        eof_within(stream, timeout + margin)
            .await
            .unwrap_or_else(|| panic!("#{i}: still open after {:?}", timeout + margin));
        let took = stalled.elapsed();
        assert!(
            took + Duration::from_millis(200) >= timeout,
            "#{i}: dropped after {took:?}, before the {timeout:?} timeout"
        );
    }
    // 3. A client that completes the handshake in time is served.
    let mut c = Raw::connect(server.addr).await;
    c.go("disk0").await;
    let (err, _) = c.request(proto::CMD_FLUSH, 0, 0, 0, &[]).await;
    assert_eq!(err, Errno::OK);
    server.stop().await;
}

#[tokio::test]
async fn silent_client_in_transmission_is_dropped_after_the_idle_timeout() {
    let timeout = Duration::from_secs(1);
    let margin = Duration::from_secs(3);
    let server = Server::start_opts(opts(|o| o.idle_timeout = Some(timeout))).await;
    let mut c = Raw::connect(server.addr).await;
    c.go("disk0").await;
    // 1. A client that keeps asking, for twice the idle timeout, is never idle.
    let busy = std::time::Instant::now();
    let mut last_reply = busy;
    let mut i = 0u8;
    while busy.elapsed() < 2 * timeout {
        tokio::time::sleep(timeout / 4).await;
        let (err, _) = c
            .request(proto::CMD_WRITE, 0, u64::from(i) * 4096, 4096, &[i; 4096])
            .await;
        last_reply = std::time::Instant::now();
        assert_eq!(err, Errno::OK, "#{i}: write refused");
        i += 1;
    }
    // 2. Once silent, it is closed after the idle timeout (and not long before).
    eof_within(&mut c.stream, timeout + margin)
        .await
        .expect("silent client still connected after the idle timeout");
    let took = last_reply.elapsed();
    assert!(
        took + Duration::from_millis(200) >= timeout,
        "closed after {took:?}, before the {timeout:?} idle timeout"
    );
    // 3. Its writes were all served.
    let file = server.file();
    for j in 0..i {
        let block = &file[usize::from(j) * 4096..(usize::from(j) + 1) * 4096];
        assert!(block.iter().all(|&b| b == j), "#{j}: write lost");
    }
    server.stop().await;
}

#[tokio::test]
async fn connection_caps_refuse_with_an_nbd_error_and_free_slots_on_close() {
    let server = Server::start_opts(opts(|o| {
        o.max_connections = 3;
        o.max_connections_per_peer = 2;
    }))
    .await;
    let go = |name: &str| {
        proto::encode_info_request(&InfoRequest {
            name: name.into(),
            requests: vec![],
        })
    };
    // 1. 127.0.0.1 takes its two slots.
    let mut a1 = Raw::connect_from(server.addr, [127, 0, 0, 1]).await;
    a1.go("disk0").await;
    let mut a2 = Raw::connect_from(server.addr, [127, 0, 0, 1]).await;
    a2.go("disk0").await;
    // 2. A third client from 127.0.0.1 is refused during option haggling (NBD_REP_ERR_POLICY)
    //    and stays in negotiation; qemu-io from there is refused too.
    let mut a3 = Raw::connect_from(server.addr, [127, 0, 0, 1]).await;
    let replies = a3.option(proto::OPT_GO, &go("disk0")).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].0, proto::REP_ERR_POLICY);
    let message = String::from_utf8_lossy(&replies[0].1).to_string();
    assert!(message.contains("too many connections"), "{message}");
    if have_qemu("connection_caps_refuse_with_an_nbd_error_and_free_slots_on_close") {
        let out = qemu_io(&server.url("disk0"), &["-r"], &["read 0 4k".to_string()]).await;
        assert!(
            !out.status.success(),
            "qemu-io got in over the per-peer cap"
        );
    }
    // 3. Another address still gets in (the cap is per peer): the total is now full.
    let mut b1 = Raw::connect_from(server.addr, [127, 0, 0, 2]).await;
    b1.go("disk0").await;
    // 4. Over the total cap: refused from any address; EXPORT_NAME (no error reply) closes.
    let mut c1 = Raw::connect_from(server.addr, [127, 0, 0, 3]).await;
    let replies = c1.option(proto::OPT_GO, &go("disk0")).await;
    assert_eq!(replies[0].0, proto::REP_ERR_POLICY, "{replies:?}");
    let mut c2 = Raw::connect_from(server.addr, [127, 0, 0, 3]).await;
    let mut out = Vec::new();
    proto::encode_option(proto::OPT_EXPORT_NAME, b"disk0", &mut out);
    c2.stream.write_all(&out).await.unwrap();
    assert!(c2.closed().await, "EXPORT_NAME over the cap must close");
    // 5. A slot holder leaves: the refused client asks again on the same connection and
    //    gets in.
    drop(a1);
    let start = std::time::Instant::now();
    loop {
        let replies = a3.option(proto::OPT_GO, &go("disk0")).await;
        if replies.last().unwrap().0 == proto::REP_ACK {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "slot not freed: {replies:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (err, _) = a3.request(proto::CMD_FLUSH, 0, 0, 0, &[]).await;
    assert_eq!(err, Errno::OK);
    drop((a2, b1, c1));
    server.stop().await;
}

#[tokio::test]
async fn handshake_places_are_capped_and_freed_by_the_handshake_timeout() {
    let timeout = Duration::from_secs(1);
    let server = Server::start_opts(opts(|o| {
        o.max_handshakes = 4;
        o.handshake_timeout = timeout;
    }))
    .await;
    // 1. Four silent sockets take the four handshake places (each got its greeting).
    let mut silent = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let mut greeting = [0u8; proto::GREETING_LEN];
        s.read_exact(&mut greeting).await.unwrap();
        silent.push(s);
    }
    // 2. A fifth is closed at once, before any greeting.
    let mut fifth = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(timeout / 2, fifth.read_to_end(&mut buf))
        .await
        .expect("over the handshake cap: not closed at once");
    assert!(read.is_err() || buf.is_empty(), "got {} bytes", buf.len());
    // 3. After the timeout the places are free and a real client gets in.
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            eof_within(s, timeout * 4).await.is_some(),
            "#{i}: silent socket not dropped"
        );
    }
    let mut c = Raw::connect(server.addr).await;
    c.go("disk0").await;
    server.stop().await;
}
