//! Giving back the memory a long-lived helper (container monitor, pod
//! init) used only while it started.

/// Drops this process's resident pages of code and constants (read-only
/// private file mappings: the binary's and its libraries' segments) and
/// returns free heap to the kernel. Monitors and pod inits live as long as
/// their container or pod but run little besides a wait loop: setup and
/// parsing code needn't stay mapped, and what the loop runs faults back in
/// from the page cache. A mapping holding any copy-on-write page (text
/// relocations, uprobes, breakpoints) is left alone: dropping would lose it.
pub fn shed_startup_pages() {
    if let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") {
        for (start, end) in sheddable(&smaps) {
            // SAFETY: a read-only private file mapping without anonymous pages: dropping
            // its pages only costs later faults that read the same bytes from the file.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// Address ranges of read-only, private, file-backed mappings with no anonymous pages.
fn sheddable(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(range) = fields.first().and_then(|f| f.split_once('-')).filter(|_| fields.len() >= 5) {
            let perms = fields[1];
            let file_backed = fields[4] != "0" && fields.get(5).is_some_and(|p| p.starts_with('/'));
            current = match (usize::from_str_radix(range.0, 16), usize::from_str_radix(range.1, 16)) {
                (Ok(start), Ok(end)) if file_backed && !perms.contains('w') && perms.ends_with('p') => {
                    Some((start, end))
                }
                _ => None,
            };
        } else if fields.first() == Some(&"Anonymous:") {
            if let Some(range) = current.take().filter(|_| fields.get(1) == Some(&"0")) {
                out.push(range);
            }
        }
    }
    out
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
    fn only_clean_read_only_file_mappings_are_shed() {
        let smaps = "\
55d0-55e0 r--p 00000000 fe:00 11 /usr/bin/cricket
Rss:                  64 kB
Anonymous:             0 kB
55e0-55f0 r-xp 00010000 fe:00 11 /usr/bin/cricket
Anonymous:             4 kB
55f0-5600 rw-p 00020000 fe:00 11 /usr/bin/cricket
Anonymous:             0 kB
7f00-7f10 r--p 00000000 00:00 0 
Anonymous:             0 kB
7f10-7f20 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7f20-7f30 r-xs 00000000 fe:00 12 /dev/shm/x
Anonymous:             0 kB
7f30-7f40 r-xp 00000000 fe:00 13 /usr/lib/libc.so.6
Anonymous:             0 kB
";
        assert_eq!(sheddable(smaps), vec![(0x55d0, 0x55e0), (0x7f30, 0x7f40)]);
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
        assert!(before > 0 && after == 0, "libseccomp code resident: {before} KiB before, {after} KiB after");
        // Relocated data is untouched: formatting goes through vtables in it.
        assert_eq!(format!("{:?}", vec![Some(1), None]), "[Some(1), None]");
        assert!(libseccomp::ScmpVersion::current().is_ok());
    }
}
