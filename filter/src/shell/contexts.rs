//! The contexts of one VM and the dispatch of the callbacks [`crate::abi`] exports: each
//! callback finds its context's state and calls the root ([`super::root`]) or the stream state
//! machine ([`crate::stream::Stream`]) with the ABI-backed host.

use std::cell::RefCell;
use std::rc::Rc;

use crate::abi::{self, Action, BufferType, MapType};
use crate::host::StreamHost as _;
use crate::stream::Stream;

use super::host::AbiHost;
use super::root::{self, Root};

/// A stream that keeps state between callbacks, and the root whose configuration it runs
/// under.
struct StreamContext {
    root: Rc<Root>,
    stream: Stream,
}

/// The contexts of one VM: its root contexts (one per plugin sharing the VM, with the
/// configuration once accepted) and the state of the streams that need one. A stream gets
/// state only when its request headers match a route that tracks it, must see its body, or
/// will write its audit line when the stream ends, so a request no route matches (and a quiet
/// allow on an untracked route) allocates nothing that outlives its callback.
struct Contexts {
    roots: Vec<(u32, Option<Rc<Root>>)>,
    /// The root of each new stream whose root is not the first one (usually there is one
    /// root and this stays empty: no allocation per stream).
    parents: IdMap<u32>,
    streams: IdMap<Rc<RefCell<StreamContext>>>,
}

/// A map from context id to `V`: a vector sorted by id. Envoy numbers contexts in creation
/// order, so an insertion is usually an append, and the few streams a VM holds at once make
/// a removal's move cheap. (A `BTreeMap` here was about 14 KB of the wasm module.)
struct IdMap<V>(Vec<(u32, V)>);

impl<V> IdMap<V> {
    fn find(&self, id: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, |(k, _)| *k)
    }

    fn get(&self, id: u32) -> Option<&V> {
        self.0.get(self.find(id).ok()?).map(|(_, v)| v)
    }

    fn insert(&mut self, id: u32, value: V) {
        match self.find(id) {
            Ok(i) => {
                if let Some(slot) = self.0.get_mut(i) {
                    slot.1 = value;
                }
            }
            Err(i) if i >= self.0.len() => self.0.push((id, value)),
            Err(i) => self.0.insert(i, (id, value)),
        }
    }

    fn remove(&mut self, id: u32) -> Option<V> {
        let i = self.find(id).ok()?;
        (i < self.0.len()).then(|| self.0.remove(i).1)
    }
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = const {
        RefCell::new(Contexts {
            roots: Vec::new(),
            parents: IdMap(Vec::new()),
            streams: IdMap(Vec::new()),
        })
    };
}

/// Runs `f` on the contexts; `None` if they are borrowed already (a host call re-entered the
/// module, which proxy-wasm hosts do not do while a callback holds them).
fn with_contexts<R>(f: impl FnOnce(&mut Contexts) -> R) -> Option<R> {
    CONTEXTS.with(|c| c.try_borrow_mut().ok().map(|mut c| f(&mut c)))
}

impl Contexts {
    /// The accepted configuration of root context `root_id`.
    fn config_of(&self, root_id: u32) -> Option<Rc<Root>> {
        self.roots
            .iter()
            .find(|(id, _)| *id == root_id)
            .and_then(|(_, s)| s.clone())
    }
}

/// Runs a stream callback on the stream's state, with its root's plugin and host; `otherwise`
/// for a stream without state, or one whose state is in use by an outer callback (a
/// re-entrant callback, e.g. response headers of a local reply sent synchronously).
fn on_stream(
    id: u32,
    otherwise: Action,
    f: impl FnOnce(&mut Stream, &Root, &AbiHost<'_>) -> Action,
) -> Action {
    let Some(context) = with_contexts(|c| c.streams.get(id).cloned()).flatten() else {
        return otherwise;
    };
    let Ok(mut context) = context.try_borrow_mut() else {
        return otherwise;
    };
    let StreamContext { root, stream } = &mut *context;
    f(stream, root, &root.host(id))
}

pub(crate) fn on_context_create(id: u32, parent: u32) {
    if parent == 0 {
        with_contexts(|c| {
            if !c.roots.iter().any(|(r, _)| *r == id) {
                c.roots.push((id, None));
            }
        });
        return;
    }
    with_contexts(|c| {
        if c.roots.first().is_none_or(|(first, _)| *first != parent) {
            c.parents.insert(id, parent);
        }
    });
}

pub(crate) fn on_configure(root_id: u32) -> bool {
    let root = root::configure(root_id);
    let accepted = root.is_some();
    with_contexts(|c| match c.roots.iter_mut().find(|(r, _)| *r == root_id) {
        Some((_, s)) => *s = root,
        None => c.roots.push((root_id, root)),
    });
    accepted
}

pub(crate) fn on_tick(root_id: u32) {
    if let Some(root) = with_contexts(|c| c.config_of(root_id)).flatten() {
        root.tick();
    }
}

pub(crate) fn on_request_headers(id: u32, end_of_stream: bool) -> Action {
    // The stream's root: the one recorded at creation, else the first.
    let root = with_contexts(|c| {
        let parent = match c.parents.remove(id) {
            Some(p) => p,
            None => c.roots.first()?.0,
        };
        c.config_of(parent)
    })
    .flatten();
    // Under a root without an accepted configuration every callback continues.
    let Some(root) = root else {
        return Action::Continue;
    };
    #[cfg(feature = "test-trap")]
    test_trap(&root.host(id));
    let mut stream = Stream::new(id);
    let action = stream.on_request_headers(&root.plugin, &root.host(id), end_of_stream);
    // Keep state only if something is left to do (which only a matched route leaves): the
    // stream waits for its body, will record its outcome, was answered locally, or will write
    // its audit line.
    if stream.needs_state() {
        let context = Rc::new(RefCell::new(StreamContext { root, stream }));
        with_contexts(|c| c.streams.insert(id, context));
    }
    action
}

pub(crate) fn on_request_body(id: u32, body_size: usize, end_of_stream: bool) -> Action {
    on_stream(id, Action::Continue, |s, root, host| {
        s.on_request_body(&root.plugin, host, body_size, end_of_stream)
    })
}

pub(crate) fn on_request_trailers(id: u32) -> Action {
    on_stream(id, Action::Continue, |s, root, host| {
        s.on_request_trailers(&root.plugin, host)
    })
}

pub(crate) fn on_response_headers(id: u32) -> Action {
    on_stream(id, Action::Continue, |s, root, host| {
        s.on_response_headers(&root.plugin, host)
    })
}

pub(crate) fn on_log(id: u32) {
    on_stream(id, Action::Continue, |s, root, host| {
        s.on_log(&root.plugin, host);
        Action::Continue
    });
}

/// The answer to an HTTP call of root context `root_id` (all calls to the cluster ledger are
/// the root's): finished by the plugin, or handed to the stream it was for, which is resumed
/// when its decision lets it go on.
pub(crate) fn on_http_call_response(root_id: u32, token: u32, body_size: usize) {
    let Some(root) = with_contexts(|c| c.config_of(root_id)).flatten() else {
        return;
    };
    let status = abi::header(MapType::HttpCallResponseHeaders, ":status").and_then(|s| {
        std::str::from_utf8(&s)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
    });
    let body = abi::buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    let Some(stream_id) = root
        .plugin
        .on_call_answer(&root.host(0), token, status, &body)
    else {
        return;
    };
    let Some(context) = with_contexts(|c| c.streams.get(stream_id).cloned()).flatten() else {
        return;
    };
    let Ok(mut context) = context.try_borrow_mut() else {
        return;
    };
    let StreamContext { root, stream } = &mut *context;
    let host = root.host(stream_id);
    if abi::set_effective_context(stream_id).is_err() {
        return;
    }
    if stream.on_ledger_answer(&root.plugin, &host, status, &body) == Action::Continue {
        host.resume_request();
    }
}

pub(crate) fn on_delete(id: u32) {
    let removed = with_contexts(|c| {
        let stream = c.streams.remove(id);
        if stream.is_none() && c.parents.remove(id).is_none() {
            c.roots.retain(|(r, _)| *r != id);
        }
        stream
    })
    .flatten();
    if let Some(context) = removed {
        if let Ok(mut context) = context.try_borrow_mut() {
            let StreamContext { root, stream } = &mut *context;
            root.plugin.release(id);
            stream.on_delete(&root.plugin, &root.host(id));
        }
    }
}

/// Test builds only (cargo feature `test-trap`, never in the release module: a test checks):
/// a request carrying `x-retry-guard-test-trap` makes the VM trap, so the tests can watch what
/// Envoy's `failure_policy` does with a failed VM.
#[cfg(feature = "test-trap")]
fn test_trap(host: &impl crate::host::StreamHost) {
    if host.request_header("x-retry-guard-test-trap").is_some() {
        core::arch::wasm32::unreachable();
    }
}
