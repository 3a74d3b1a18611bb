//! The process's memory set-up, shared by the binary and the benchmarks.

/// Turns transparent huge pages off for this process (and its children).
///
/// mimalloc reserves its arenas as large aligned blocks. Where the kernel
/// backs them with transparent huge pages, the first touch of any 2 MiB
/// range makes the whole range resident: that was about 12 of the 30 MiB
/// an idle snapback held (BENCHMARKS.md, memory), for a heap of a few MiB.
/// The `no_thp` feature of mimalloc (Cargo.toml) stops mimalloc from asking
/// for huge pages, which is all it takes where THP is `madvise` (the usual
/// default); this covers kernels set to `always`. Call it first thing in
/// `main`. A kernel or seccomp profile that refuses it only costs memory,
/// so the error is returned for the caller to ignore or report.
pub fn no_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_after_the_call() {
        // The flag belongs to the whole process; tests in this binary do
        // not depend on huge pages.
        super::no_transparent_huge_pages().unwrap();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
