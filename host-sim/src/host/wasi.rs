//! The WASI preview1 subset Envoy provides to proxy-wasm modules (proxy-wasm-cpp-host
//! `src/exports.cc`): stdout/stderr go to the log (info/error, one trailing newline removed),
//! no files, no arguments, clocks from the virtual clock, randomness from the seeded source.

use wasmtime::{Caller, Linker};

use super::mem::{read, write, write_u32, write_u64};
use crate::abi::errno;
use crate::shared::lock;
use crate::vm::HostState;

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;

fn fault<T>(r: Result<T, i32>) -> Result<T, i32> {
    r.map_err(|_| errno::FAULT)
}

macro_rules! tri {
    ($e:expr) => {
        match fault($e) {
            Ok(v) => v,
            Err(e) => return Ok(e),
        }
    };
}

/// Registers the WASI functions under `module`.
pub fn add(
    l: &mut Linker<HostState>,
    module: &'static str,
    p: &mut Vec<(&'static str, &'static str)>,
) -> wasmtime::Result<()> {
    // Counted like the `env` functions (see `proxy.rs`).
    macro_rules! reg {
        ($($rest:tt)*) => {
            super::register!(l, p, module, $($rest)*)
        };
    }
    reg!("fd_write", |mut c: C<'_>,
                      fd: i32,
                      iovs: i32,
                      n: i32,
                      nwritten: i32|
     -> R {
        let level = match fd {
            1 => 2,
            2 => 4,
            _ => return Ok(errno::BADF),
        };
        let mut out = Vec::new();
        for i in 0..n {
            let iov = tri!(read(&c, iovs.wrapping_add(i * 8), 8));
            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            if len != 0 {
                out.extend(tri!(read(&c, ptr, len)));
            }
        }
        let written = out.len();
        if written > 0 {
            if out.last() == Some(&b'\n') {
                out.pop();
            }
            c.data()
                .log(level, String::from_utf8_lossy(&out).into_owned());
        }
        tri!(write_u32(&mut c, nwritten, written as u32));
        Ok(errno::SUCCESS)
    });
    reg!("fd_read", |_c: C<'_>,
                     _fd: i32,
                     _iovs: i32,
                     _n: i32,
                     _nread: i32|
     -> R { Ok(errno::NOSYS) });
    reg!("fd_seek", |_c: C<'_>,
                     _fd: i32,
                     _off: i64,
                     _whence: i32,
                     _ret: i32|
     -> R { Ok(errno::SUCCESS) });
    reg!("fd_close", |_c: C<'_>, _fd: i32| -> R {
        Ok(errno::SUCCESS)
    });
    reg!("fd_fdstat_get", |mut c: C<'_>, fd: i32, ret: i32| -> R {
        if fd != 1 && fd != 2 {
            return Ok(errno::BADF);
        }
        let mut stat = [0u8; 24];
        stat[8..16].copy_from_slice(&64u64.to_le_bytes()); // fs_rights_base = FD_WRITE
        tri!(write(&mut c, ret, &stat));
        Ok(errno::SUCCESS)
    });
    reg!("fd_prestat_get", |_c: C<'_>, _fd: i32, _ret: i32| -> R {
        Ok(errno::BADF)
    });
    reg!("fd_prestat_dir_name", |_c: C<'_>,
                                 _fd: i32,
                                 _p: i32,
                                 _l: i32|
     -> R { Ok(errno::NOSYS) });
    reg!("environ_sizes_get", |mut c: C<'_>,
                               count: i32,
                               size: i32|
     -> R {
        let env = c.data().env.clone();
        let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        tri!(write_u32(&mut c, count, env.len() as u32));
        tri!(write_u32(&mut c, size, bytes as u32));
        Ok(errno::SUCCESS)
    });
    reg!("environ_get", |mut c: C<'_>, array: i32, buf: i32| -> R {
        let (mut array, mut buf) = (array, buf);
        let env = c.data().env.clone();
        for (k, v) in env {
            tri!(write_u32(&mut c, array, buf as u32));
            let entry = format!("{k}={v}\0");
            tri!(write(&mut c, buf, entry.as_bytes()));
            buf += entry.len() as i32;
            array += 4;
        }
        Ok(errno::SUCCESS)
    });
    reg!("args_sizes_get", |mut c: C<'_>,
                            argc: i32,
                            size: i32|
     -> R {
        tri!(write_u32(&mut c, argc, 0));
        tri!(write_u32(&mut c, size, 0));
        Ok(errno::SUCCESS)
    });
    reg!("args_get", |_c: C<'_>, _argv: i32, _buf: i32| -> R {
        Ok(errno::SUCCESS)
    });
    reg!("clock_time_get", |mut c: C<'_>,
                            id: i32,
                            _precision: i64,
                            ret: i32|
     -> R {
        let now = c.data().shared.now();
        let t = match id {
            0 => now.realtime_ns,
            1 => now.monotonic_ns,
            _ => return Ok(errno::NOTSUP),
        };
        tri!(write_u64(&mut c, ret, t));
        Ok(errno::SUCCESS)
    });
    reg!("clock_res_get", |mut c: C<'_>, id: i32, ret: i32| -> R {
        if id != 0 && id != 1 {
            return Ok(errno::NOTSUP);
        }
        tri!(write_u64(&mut c, ret, 1));
        Ok(errno::SUCCESS)
    });
    reg!("random_get", |mut c: C<'_>, buf: i32, len: i32| -> R {
        let mut bytes = vec![0u8; len as u32 as usize];
        lock(&c.data().shared.rng).fill(&mut bytes);
        tri!(write(&mut c, buf, &bytes));
        Ok(errno::SUCCESS)
    });
    reg!("proc_exit", |_c: C<'_>,
                       code: i32|
     -> wasmtime::Result<()> {
        Err(wasmtime::Error::msg(format!(
            "the module called WASI proc_exit({code}); Envoy treats this as a failed VM"
        )))
    });
    reg!("poll_oneoff", |_c: C<'_>,
                         _in: i32,
                         _out: i32,
                         _n: i32,
                         _ret: i32|
     -> R { Ok(errno::NOSYS) });
    reg!("sched_yield", |_c: C<'_>| -> R { Ok(errno::SUCCESS) });
    Ok(())
}
