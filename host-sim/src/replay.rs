//! Host-call recordings for replaying one VM's requests on another engine (`just bench-v8`
//! replays them on V8 to time the guest code without Envoy around it).
//!
//! While a VM records ([`crate::Runtime::recording`]), every callback the host makes is kept
//! with its arguments, and inside it every host call the guest makes: the import's name, the
//! status it returned, the buffers the host allocated in the guest (by size) and the bytes it
//! wrote. A write is kept relative to what the guest can reproduce: an argument of the call
//! (an out-pointer, plus an offset) or a buffer allocated during the call. A 4-byte value
//! equal to such a buffer's address (the pointer the host hands over) is kept relative too.
//! The replayer then answers each host call with the recorded status and writes, placed at
//! the addresses the replayed guest passes, so another build of the same filter (different
//! addresses, same behaviour) replays the same request.

use serde::Serialize;

/// One callback the host made into the guest.
#[derive(Clone, Debug, Serialize)]
pub struct Callback {
    /// The export called (`proxy_on_request_headers`, `_initialize`, …).
    pub export: String,
    /// Its arguments.
    pub args: Vec<i64>,
    /// The host calls the guest made during it, in order.
    pub calls: Vec<HostCall>,
}

/// One host call of the guest, as the host answered it.
#[derive(Clone, Debug, Serialize)]
pub struct HostCall {
    /// The import (`proxy_get_property`, `random_get`, …).
    pub import: String,
    /// The status it returned (`None` for an import without a result).
    pub ret: Option<i64>,
    /// The sizes of the buffers the host allocated in the guest (its allocator), in order.
    pub allocs: Vec<u32>,
    /// The bytes the host wrote into guest memory, in order.
    pub writes: Vec<Write>,
}

/// Where a write went, relative to what the replayed guest reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    /// The address the guest passed as argument `i` of the call.
    Arg(usize),
    /// The buffer the host allocated `k`-th during the call.
    Alloc(usize),
}

/// One write of the host into guest memory.
#[derive(Clone, Debug, Serialize)]
pub struct Write {
    /// Relative to what.
    pub base: Base,
    /// Offset from the base.
    pub offset: u32,
    /// The bytes, lower-case hex.
    pub hex: String,
    /// The 4 bytes written are the address of an allocated buffer `k` (plus an offset): the
    /// replayer writes that buffer's address there instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer_to: Option<(usize, u32)>,
}

/// A VM's recording in progress.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Callbacks so far.
    pub callbacks: Vec<Callback>,
    /// Arguments of the host call being answered.
    args: Vec<i64>,
    /// Buffers allocated during the host call being answered: (address, size).
    allocated: Vec<(u32, u32)>,
    /// Writes no base explains (a host function writing somewhere the guest did not name):
    /// such a recording cannot be replayed.
    pub unplaced: Vec<String>,
}

/// The most an argument-relative write may lie past the argument's address (a WASI array).
const ARG_REACH: u32 = 1 << 16;

impl Recorder {
    /// The host enters callback `export`.
    pub fn callback(&mut self, export: &str, args: &[i64]) {
        self.callbacks.push(Callback {
            export: export.to_string(),
            args: args.to_vec(),
            calls: Vec::new(),
        });
    }

    /// The guest calls import `import`.
    pub fn call(&mut self, import: &str, args: &[i64]) {
        self.args = args.to_vec();
        self.allocated.clear();
        let call = HostCall {
            import: import.to_string(),
            ret: None,
            allocs: Vec::new(),
            writes: Vec::new(),
        };
        match self.callbacks.last_mut() {
            Some(cb) => cb.calls.push(call),
            None => self
                .unplaced
                .push(format!("{import} called outside any callback")),
        }
    }

    fn current(&mut self) -> Option<&mut HostCall> {
        self.callbacks.last_mut()?.calls.last_mut()
    }

    /// The import returned `ret`.
    pub fn returned(&mut self, ret: Option<i64>) {
        if let Some(c) = self.current() {
            c.ret = ret;
        }
    }

    /// The host allocated `size` bytes at `ptr` in the guest.
    pub fn allocated(&mut self, ptr: u32, size: u32) {
        self.allocated.push((ptr, size));
        if let Some(c) = self.current() {
            c.allocs.push(size);
        }
    }

    /// The address `ptr` relative to a buffer allocated during this call, if inside one.
    fn in_alloc(&self, ptr: u32) -> Option<(usize, u32)> {
        self.allocated
            .iter()
            .position(|&(p, n)| ptr >= p && ptr - p < n.max(1))
            .and_then(|k| Some((k, ptr - self.allocated.get(k)?.0)))
    }

    /// The host wrote `bytes` at `ptr`.
    pub fn wrote(&mut self, ptr: u32, bytes: &[u8]) {
        let base = self
            .args
            .iter()
            .position(|&a| a as u32 == ptr)
            .map(|i| (Base::Arg(i), 0))
            .or_else(|| self.in_alloc(ptr).map(|(k, o)| (Base::Alloc(k), o)))
            .or_else(|| {
                // The nearest argument below `ptr`, within reach.
                self.args
                    .iter()
                    .enumerate()
                    .filter(|(_, &a)| (a as u32) <= ptr && ptr - (a as u32) < ARG_REACH)
                    .min_by_key(|(_, &a)| ptr - a as u32)
                    .map(|(i, &a)| (Base::Arg(i), ptr - a as u32))
            });
        let pointer_to = <[u8; 4]>::try_from(bytes)
            .ok()
            .map(u32::from_le_bytes)
            .filter(|&v| v != 0)
            .and_then(|v| self.in_alloc(v));
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let Some((base, offset)) = base else {
            let name = self.current().map(|c| c.import.clone()).unwrap_or_default();
            self.unplaced
                .push(format!("{name} wrote {} bytes at {ptr:#x}", bytes.len()));
            return;
        };
        if let Some(c) = self.current() {
            c.writes.push(Write {
                base,
                offset,
                hex,
                pointer_to,
            });
        }
    }
}

/// A host function's result as a recorded status.
pub trait Status {
    /// The status, if the function has one.
    fn status(&self) -> Option<i64>;
}

impl Status for wasmtime::Result<i32> {
    fn status(&self) -> Option<i64> {
        self.as_ref().ok().map(|&v| i64::from(v))
    }
}

impl Status for wasmtime::Result<()> {
    fn status(&self) -> Option<i64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_placed_relative_to_arguments_and_allocations() {
        let mut r = Recorder::default();
        r.callback("proxy_on_request_headers", &[2, 5, 0]);
        r.call("proxy_get_property", &[0x1000, 12, 0x2000, 0x2004]);
        r.allocated(0x9000, 3);
        r.wrote(0x9000, b"abc");
        r.wrote(0x2000, &0x9001u32.to_le_bytes());
        r.wrote(0x2004, &3u32.to_le_bytes());
        r.returned(Some(0));
        assert!(r.unplaced.is_empty());
        let call = &r.callbacks[0].calls[0];
        assert_eq!(call.allocs, vec![3]);
        assert_eq!(call.writes[0].base, Base::Alloc(0));
        assert_eq!(call.writes[1].base, Base::Arg(2));
        assert_eq!(call.writes[1].pointer_to, Some((0, 1)));
        assert_eq!(call.writes[2].base, Base::Arg(3));
        assert_eq!(call.writes[2].pointer_to, None);
        assert_eq!(call.ret, Some(0));
    }

    #[test]
    fn a_write_nowhere_the_guest_named_is_reported() {
        let mut r = Recorder::default();
        r.callback("proxy_on_log", &[2]);
        r.call("proxy_get_current_time_nanoseconds", &[0x100]);
        r.wrote(0x7000_0000, &[1; 8]);
        assert_eq!(r.unplaced.len(), 1);
    }
}
