//! Allocator tuning for repeated runs of one session.
//!
//! Every run allocates its intermediate and output tensors afresh (a `Value` owns its
//! buffer). With glibc's defaults, a buffer above the dynamic mmap threshold (at most 32 MiB;
//! the word LM's batch-10 logits are 46 MB) is a fresh `mmap` each time and is returned to the
//! kernel on free, so every run pays a page fault and a kernel page clear per 4 KiB: measured
//! here, that took longer than the int8 GEMM writing the same output (87 ms vs 34 ms for the
//! 350x256x33278 decoder). Raising the mmap threshold does not help: glibc caps it at 32 MiB,
//! and a session with a thread pool runs on a worker thread, whose arena maps a fresh heap for
//! such a block and unmaps it on free. onnxruntime avoids all this with its own arena.
//! [`keep_large_buffers`] gets the same effect from glibc: one arena, no mmap'd blocks, no
//! trimming, so freed buffers stay in the heap for the next run (the decoder-only model: 100 ms
//! to 47 ms per run).

/// Makes glibc serve every allocation from one heap arena without mmap'd blocks and keep
/// freed memory (trim threshold 1 GiB). Process-wide; call it once at start-up, before any
/// thread is started, in a program that runs models repeatedly (the CLI's `run` and `verify`
/// do; `rewrite` does not, so its peak memory is unaffected). The cost is memory: the heap
/// does not shrink after a large model's run. A no-op on other C libraries.
pub fn keep_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; all three are valid options.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, GIB);
        }
    }
}
