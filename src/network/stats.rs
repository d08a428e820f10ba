//! Interface counters of a pod's network namespace.

use std::io;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Reads `/proc/net/dev` as seen inside the namespace pinned at `netns`.
/// A short-lived thread joins the namespace, so no daemon thread changes its own.
pub fn interface_stats(netns: &Path) -> io::Result<Vec<InterfaceStats>> {
    let ns = std::fs::File::open(netns)?;
    let reader = std::thread::spawn(move || -> io::Result<String> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        std::fs::read_to_string("/proc/thread-self/net/dev")
    });
    let text = reader.join().map_err(|_| io::Error::other("the netns reader thread panicked"))??;
    Ok(parse_net_dev(&text))
}

fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            (f.len() >= 11).then(|| InterfaceStats {
                name: name.trim().to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0: 1000 10 3 0 0 0 0 0 2000 20 4 0 0 0 0 0
";
        let s = parse_net_dev(text);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            InterfaceStats { name: "eth0".into(), rx_bytes: 1000, rx_errors: 3, tx_bytes: 2000, tx_errors: 4 }
        );
    }

    #[test]
    fn reads_own_namespace() {
        let s = interface_stats(Path::new("/proc/self/ns/net")).unwrap();
        assert!(s.iter().any(|i| i.name == "lo"));
    }
}
