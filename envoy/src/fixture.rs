//! One fixture (an Envoy and its backend) shared by the tests of one test file.
//!
//! libtest runs the tests of a file on several threads and offers no per-file teardown, and a
//! `static` is never dropped. [`Shared`] starts the fixture on first use, hands out read guards
//! (tests run in parallel), and stops it from an `atexit` handler: the test binary's `main`
//! returns (or calls `exit`) after the last test, which runs the handler, which drops the
//! fixture, which stops Envoy by its PID and the backend's threads. If a test using the fixture
//! panicked, the fixture's run folder is kept ([`Fixture::keep_artifacts`]).
//!
//! The fixture is started on its own thread, which then waits until the process exits: Envoy
//! asks the kernel for SIGTERM when the *thread* that started it ends (checked on Envoy 1.40:
//! started from a test thread, it quits as soon as that test returns), so it must not be
//! started from a test's thread.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, OnceLock, RwLock, RwLockReadGuard};

use crate::{Error, Result};

/// What a shared fixture must offer.
pub trait Fixture: Send + Sync + 'static {
    /// Keep logs and files for a human (a test using the fixture failed).
    fn keep_artifacts(&self) {}
}

type Cleanup = Box<dyn FnOnce() + Send>;

static CLEANUPS: Mutex<Vec<Cleanup>> = Mutex::new(Vec::new());
static REGISTER: Once = Once::new();

extern "C" {
    fn atexit(cb: extern "C" fn()) -> std::os::raw::c_int;
}

extern "C" fn run_cleanups() {
    let cleanups: Vec<Cleanup> = match CLEANUPS.lock() {
        Ok(mut c) => c.drain(..).collect(),
        Err(poisoned) => poisoned.into_inner().drain(..).collect(),
    };
    for cleanup in cleanups {
        // A panic must not cross the C boundary.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cleanup));
    }
}

/// Runs `cleanup` when the process exits normally (after `main` returns or on `exit`).
pub fn at_exit(cleanup: impl FnOnce() + Send + 'static) {
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn` without arguments, as atexit(3) requires;
        // the handler catches panics so none unwinds into libc.
        #[allow(unsafe_code)]
        unsafe {
            atexit(run_cleanups);
        }
    });
    match CLEANUPS.lock() {
        Ok(mut c) => c.push(Box::new(cleanup)),
        Err(poisoned) => poisoned.into_inner().push(Box::new(cleanup)),
    }
}

/// A fixture started on first use and stopped at process exit. Declare it as a `static`.
pub struct Shared<T: Fixture> {
    cell: OnceLock<std::result::Result<RwLock<Option<T>>, String>>,
    failed: AtomicBool,
}

impl<T: Fixture> Default for Shared<T> {
    fn default() -> Self {
        Shared::new()
    }
}

impl<T: Fixture> Shared<T> {
    pub const fn new() -> Self {
        Shared {
            cell: OnceLock::new(),
            failed: AtomicBool::new(false),
        }
    }

    /// The fixture, started by `init` on first use. If `init` failed, every caller gets its
    /// error (the fixture is not started again).
    pub fn get(
        &'static self,
        init: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<Handle<T>> {
        let cell = self.cell.get_or_init(|| match start_on_owner_thread(init) {
            Ok(t) => {
                at_exit(move || self.stop());
                Ok(RwLock::new(Some(t)))
            }
            Err(e) => Err(e.0),
        });
        let lock = match cell {
            Ok(lock) => lock,
            Err(msg) => return Err(Error(format!("shared fixture failed to start: {msg}"))),
        };
        let guard = lock.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(Error::new("shared fixture already stopped"));
        }
        Ok(Handle {
            guard,
            failed: &self.failed,
        })
    }

    fn stop(&'static self) {
        if let Some(Ok(lock)) = self.cell.get() {
            let mut w = lock.write().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = w.take() {
                if self.failed.load(Ordering::SeqCst) {
                    t.keep_artifacts();
                }
                drop(t);
            }
        }
    }
}

/// Runs `init` on a new thread that then stays parked for the rest of the process.
fn start_on_owner_thread<T: Send + 'static>(
    init: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fixture-owner".to_string())
        .spawn(move || {
            let _ = tx.send(init());
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| Error(format!("cannot start the fixture thread: {e}")))?;
    rx.recv()
        .map_err(|_| Error::new("the fixture thread ended without a result"))?
}

/// A test's hold on a shared fixture; notes a panic of the test when dropped.
pub struct Handle<T: Fixture> {
    guard: RwLockReadGuard<'static, Option<T>>,
    failed: &'static AtomicBool,
}

impl<T: Fixture> Deref for Handle<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self.guard.as_ref() {
            Some(t) => t,
            None => unreachable!("checked in Shared::get"),
        }
    }
}

impl<T: Fixture> Drop for Handle<T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.failed.store(true, Ordering::SeqCst);
        }
    }
}
