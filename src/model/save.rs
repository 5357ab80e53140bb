//! Saving: serialize inline, or move large tensors into an external data file. Every file is
//! written to a temporary file in the destination folder and renamed into place, so a failed
//! or interrupted save never leaves a partial output. Files the caller protects (the input
//! model and its data) are never overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use super::Model;
use super::prefetch::Payloads;
use crate::error::{Error, Result};
use crate::ir::deferred::MIN_DEFERRED;
use crate::onnx::{
    GraphProto, ModelProto, StringStringEntryProto, TensorProto, tensor_proto::DataLocation,
};

/// Protobuf cannot serialize messages of 2 GiB or more.
const PROTOBUF_LIMIT: u64 = (2 << 30) - 1;
/// Tensors at least this big go to the external file (as `onnx.save_model` does).
const EXTERNAL_THRESHOLD: usize = 1024;
/// Offsets in the external file are aligned so that memory-mapped tensors are aligned too.
const EXTERNAL_ALIGN: u64 = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExternalDataMode {
    /// External data when the input had it, or when inline would pass protobuf's 2 GiB limit.
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    pub external_data: ExternalDataMode,
    /// Files that must not be overwritten (the input model and its external data).
    pub protect: Vec<PathBuf>,
    /// Told how far the writing is (deferred tensors are computed as they are written, so
    /// this is most of a rewrite's time).
    pub progress: Option<SaveProgress>,
}

/// Called with (bytes written, bytes to write) as the files are written: the model file,
/// or the external data file when there is one.
#[derive(Clone)]
pub struct SaveProgress(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for SaveProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaveProgress")
    }
}

/// Bytes written so far out of a total, reported through the caller's [`SaveProgress`].
struct Progress<'a> {
    report: Option<&'a SaveProgress>,
    done: u64,
    total: u64,
}

impl Progress<'_> {
    fn wrote(&mut self, n: usize) {
        self.done += n as u64;
        if let Some(r) = self.report {
            (r.0)(self.done.min(self.total), self.total);
        }
    }
}

/// What a save wrote.
#[derive(Clone, Debug)]
pub struct Saved {
    pub model_bytes: u64,
    pub external_file: Option<PathBuf>,
    pub external_bytes: u64,
}

/// Saves `model` to `path` atomically.
pub fn save(model: &Model, path: impl AsRef<Path>, opts: &SaveOptions) -> Result<Saved> {
    let path = path.as_ref();
    check_not_protected(path, &opts.protect)?;
    let mut proto = model.to_proto();
    let inline_len = proto.encoded_len() as u64;
    let external = match opts.external_data {
        ExternalDataMode::Always => true,
        ExternalDataMode::Never => {
            if inline_len > PROTOBUF_LIMIT {
                return Err(Error::Other(format!(
                    "{}: the model is {inline_len} bytes, over protobuf's 2 GiB limit; save it with external data",
                    path.display()
                )));
            }
            false
        }
        ExternalDataMode::Auto => !model.external_files.is_empty() || inline_len > PROTOBUF_LIMIT,
    };
    let dir = parent_dir(path);
    let mut saved = Saved {
        model_bytes: 0,
        external_file: None,
        external_bytes: 0,
    };
    let mut pending_data = None;
    if external {
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::Other(format!("{}: not a file path", path.display())))?;
        let location = format!("{}.data", file_name.to_string_lossy());
        let data_path = dir.join(&location);
        check_not_protected(&data_path, &opts.protect)?;
        let mut data = new_temp(&data_path)?;
        let mut order = Vec::new();
        if let Some(g) = proto.graph.as_ref() {
            external_order(g, &mut order);
        }
        let total: u64 = order
            .iter()
            .filter(|raw| raw.len() >= EXTERNAL_THRESHOLD)
            .map(|raw| raw.len() as u64)
            .sum();
        let progress = Progress {
            report: opts.progress.as_ref(),
            done: 0,
            total,
        };
        let (payloads, producer) = super::prefetch::pipeline(order);
        let written = std::thread::scope(|scope| {
            if let Some(p) = producer {
                scope.spawn(move || p.run());
            }
            let writeback = Writeback::new(data.as_file());
            let mut writer = ExternalWriter {
                location: &location,
                writeback,
                out: std::io::BufWriter::new(data.as_file_mut()),
                offset: 0,
                payloads,
                progress,
            };
            if let Some(g) = proto.graph.as_mut() {
                writer.move_graph(g)?;
            }
            writer.out.flush()?;
            Ok::<_, std::io::Error>(writer.offset)
        })
        .map_err(|e| Error::io(&data_path, e))?;
        data.as_file()
            .sync_all()
            .map_err(|e| Error::io(&data_path, e))?;
        pending_data = Some((data, data_path.clone()));
        saved.external_file = Some(data_path);
        saved.external_bytes = written;
    }
    // Both files are complete in temporaries before either is renamed into place; if the
    // model's rename fails, the data file just renamed is removed again.
    // With external data, the progress is the data file's; the model file is small.
    let model_progress = if external {
        None
    } else {
        opts.progress.as_ref()
    };
    let (model_tmp, model_bytes) = encode_temp(path, &proto, model_progress)?;
    saved.model_bytes = model_bytes;
    if let Some((data, data_path)) = pending_data {
        data.persist(&data_path)
            .map_err(|e| Error::io(&data_path, e.error))?;
    }
    if let Err(e) = model_tmp.persist(path) {
        if let Some(d) = &saved.external_file {
            let _ = std::fs::remove_file(d);
        }
        return Err(Error::io(path, e.error));
    }
    Ok(saved)
}

/// Writes `bytes` to `path` via a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_temp(path, bytes)?
        .persist(path)
        .map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Encodes `proto` straight into a temporary file beside `path`, through a small buffer:
/// no whole-model copy in memory (peak memory stays near the input's size).
fn encode_temp(
    path: &Path,
    proto: &ModelProto,
    progress: Option<&SaveProgress>,
) -> Result<(tempfile::NamedTempFile, u64)> {
    let tmp = new_temp(path)?;
    let len = proto.encoded_len() as u64;
    let mut order = Vec::new();
    if let Some(g) = proto.graph.as_ref() {
        inline_order(g, &mut order);
    }
    let (payloads, producer) = super::prefetch::pipeline(order);
    std::thread::scope(|scope| {
        if let Some(p) = producer {
            scope.spawn(move || p.run());
        }
        let mut w = StreamBuf {
            out: tmp.as_file(),
            buf: Vec::with_capacity(STREAM_BUF),
            err: None,
            writeback: Writeback::new(tmp.as_file()),
            payloads,
            progress: Progress {
                report: progress,
                done: 0,
                total: len,
            },
        };
        proto
            .encode(&mut w)
            .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        w.flush().map_err(|e| Error::io(path, e))
    })?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    Ok((tmp, len))
}

const STREAM_BUF: usize = 1 << 20;

/// Starts the disk writes of a file being streamed as it grows, so that the final `fsync`
/// (which the atomic save needs before its rename) waits only for the tail instead of the
/// whole file: on Linux, `sync_file_range(SYNC_FILE_RANGE_WRITE)` every few MB, which queues
/// the writeback and returns at once. Elsewhere it does nothing.
struct Writeback {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
    written: u64,
    started: u64,
}

/// Bytes written between two writeback starts.
const WRITEBACK_STEP: u64 = 4 << 20;

impl Writeback {
    fn new(f: &std::fs::File) -> Self {
        #[cfg(not(target_os = "linux"))]
        let _ = f;
        Writeback {
            #[cfg(target_os = "linux")]
            fd: std::os::fd::AsRawFd::as_raw_fd(f),
            written: 0,
            started: 0,
        }
    }

    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        if self.written - self.started < WRITEBACK_STEP {
            return;
        }
        #[cfg(target_os = "linux")]
        // SAFETY: `fd` is the open temporary file this writer writes to (it outlives the
        // writer); the call only queues writeback of a range of it. A failure is harmless: the
        // final fsync writes everything anyway.
        unsafe {
            libc::sync_file_range(
                self.fd,
                self.started as _,
                (self.written - self.started) as _,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started = self.written;
    }
}

/// A `BufMut` that flushes to a file whenever its buffer fills; the first write error is
/// kept and returned by `flush`.
struct StreamBuf<'p, W: Write> {
    out: W,
    buf: Vec<u8>,
    err: Option<std::io::Error>,
    writeback: Writeback,
    payloads: Payloads,
    progress: Progress<'p>,
}

impl<W: Write> StreamBuf<'_, W> {
    fn drain(&mut self) {
        if self.err.is_none() {
            match self.out.write_all(&self.buf) {
                Ok(()) => {
                    self.writeback.wrote(self.buf.len());
                    self.progress.wrote(self.buf.len());
                }
                Err(e) => self.err = Some(e),
            }
        }
        self.buf.clear();
    }

    fn flush(mut self) -> std::io::Result<()> {
        self.drain();
        match self.err.take() {
            Some(e) => Err(e),
            None => self.out.flush(),
        }
    }
}

// SAFETY: delegates to Vec<u8>'s BufMut, draining it before it would grow past STREAM_BUF.
unsafe impl<W: Write> bytes::BufMut for StreamBuf<'_, W> {
    fn remaining_mut(&self) -> usize {
        usize::MAX - self.buf.len()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialized `cnt` bytes of the chunk that `chunk_mut` returned.
        unsafe { self.buf.advance_mut(cnt) };
        if self.buf.len() >= STREAM_BUF {
            self.drain();
        }
    }

    fn put_slice(&mut self, src: &[u8]) {
        // Large payloads (tensor data) go straight to the file instead of through the buffer,
        // deferred ones as they are computed.
        if src.len() >= MIN_DEFERRED {
            self.drain();
            if self.err.is_none() {
                let (out, writeback, progress) =
                    (&mut self.out, &mut self.writeback, &mut self.progress);
                let r = self.payloads.write(src, &mut |piece| {
                    out.write_all(piece)?;
                    writeback.wrote(piece.len());
                    progress.wrote(piece.len());
                    Ok(())
                });
                if let Err(e) = r {
                    self.err = Some(e);
                }
            }
        } else if src.len() >= STREAM_BUF / 4 {
            self.drain();
            if self.err.is_none() {
                match self.out.write_all(src) {
                    Ok(()) => {
                        self.writeback.wrote(src.len());
                        self.progress.wrote(src.len());
                    }
                    Err(e) => self.err = Some(e),
                }
            }
        } else {
            if self.buf.capacity() - self.buf.len() < src.len() {
                self.drain();
            }
            self.buf.extend_from_slice(src);
        }
    }

    // prost encodes `bytes` fields (tensors' raw_data) with `put`, whose default copies the
    // source into `chunk_mut` piece by piece: route it through `put_slice` so that large
    // payloads go to the file straight from the memory they live in.
    fn put<T: bytes::Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        while src.has_remaining() {
            let n = {
                let c = src.chunk();
                self.put_slice(c);
                c.len()
            };
            src.advance(n);
        }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.drain();
        }
        self.buf.chunk_mut()
    }
}

/// A temporary file in `dir` with the permissions of a normally created file (tempfile's
/// default is owner-only, which would carry over to the renamed output).
///
/// The temporary file is named after `target` and this process, `.NAME.tmp-PID-XXXXXX`: a
/// process killed while writing (SIGKILL, power loss) cannot delete its own, so before
/// creating one, every earlier temporary of the same target whose process is gone is removed
/// (the next save to the same path cleans up after a killed one). A hidden name keeps it out
/// of `ls` and globs such as `*.onnx` meanwhile.
fn new_temp(target: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = parent_dir(target);
    let prefix = temp_prefix(target)?;
    remove_stale_temps(&dir, &prefix);
    let mut b = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let prefix = format!("{prefix}{}-", std::process::id());
    b.prefix(&prefix);
    b.tempfile_in(&dir).map_err(|e| Error::io(&dir, e))
}

/// The folder a file is written in ("." for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.NAME.tmp-`, the start of the temporary files' names for `target`.
fn temp_prefix(target: &Path) -> Result<String> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::Other(format!("{}: not a file path", target.display())))?;
    Ok(format!(".{}.tmp-", name.to_string_lossy()))
}

/// Removes the temporaries `prefix`PID-XXXXXX in `dir` whose process no longer runs. Best
/// effort: a folder that cannot be listed, or a file that cannot be removed, is left alone.
fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !process_alive(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether a process with this id exists (on other systems than Unix: assumed to, so nothing
/// is removed).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Checks, before any work, that `path` can be written as an output: its folder exists and
/// is writable (a temporary file is created and removed there), `path` is not a folder, and
/// it is none of `inputs` (the same file by canonical path or, on Unix, by device and inode,
/// so hard links count) unless `overwrite_input`.
pub fn check_output_path(path: &Path, inputs: &[PathBuf], overwrite_input: bool) -> Result<()> {
    let out = path.display();
    let dir = parent_dir(path);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::Other(format!(
                "{out}: '{}' is not a folder",
                dir.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Other(format!(
                "{out}: the folder '{}' does not exist",
                dir.display()
            )));
        }
        Err(e) => return Err(Error::io(&dir, e)),
    }
    if path.is_dir() {
        return Err(Error::Other(format!("{out}: is a folder, not a file path")));
    }
    if !overwrite_input && inputs.iter().any(|i| same_file(i, path)) {
        return Err(Error::Other(format!(
            "{out}: refusing to overwrite the input (pass --overwrite-input to allow it)"
        )));
    }
    new_temp(path).map_err(|e| match e {
        Error::Io { err, .. } => Error::Other(format!(
            "{out}: cannot write in the folder '{}': {err}",
            dir.display()
        )),
        e => e,
    })?;
    Ok(())
}

/// Whether two paths name the same existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// `bytes` in a synced temporary file in `path`'s folder, ready to be renamed to `path`.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let mut tmp = new_temp(path)?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    Ok(tmp)
}

fn check_not_protected(path: &Path, protect: &[PathBuf]) -> Result<()> {
    for p in protect {
        if same_file(p, path) {
            return Err(Error::Other(format!(
                "{}: refusing to overwrite the input (pass --overwrite-input to allow it)",
                path.display()
            )));
        }
    }
    Ok(())
}

struct ExternalWriter<'a, W: Write> {
    location: &'a str,
    out: W,
    offset: u64,
    payloads: Payloads,
    progress: Progress<'a>,
    /// Starts the data file's disk writes as it grows (models over 2 GiB always come here).
    writeback: Writeback,
}

impl<W: Write> ExternalWriter<'_, W> {
    fn move_graph(&mut self, g: &mut GraphProto) -> std::io::Result<()> {
        for t in &mut g.initializer {
            self.move_tensor(t)?;
        }
        for n in &mut g.node {
            for a in &mut n.attribute {
                if let Some(t) = a.t.as_mut() {
                    self.move_tensor(t)?;
                }
                for t in &mut a.tensors {
                    self.move_tensor(t)?;
                }
                if let Some(sg) = a.g.as_mut() {
                    self.move_graph(sg)?;
                }
                for sg in &mut a.graphs {
                    self.move_graph(sg)?;
                }
            }
        }
        Ok(())
    }

    fn move_tensor(&mut self, t: &mut TensorProto) -> std::io::Result<()> {
        let Some(raw) = t.raw_data.as_ref() else {
            return Ok(());
        };
        if raw.len() < EXTERNAL_THRESHOLD {
            return Ok(());
        }
        let pad = (EXTERNAL_ALIGN - self.offset % EXTERNAL_ALIGN) % EXTERNAL_ALIGN;
        self.out
            .write_all(&[0u8; EXTERNAL_ALIGN as usize][..pad as usize])?;
        self.offset += pad;
        let (out, progress, writeback) = (&mut self.out, &mut self.progress, &mut self.writeback);
        self.payloads.write(raw, &mut |piece| {
            out.write_all(piece)?;
            progress.wrote(piece.len());
            // (Alignment padding is not counted: the ranges only steer when writeback
            // starts, and the final fsync covers everything.)
            writeback.wrote(piece.len());
            Ok(())
        })?;
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            entry("location", self.location.to_string()),
            entry("offset", self.offset.to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
        self.offset += raw.len() as u64;
        t.raw_data = None;
        Ok(())
    }
}

/// Tensor payloads in the order prost encodes a graph: the nodes (attribute tensors and
/// subgraphs, by field number) before the initializers.
fn inline_order<'g>(g: &'g GraphProto, order: &mut Vec<&'g [u8]>) {
    for n in &g.node {
        for a in &n.attribute {
            order.extend(a.t.as_ref().and_then(|t| t.raw_data.as_deref()));
            if let Some(sg) = &a.g {
                inline_order(sg, order);
            }
            order.extend(a.tensors.iter().filter_map(|t| t.raw_data.as_deref()));
            for sg in &a.graphs {
                inline_order(sg, order);
            }
        }
    }
    order.extend(g.initializer.iter().filter_map(|t| t.raw_data.as_deref()));
}

/// Tensor payloads in the order [`ExternalWriter::move_graph`] moves them.
fn external_order<'g>(g: &'g GraphProto, order: &mut Vec<&'g [u8]>) {
    order.extend(g.initializer.iter().filter_map(|t| t.raw_data.as_deref()));
    for n in &g.node {
        for a in &n.attribute {
            order.extend(a.t.as_ref().and_then(|t| t.raw_data.as_deref()));
            order.extend(a.tensors.iter().filter_map(|t| t.raw_data.as_deref()));
            if let Some(sg) = &a.g {
                external_order(sg, order);
            }
            for sg in &a.graphs {
                external_order(sg, order);
            }
        }
    }
}
