//! Guest memory access for host functions, with proxy-wasm-cpp-host's rules: an out-of-range
//! pointer is `InvalidMemoryAccess`; data handed to the module is allocated with its
//! `proxy_on_memory_allocate` (or `malloc`); an empty value is handed over as pointer 0, size 0
//! without allocating (`copyToPointerSize`).

use wasmtime::Caller;

use crate::abi::status;
use crate::vm::HostState;

/// Reads `len` bytes at `ptr`.
pub fn read(c: &Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>, i32> {
    let mem = c.data().memory.ok_or(status::INVALID_MEMORY_ACCESS)?;
    let data = mem.data(c);
    let p = ptr as u32 as usize;
    let end = p
        .checked_add(len as u32 as usize)
        .ok_or(status::INVALID_MEMORY_ACCESS)?;
    data.get(p..end)
        .map(<[u8]>::to_vec)
        .ok_or(status::INVALID_MEMORY_ACCESS)
}

/// Writes bytes at `ptr`.
pub fn write(c: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> Result<(), i32> {
    let mem = c.data().memory.ok_or(status::INVALID_MEMORY_ACCESS)?;
    let data = mem.data_mut(&mut *c);
    let p = ptr as u32 as usize;
    let end = p
        .checked_add(bytes.len())
        .ok_or(status::INVALID_MEMORY_ACCESS)?;
    data.get_mut(p..end)
        .ok_or(status::INVALID_MEMORY_ACCESS)?
        .copy_from_slice(bytes);
    // Only a write that happened is recorded for a replay.
    if let Some(r) = c.data_mut().replay.as_mut() {
        r.wrote(ptr as u32, bytes);
    }
    Ok(())
}

/// Writes a little-endian u32.
pub fn write_u32(c: &mut Caller<'_, HostState>, ptr: i32, v: u32) -> Result<(), i32> {
    write(c, ptr, &v.to_le_bytes())
}

/// Writes a little-endian u64.
pub fn write_u64(c: &mut Caller<'_, HostState>, ptr: i32, v: u64) -> Result<(), i32> {
    write(c, ptr, &v.to_le_bytes())
}

/// Hands `data` to the module: allocates, copies, stores pointer and size. Returns the ABI
/// status; a trap inside the allocator propagates as an error.
pub fn copy_out(
    c: &mut Caller<'_, HostState>,
    data: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> wasmtime::Result<i32> {
    let mut ptr = 0i32;
    if !data.is_empty() {
        let Some(alloc) = c.data().alloc.clone() else {
            return Ok(status::INVALID_MEMORY_ACCESS);
        };
        ptr = alloc.call(&mut *c, data.len() as i32)?;
        if let Some(r) = c.data_mut().replay.as_mut() {
            r.allocated(ptr as u32, data.len() as u32);
        }
        if ptr == 0 || write(c, ptr, data).is_err() {
            return Ok(status::INVALID_MEMORY_ACCESS);
        }
    }
    if write_u32(c, ptr_ptr, ptr as u32).is_err()
        || write_u32(c, size_ptr, data.len() as u32).is_err()
    {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}
