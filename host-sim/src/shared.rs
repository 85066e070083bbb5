//! State one simulated Envoy process shares across its VMs: shared data (Envoy's exact CAS
//! rules), shared queues, metrics, the log, the virtual clock and the seeded random source.
//!
//! Everything hangs off one [`Shared`] per simulation; nothing is global, so many simulations
//! run side by side in one process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::abi::{status, MetricType};

/// Locks a mutex, ignoring poisoning (a failed test thread must not wedge the others).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Envoy's shared data for one `vm_id` (proxy-wasm-cpp-host `src/shared_data.cc`).
///
/// * CAS values come from one counter starting at 1 (0 is skipped on wrap-around).
/// * `set` with `cas != 0` on an existing key fails with `CasMismatch` unless it matches.
/// * CAS is **not** checked when the key does not exist yet: the write always succeeds.
/// * `cas == 0` overwrites unconditionally.
/// * An empty value is stored like any other (the key stays; there is no delete).
#[derive(Debug)]
pub struct SharedData {
    map: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl Default for SharedData {
    fn default() -> Self {
        SharedData {
            map: HashMap::new(),
            next_cas: 1,
        }
    }
}

impl SharedData {
    fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// The value and CAS of a key.
    pub fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.map.get(key).cloned()
    }

    /// Writes a value; returns an ABI status (`OK` or `CAS_MISMATCH`).
    pub fn set(&mut self, key: &[u8], value: &[u8], cas: u32) -> i32 {
        if let Some(cur) = self.map.get(key).map(|e| e.1) {
            if cas != 0 && cas != cur {
                return status::CAS_MISMATCH;
            }
            let next = self.next_cas();
            self.map.insert(key.to_vec(), (value.to_vec(), next));
        } else {
            let next = self.next_cas();
            self.map.insert(key.to_vec(), (value.to_vec(), next));
        }
        status::OK
    }

    /// Every key with its value and CAS, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], u32)> {
        self.map
            .iter()
            .map(|(k, (v, cas))| (k.as_slice(), v.as_slice(), *cas))
    }

    /// Number of keys ever created.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if no key exists.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total bytes of keys and values.
    pub fn bytes(&self) -> usize {
        self.map.iter().map(|(k, (v, _))| k.len() + v.len()).sum()
    }
}

/// Envoy's shared queues (proxy-wasm-cpp-host `src/shared_queue.cc`), keyed by (vm_id, name).
#[derive(Debug, Default)]
pub struct SharedQueues {
    by_name: HashMap<(String, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    next_token: u32,
}

/// One queue: the VM that registered it and its items.
#[derive(Debug, Default)]
struct Queue {
    owner_vm: usize,
    owner_context: u32,
    items: VecDeque<Vec<u8>>,
}

impl SharedQueues {
    /// Registers (or re-registers) a queue owned by `vm` / `context`; returns its token.
    pub fn register(&mut self, vm_id: &str, name: &[u8], vm: usize, context: u32) -> u32 {
        let key = (vm_id.to_string(), name.to_vec());
        if let Some(t) = self.by_name.get(&key) {
            if let Some(q) = self.queues.get_mut(t) {
                q.owner_vm = vm;
                q.owner_context = context;
            }
            return *t;
        }
        self.next_token += 1;
        let token = self.next_token;
        self.by_name.insert(key, token);
        self.queues.insert(
            token,
            Queue {
                owner_vm: vm,
                owner_context: context,
                items: VecDeque::new(),
            },
        );
        token
    }

    /// The token of a registered queue.
    pub fn resolve(&self, vm_id: &[u8], name: &[u8]) -> Option<u32> {
        let key = (String::from_utf8_lossy(vm_id).into_owned(), name.to_vec());
        self.by_name.get(&key).copied()
    }

    /// Appends an item; returns the owner (vm, context) to notify, or `None` for a bad token.
    pub fn enqueue(&mut self, token: u32, data: &[u8]) -> Option<(usize, u32)> {
        let q = self.queues.get_mut(&token)?;
        q.items.push_back(data.to_vec());
        Some((q.owner_vm, q.owner_context))
    }

    /// Takes the oldest item: `Err(NOT_FOUND)` for a bad token, `Ok(None)` when empty.
    pub fn dequeue(&mut self, token: u32) -> Result<Option<Vec<u8>>, i32> {
        let q = self.queues.get_mut(&token).ok_or(status::NOT_FOUND)?;
        Ok(q.items.pop_front())
    }
}

/// One metric as Envoy keeps it: shared by name (`wasmcustom.<name>`) across the VMs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Metric {
    /// Counter, gauge or histogram.
    #[serde(rename = "type")]
    pub kind: MetricType,
    /// Current value (counters and gauges).
    pub value: u64,
    /// Recorded values (histograms).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<u64>,
}

/// A log line written by a VM (`proxy_log` or WASI stdout/stderr).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogLine {
    /// Virtual wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// `main` or `w<N>`.
    pub vm: String,
    /// The context the line was written from (0 when none).
    pub context_id: u32,
    /// `trace` … `critical`.
    pub level: &'static str,
    /// The message.
    pub message: String,
}

/// The virtual clock: wall-clock and monotonic time in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Nanoseconds since the Unix epoch.
    pub realtime_ns: u64,
    /// Monotonic nanoseconds (arbitrary origin).
    pub monotonic_ns: u64,
}

/// A deterministic random source (SplitMix64) seeded per simulation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator with this seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills a buffer.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// Everything the VMs of one simulated Envoy share.
#[derive(Debug)]
pub struct Shared {
    /// The `vm_id` (shared data and queues are per vm_id).
    pub vm_id: String,
    /// Shared data.
    pub data: Mutex<SharedData>,
    /// Shared queues.
    pub queues: Mutex<SharedQueues>,
    /// Metrics by name.
    pub metrics: Mutex<BTreeMap<String, Metric>>,
    /// Every log line, in order.
    pub log: Mutex<Vec<LogLine>>,
    /// The virtual clock.
    pub clock: Mutex<Clock>,
    /// The seeded random source.
    pub rng: Mutex<Rng>,
    /// Echo log lines at or above this level to stderr as they happen (`None`: quiet).
    pub echo_level: Option<u32>,
    /// Queue notifications to deliver: (vm index, context id, token).
    pub queue_ready: Mutex<Vec<(usize, u32, u32)>>,
}

impl Shared {
    /// Fresh shared state.
    pub fn new(vm_id: &str, start_unix_ns: u64, seed: u64) -> Shared {
        Shared {
            vm_id: vm_id.to_string(),
            data: Mutex::new(SharedData::default()),
            queues: Mutex::new(SharedQueues::default()),
            metrics: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Vec::new()),
            clock: Mutex::new(Clock {
                realtime_ns: start_unix_ns,
                monotonic_ns: 1_000_000_000,
            }),
            rng: Mutex::new(Rng::new(seed)),
            echo_level: None,
            queue_ready: Mutex::new(Vec::new()),
        }
    }

    /// Current virtual time.
    pub fn now(&self) -> Clock {
        *lock(&self.clock)
    }

    /// Moves the clock forward.
    pub fn advance_ns(&self, ns: u64) {
        let mut c = lock(&self.clock);
        c.realtime_ns = c.realtime_ns.saturating_add(ns);
        c.monotonic_ns = c.monotonic_ns.saturating_add(ns);
    }

    /// Appends a log line.
    pub fn log(&self, vm: &str, context_id: u32, level: u32, message: String) {
        let level_name = crate::abi::LOG_LEVEL_NAMES
            .get(level as usize)
            .copied()
            .unwrap_or("info");
        if self.echo_level.is_some_and(|l| level >= l) {
            eprintln!("[{vm} ctx {context_id}] [{level_name}] {message}");
        }
        let time_ns = self.now().realtime_ns;
        lock(&self.log).push(LogLine {
            time_ns,
            vm: vm.to_string(),
            context_id,
            level: level_name,
            message,
        });
    }

    /// Current metric values by name (counters and gauges).
    pub fn metric_values(&self) -> BTreeMap<String, u64> {
        lock(&self.metrics)
            .iter()
            .map(|(k, m)| (k.clone(), m.value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_rules_are_envoys() {
        let mut d = SharedData::default();
        // Missing key: CAS not checked.
        assert_eq!(d.set(b"k", b"a", 77), status::OK);
        let (v, cas) = d.get(b"k").expect("stored");
        assert_eq!((v.as_slice(), cas), (&b"a"[..], 1));
        assert_eq!(d.set(b"k", b"b", 99), status::CAS_MISMATCH);
        assert_eq!(d.set(b"k", b"b", cas), status::OK);
        assert_eq!(d.get(b"k").map(|e| e.1), Some(2));
        // Stale CAS fails, cas 0 overwrites.
        assert_eq!(d.set(b"k", b"c", cas), status::CAS_MISMATCH);
        assert_eq!(d.set(b"k", b"c", 0), status::OK);
        // Empty value: stored, key stays.
        assert_eq!(d.set(b"k", b"", 0), status::OK);
        assert_eq!(d.get(b"k").map(|e| e.0.len()), Some(0));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn rng_is_deterministic() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let (mut x, mut y) = ([0u8; 20], [0u8; 20]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_ne!(x, [0u8; 20]);
    }
}
