//! Scheduling points: every proxy-wasm (and WASI) host call a VM makes can be handed to a
//! scheduler before the host performs it, with what shared state the call touches. The
//! interleaving explorer ([`crate::explore`]) uses this to run each worker's stream on its own
//! thread and let exactly one of them proceed at a time, in an order it chooses.
//!
//! Without a scheduler (the default) nothing changes: the host calls run as they always do.
//!
//! [`Access`] classifies a call by the state it reads or writes beyond its own VM, and
//! [`Access::dependent`] says when two calls of different VMs do not commute — the relation a
//! partial-order reduction needs. The classification is the host's, not the guest's: it
//! follows from what each host function of `host/` touches.

/// What state shared between VMs a host call reads or writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Only the calling VM's own state (its streams, headers, buffers, properties, memory).
    Local,
    /// Reads (`write: false`) or writes one shared-data key (`proxy_get_shared_data`,
    /// `proxy_set_shared_data`, whose CAS check reads the key too).
    SharedData {
        /// The key.
        key: Vec<u8>,
        /// A `set` (a failed CAS included: its result depends on the key's current CAS).
        write: bool,
    },
    /// One metric, by name.
    Metric {
        /// The metric's name.
        name: String,
        /// What the call does to it.
        op: MetricOp,
    },
    /// The shared random source (WASI `random_get`).
    Random,
    /// The shared queues (register, resolve, enqueue, dequeue).
    Queue,
    /// An `http_call` (the clusters' scripted answers and the record of calls are shared).
    HttpCall,
    /// Reads the virtual clock.
    Clock,
    /// Appends a line to the shared log (`proxy_log`, WASI `fd_write`).
    Log,
}

/// What a host call does to a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricOp {
    /// Adds to a counter or gauge (additions commute).
    Add,
    /// Sets a gauge, records a histogram sample, or defines the metric.
    Set,
    /// Reads it (`proxy_get_metric`).
    Read,
}

impl Access {
    /// Whether two calls made by *different* VMs may not be swapped without changing what
    /// either VM observes or the shared state after both:
    ///
    /// - the same shared-data key, one of them a write;
    /// - the same metric, unless both add or both read;
    /// - two draws of the random source (which draw gets which bytes);
    /// - two queue operations, or two `http_call`s.
    ///
    /// Everything else commutes: [`Access::Local`] touches nothing another VM sees; nothing a
    /// VM calls can move the clock, so clock reads commute (the explorer refuses steps that
    /// advance it while streams run); log lines are appended but never read back by a VM, so
    /// two appends commute up to the order of lines in the log, which no check relies on.
    pub fn dependent(&self, other: &Access) -> bool {
        use Access::*;
        match (self, other) {
            (SharedData { key: a, write: wa }, SharedData { key: b, write: wb }) => {
                a == b && (*wa || *wb)
            }
            (Metric { name: a, op: x }, Metric { name: b, op: y }) => {
                a == b
                    && !matches!(
                        (x, y),
                        (MetricOp::Add, MetricOp::Add) | (MetricOp::Read, MetricOp::Read)
                    )
            }
            (Random, Random) | (Queue, Queue) | (HttpCall, HttpCall) => true,
            _ => false,
        }
    }

    /// Whether the call touches state other VMs can observe (everything but
    /// [`Access::Local`], [`Access::Clock`] and [`Access::Log`], which commute with every
    /// call of another VM).
    pub fn is_visible(&self) -> bool {
        !matches!(self, Access::Local | Access::Clock | Access::Log)
    }

    /// The access of a host function whose shared state does not depend on its arguments
    /// (the shared-data and metric functions report theirs with the key or name).
    pub(crate) fn of_function(name: &str) -> Access {
        match name {
            "proxy_log" | "fd_write" => Access::Log,
            "proxy_get_current_time_nanoseconds"
            | "clock_time_get"
            | "proxy_set_tick_period_milliseconds" => Access::Clock,
            "random_get" => Access::Random,
            "proxy_register_shared_queue"
            | "proxy_resolve_shared_queue"
            | "proxy_enqueue_shared_queue"
            | "proxy_dequeue_shared_queue" => Access::Queue,
            "proxy_http_call" => Access::HttpCall,
            _ => Access::Local,
        }
    }

    /// Host functions that report their access themselves, once their arguments are read.
    pub(crate) fn reported_by_function(name: &str) -> bool {
        matches!(
            name,
            "proxy_get_shared_data"
                | "proxy_set_shared_data"
                | "proxy_define_metric"
                | "proxy_increment_metric"
                | "proxy_record_metric"
                | "proxy_get_metric"
        )
    }
}

/// A host call about to run: its import name and what it touches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostCall {
    /// The import name, e.g. `proxy_set_shared_data`.
    pub function: &'static str,
    /// The state it touches beyond the VM.
    pub access: Access,
}

impl std::fmt::Display for HostCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.access {
            Access::SharedData { key, .. } => {
                write!(f, "{}({})", self.function, String::from_utf8_lossy(key))
            }
            Access::Metric { name, .. } => write!(f, "{}({name})", self.function),
            _ => f.write_str(self.function),
        }
    }
}

/// Called before every host call of a VM it is installed in ([`crate::Sim::set_scheduler`]);
/// it may block (another thread's turn) and returns when the call may proceed.
pub type Scheduler = Box<dyn FnMut(&HostCall)>;

/// Hands `call` to the VM's scheduler, if one is installed.
pub(crate) fn at(
    c: &mut wasmtime::Caller<'_, crate::vm::HostState>,
    call: impl FnOnce() -> HostCall,
) {
    if let Some(mut s) = c.data_mut().scheduler.take() {
        s(&call());
        c.data_mut().scheduler = Some(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd(key: &str, write: bool) -> Access {
        Access::SharedData {
            key: key.as_bytes().to_vec(),
            write,
        }
    }

    #[test]
    fn dependence_is_conflicting_access_to_one_object() {
        assert!(sd("a", true).dependent(&sd("a", false)));
        assert!(sd("a", true).dependent(&sd("a", true)));
        assert!(!sd("a", false).dependent(&sd("a", false)));
        assert!(!sd("a", true).dependent(&sd("b", true)));
        let m = |op| Access::Metric {
            name: "x".into(),
            op,
        };
        assert!(!m(MetricOp::Add).dependent(&m(MetricOp::Add)));
        assert!(m(MetricOp::Add).dependent(&m(MetricOp::Read)));
        assert!(m(MetricOp::Set).dependent(&m(MetricOp::Set)));
        assert!(Access::Random.dependent(&Access::Random));
        for a in [Access::Local, Access::Clock, Access::Log] {
            assert!(!a.dependent(&a) && !a.is_visible());
            assert!(!a.dependent(&sd("a", true)));
        }
    }

    #[test]
    fn functions_are_classified_by_what_they_touch() {
        assert_eq!(Access::of_function("random_get"), Access::Random);
        assert_eq!(Access::of_function("proxy_get_property"), Access::Local);
        assert_eq!(Access::of_function("proxy_http_call"), Access::HttpCall);
        assert!(Access::reported_by_function("proxy_set_shared_data"));
        assert!(!Access::reported_by_function("proxy_log"));
    }
}
