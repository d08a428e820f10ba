//! Giving back the memory a long-lived helper (container monitor, pod
//! init) used only while it started.

/// Drops this process's resident pages of code and constants (the
/// read-only segments of the binary and its libraries) and returns free heap
/// to the kernel. Monitors and pod inits live as long as their container or
/// pod but run little besides a wait loop: setup and parsing code needn't
/// stay mapped, and what the loop runs faults back in from the page cache.
/// Writable segments, whose pages hold relocated data, are left alone.
pub fn shed_startup_pages() {
    unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, _data: *mut libc::c_void) -> libc::c_int {
        // SAFETY: the loader passes a valid entry for the duration of the callback.
        let info = unsafe { &*info };
        // SAFETY: dlpi_name is a NUL-terminated string (empty for the main program) or null.
        let name = if info.dlpi_name.is_null() { c"" } else { unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) } };
        if name.to_bytes().windows(4).any(|w| w == b"vdso") {
            return 0;
        }
        let page = page_size();
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_W != 0 {
                continue;
            }
            let start = (info.dlpi_addr as usize + ph.p_vaddr as usize).next_multiple_of(page);
            let end = (info.dlpi_addr as usize + (ph.p_vaddr + ph.p_memsz) as usize) / page * page;
            if end > start {
                // SAFETY: whole pages of a read-only file mapping: dropping them only costs a
                // later fault that reads the same bytes back from the file.
                unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
            }
        }
        0
    }
    // SAFETY: the callback only reads the entries it is given.
    unsafe { libc::dl_iterate_phdr(Some(each), std::ptr::null_mut()) };
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident KiB of the executable mappings of files whose name contains `lib`.
    fn resident_code_kib(lib: &str) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_code = false;
        let mut total = 0;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
                in_code = fields[1].contains('x') && fields.get(5).is_some_and(|p| p.contains(lib));
            } else if in_code && fields.first() == Some(&"Rss:") {
                total += fields[1].parse::<u64>().unwrap();
            }
        }
        total
    }

    #[test]
    fn shedding_drops_resident_code_and_keeps_running() {
        // In a process of its own: other tests' threads would fault libseccomp back in.
        let name = "resident::tests::shed_in_this_process";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--ignored", "--test-threads=1", "--nocapture"])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }

    #[test]
    #[ignore = "run in a process of its own by shedding_drops_resident_code_and_keeps_running"]
    fn shed_in_this_process() {
        // libseccomp's code: resident once called, and not used by the measuring below.
        assert!(libseccomp::ScmpVersion::current().is_ok());
        let before = resident_code_kib("libseccomp");
        shed_startup_pages();
        let after = resident_code_kib("libseccomp");
        // At most the two edge pages stay: segments are shed inward to whole pages.
        let edges = 2 * page_size() as u64 / 1024;
        assert!(before > edges && after <= edges, "libseccomp code resident: {before} KiB before, {after} KiB after");
        // Relocated data is untouched: formatting goes through vtables in it.
        assert_eq!(format!("{:?}", vec![Some(1), None]), "[Some(1), None]");
        assert!(libseccomp::ScmpVersion::current().is_ok());
    }
}
