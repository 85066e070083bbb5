//! Raw proxy-wasm calls that report the ABI status instead of panicking (the SDK's hostcalls
//! panic on statuses they do not expect, and the probe wants to see every status).

use std::ptr::null_mut;

extern "C" {
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
}

/// ABI status names (proxy-wasm spec 0.2.1).
pub fn status(s: u32) -> String {
    match s {
        0 => "Ok".into(),
        1 => "NotFound".into(),
        2 => "BadArgument".into(),
        3 => "SerializationFailure".into(),
        4 => "ParseFailure".into(),
        6 => "InvalidMemoryAccess".into(),
        7 => "Empty".into(),
        8 => "CasMismatch".into(),
        10 => "InternalFailure".into(),
        12 => "Unimplemented".into(),
        n => format!("Status{n}"),
    }
}

fn take(ptr: *mut u8, size: usize) -> Vec<u8> {
    if ptr.is_null() || size == 0 {
        Vec::new()
    } else {
        // SAFETY: the host allocated `size` bytes with our allocator and handed them over.
        unsafe { Vec::from_raw_parts(ptr, size, size) }
    }
}

/// `(status, value)`.
pub fn get_header(map: u32, key: &str) -> (String, Option<String>) {
    let (mut p, mut n) = (null_mut(), 0);
    // SAFETY: FFI with valid pointers.
    let s = unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut p, &mut n) };
    let v = (s == 0).then(|| String::from_utf8_lossy(&take(p, n)).into_owned());
    (status(s), v)
}

/// `(status, sorted header names)`.
pub fn header_names(map: u32) -> (String, String) {
    let (mut p, mut n) = (null_mut(), 0);
    // SAFETY: FFI with valid pointers.
    let s = unsafe { proxy_get_header_map_pairs(map, &mut p, &mut n) };
    let bytes = take(p, n);
    let mut names: Vec<String> = crate::decode_pairs(&bytes)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    names.sort();
    (status(s), names.join(","))
}

pub fn replace_header(map: u32, k: &str, v: &str) -> String {
    // SAFETY: FFI with valid pointers.
    status(unsafe { proxy_replace_header_map_value(map, k.as_ptr(), k.len(), v.as_ptr(), v.len()) })
}

pub fn add_header(map: u32, k: &str, v: &str) -> String {
    // SAFETY: FFI with valid pointers.
    status(unsafe { proxy_add_header_map_value(map, k.as_ptr(), k.len(), v.as_ptr(), v.len()) })
}

pub fn remove_header(map: u32, k: &str) -> String {
    // SAFETY: FFI with valid pointers.
    status(unsafe { proxy_remove_header_map_value(map, k.as_ptr(), k.len()) })
}

/// `Err(status)` or the value (`Ok(None)` never: NotFound is an `Err`).
pub fn get_property(path: &[&str]) -> Result<Vec<u8>, String> {
    let joined = path.join("\0");
    let (mut p, mut n) = (null_mut(), 0);
    // SAFETY: FFI with valid pointers.
    let s = unsafe { proxy_get_property(joined.as_ptr(), joined.len(), &mut p, &mut n) };
    if s == 0 {
        Ok(take(p, n))
    } else {
        Err(status(s))
    }
}

pub fn set_property(path: &[&str], value: &[u8]) -> String {
    let joined = path.join("\0");
    // SAFETY: FFI with valid pointers.
    status(unsafe {
        proxy_set_property(joined.as_ptr(), joined.len(), value.as_ptr(), value.len())
    })
}

pub fn get_buffer(t: u32, start: usize, max: usize) -> (String, Vec<u8>) {
    let (mut p, mut n) = (null_mut(), 0);
    // SAFETY: FFI with valid pointers.
    let s = unsafe { proxy_get_buffer_bytes(t, start, max, &mut p, &mut n) };
    (status(s), take(p, n))
}

pub fn set_buffer(t: u32, start: usize, size: usize, v: &[u8]) -> String {
    // SAFETY: FFI with valid pointers.
    status(unsafe { proxy_set_buffer_bytes(t, start, size, v.as_ptr(), v.len()) })
}

pub fn increment_metric(id: u32, by: i64) -> String {
    // SAFETY: FFI.
    status(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, v: u64) -> String {
    // SAFETY: FFI.
    status(unsafe { proxy_record_metric(id, v) })
}

pub fn get_metric(id: u32) -> String {
    let mut v = 0u64;
    // SAFETY: FFI with a valid pointer.
    let s = unsafe { proxy_get_metric(id, &mut v) };
    if s == 0 {
        format!("Ok({v})")
    } else {
        status(s)
    }
}
