//! A minimal HTTP/2 client over cleartext TCP (h2c with prior knowledge, RFC 9113 §3.3) for the
//! hostile-traffic tests: std only, one reader thread per connection.
//!
//! It does what the tests need and no more: many streams on one connection, request headers of
//! any size (HEADERS + CONTINUATION), bodies sent in pieces under the peer's flow control,
//! trailers, RST_STREAM mid-body, and responses read back as status + body (or the reset code).
//!
//! HPACK (RFC 7541): requests are encoded as literals without indexing, never Huffman. The
//! client advertises a header table size of 0, so the server's encoder indexes nothing and each
//! response's first field, `:status`, is either a static-table index (200, 204, 206, 304, 400,
//! 404, 500) or a literal whose value is plain or Huffman-coded digits (RFC 7541 Appendix B).
//! Only `:status` is decoded; the other response fields are skipped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{bail, Error, Result};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// RST_STREAM error code CANCEL.
pub const CANCEL: u32 = 0x8;
/// What the client grants the server: large windows, so responses never wait on it.
const OUR_WINDOW: u32 = 1 << 30;

/// How one stream ended, as the client saw it.
#[derive(Clone, Debug, Default)]
pub struct H2Response {
    /// The final `:status` (0 when the stream was reset before response headers).
    pub status: u16,
    pub body: Vec<u8>,
    /// The server's RST_STREAM error code, if it reset the stream.
    pub reset: Option<u32>,
}

#[derive(Default)]
struct StreamState {
    status: u16,
    body: Vec<u8>,
    reset: Option<u32>,
    ended: bool,
    window: i64,
}

struct State {
    conn_window: i64,
    initial_window: i64,
    max_frame: usize,
    settings_seen: bool,
    streams: HashMap<u32, StreamState>,
    next_id: u32,
    /// Why the connection is gone (read error, EOF, GOAWAY), once it is.
    closed: Option<String>,
    /// Header block being received: (stream, flags of the HEADERS frame, fragment).
    partial: Option<(u32, u8, Vec<u8>)>,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    writer: Mutex<TcpStream>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_frames(&self, frames: &[u8]) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(frames)
            .map_err(|e| Error(format!("h2 write failed: {e}")))
    }
}

/// One HTTP/2 connection.
pub struct H2Conn {
    shared: Arc<Shared>,
    stream: TcpStream,
    reader: Option<JoinHandle<()>>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// HPACK: a literal field without indexing, new name, neither string Huffman-coded.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.to_ascii_lowercase().as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

fn read_int(block: &[u8], pos: &mut usize, prefix_bits: u32) -> Option<usize> {
    let max = (1usize << prefix_bits) - 1;
    let mut v = (*block.get(*pos)? as usize) & max;
    *pos += 1;
    if v < max {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos)?;
        *pos += 1;
        v += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 || shift > 28 {
            return Some(v);
        }
    }
}

/// Huffman-coded digits (RFC 7541 Appendix B: '0'-'2' are 5-bit codes 0-2, '3'-'9' 6-bit
/// codes 0x19-0x1f); None for anything else.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let mut out = String::new();
    let total = bytes.len() * 8;
    let bit = |i: usize| (bytes[i / 8] >> (7 - i % 8)) & 1;
    let mut i = 0;
    while i + 5 <= total {
        let code5 = (0..5).fold(0u8, |a, k| a << 1 | bit(i + k));
        if code5 <= 2 {
            out.push((b'0' + code5) as char);
            i += 5;
            continue;
        }
        if i + 6 <= total {
            let code6 = code5 << 1 | bit(i + 5);
            if (0x19..=0x1f).contains(&code6) {
                out.push((b'3' + code6 - 0x19) as char);
                i += 6;
                continue;
            }
        }
        break;
    }
    // What is left must be EOS padding: fewer than 8 one bits.
    (total - i < 8 && (i..total).all(|k| bit(k) == 1)).then_some(out)
}

/// The `:status` of a response header block (HPACK with an empty dynamic table).
fn decode_status(block: &[u8]) -> Option<u16> {
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let mut pos = 0;
    while pos < block.len() {
        let b = block[pos];
        let name_index = if b & 0x80 != 0 {
            let idx = read_int(block, &mut pos, 7)?;
            return STATIC.get(idx.checked_sub(8)?).copied();
        } else if b & 0xc0 == 0x40 {
            read_int(block, &mut pos, 6)?
        } else if b & 0xe0 == 0x20 {
            read_int(block, &mut pos, 5)?; // dynamic table size update
            continue;
        } else {
            read_int(block, &mut pos, 4)?
        };
        if !(8..=14).contains(&name_index) {
            return None; // `:status` comes first in a response
        }
        let huffman = block.get(pos)? & 0x80 != 0;
        let len = read_int(block, &mut pos, 7)?;
        let raw = block.get(pos..pos + len)?;
        let text = if huffman {
            huffman_digits(raw)?
        } else {
            String::from_utf8(raw.to_vec()).ok()?
        };
        return text.parse().ok();
    }
    None
}

impl H2Conn {
    /// Connects, sends the preface and settings (header table 0, no push, 1 GiB windows) and
    /// waits (bounded) for the server's settings.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<H2Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Error(format!("h2 connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        stream.set_write_timeout(Some(timeout))?;
        let mut settings = Vec::new();
        for (id, v) in [(0x1u16, 0u32), (0x2, 0), (0x4, OUR_WINDOW)] {
            settings.extend_from_slice(&id.to_be_bytes());
            settings.extend_from_slice(&v.to_be_bytes());
        }
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &settings));
        hello.extend(frame(
            WINDOW_UPDATE,
            0,
            0,
            &(OUR_WINDOW - 65_535).to_be_bytes(),
        ));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                conn_window: 65_535,
                initial_window: 65_535,
                max_frame: 16_384,
                settings_seen: false,
                streams: HashMap::new(),
                next_id: 1,
                closed: None,
                partial: None,
            }),
            cv: Condvar::new(),
            writer: Mutex::new(stream.try_clone()?),
        });
        shared.write_frames(&hello)?;
        let reader = {
            let shared = Arc::clone(&shared);
            let rd = stream.try_clone()?;
            std::thread::Builder::new()
                .name("h2-reader".into())
                .spawn(move || read_loop(&shared, rd))
                .map_err(|e| Error(format!("cannot start the h2 reader: {e}")))?
        };
        let conn = H2Conn {
            shared,
            stream,
            reader: Some(reader),
        };
        conn.wait_until(timeout, |s| s.settings_seen, "the server's SETTINGS")?;
        Ok(conn)
    }

    fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&State) -> bool,
        what: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if pred(&st) {
                return Ok(());
            }
            if let Some(why) = &st.closed {
                bail!("h2 connection closed while waiting for {what}: {why}");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("h2: no {what} within {timeout:?}");
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Opens a stream: `:method`, `:scheme` http, `:path`, `:authority` retry-guard.test, then
    /// `headers`. `end_stream` when there is no body.
    pub fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        end_stream: bool,
    ) -> Result<u32> {
        let mut block = Vec::new();
        hpack_literal(&mut block, ":method", method.as_bytes());
        hpack_literal(&mut block, ":scheme", b"http");
        hpack_literal(&mut block, ":path", path.as_bytes());
        hpack_literal(&mut block, ":authority", b"retry-guard.test");
        for (k, v) in headers {
            hpack_literal(&mut block, k, v.as_bytes());
        }
        let (id, max_frame) = {
            let mut st = self.shared.lock();
            if let Some(why) = &st.closed {
                bail!("h2 connection closed: {why}");
            }
            let id = st.next_id;
            st.next_id += 2;
            let window = st.initial_window;
            st.streams.insert(
                id,
                StreamState {
                    window,
                    ..StreamState::default()
                },
            );
            (id, st.max_frame)
        };
        let flags = if end_stream { END_STREAM } else { 0 };
        self.write_header_block(id, flags, &block, max_frame)?;
        Ok(id)
    }

    fn write_header_block(&self, id: u32, flags: u8, block: &[u8], max_frame: usize) -> Result<()> {
        let mut frames = Vec::new();
        let mut pieces = block.chunks(max_frame).peekable();
        let mut first = true;
        if block.is_empty() {
            frames.extend(frame(HEADERS, flags | END_HEADERS, id, &[]));
        }
        while let Some(piece) = pieces.next() {
            let last = pieces.peek().is_none();
            let eh = if last { END_HEADERS } else { 0 };
            if first {
                frames.extend(frame(HEADERS, flags | eh, id, piece));
                first = false;
            } else {
                frames.extend(frame(CONTINUATION, eh, id, piece));
            }
        }
        self.shared.write_frames(&frames)
    }

    /// Sends body bytes on stream `id`, in frames the peer's flow control allows (waiting for
    /// window, bounded by `timeout`); `end_stream` on the last one.
    pub fn data(&self, id: u32, bytes: &[u8], end_stream: bool, timeout: Duration) -> Result<()> {
        let mut rest = bytes;
        loop {
            if rest.is_empty() {
                if end_stream {
                    self.shared
                        .write_frames(&frame(DATA, END_STREAM, id, &[]))?;
                }
                return Ok(());
            }
            self.wait_until(
                timeout,
                |s| {
                    s.conn_window > 0
                        && s.streams
                            .get(&id)
                            .is_none_or(|st| st.window > 0 || st.ended)
                },
                "flow-control window",
            )?;
            let n = {
                let mut st = self.shared.lock();
                let conn_window = st.conn_window;
                let max_frame = st.max_frame;
                let Some(s) = st.streams.get_mut(&id) else {
                    bail!("h2: unknown stream {id}");
                };
                if s.ended {
                    return Ok(()); // the server answered already (e.g. 413); stop sending
                }
                let n = rest
                    .len()
                    .min(max_frame)
                    .min(conn_window as usize)
                    .min(s.window as usize);
                s.window -= n as i64;
                st.conn_window -= n as i64;
                n
            };
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            let flags = if rest.is_empty() && end_stream {
                END_STREAM
            } else {
                0
            };
            self.shared.write_frames(&frame(DATA, flags, id, piece))?;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    /// Ends stream `id` with trailers (a HEADERS frame with END_STREAM).
    pub fn trailers(&self, id: u32, trailers: &[(&str, &str)]) -> Result<()> {
        let mut block = Vec::new();
        for (k, v) in trailers {
            hpack_literal(&mut block, k, v.as_bytes());
        }
        let max_frame = self.shared.lock().max_frame;
        self.write_header_block(id, END_STREAM, &block, max_frame)
    }

    /// Cancels stream `id` (RST_STREAM CANCEL): the client gave up mid-request.
    pub fn reset(&self, id: u32) -> Result<()> {
        self.shared
            .write_frames(&frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()))
    }

    /// Waits (bounded) until stream `id` has ended and returns what the server sent.
    pub fn wait(&self, id: u32, timeout: Duration) -> Result<H2Response> {
        self.wait_until(
            timeout,
            |s| s.streams.get(&id).is_none_or(|st| st.ended),
            &format!("end of stream {id}"),
        )?;
        let mut st = self.shared.lock();
        let s = st.streams.remove(&id).unwrap_or_default();
        Ok(H2Response {
            status: s.status,
            body: s.body,
            reset: s.reset,
        })
    }

    /// One whole request: headers, body (if any) and the response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<H2Response> {
        let id = self.open(method, path, headers, body.is_empty())?;
        if !body.is_empty() {
            self.data(id, body, true, timeout)?;
        }
        self.wait(id, timeout)
    }

    /// Why the connection is closed (GOAWAY, EOF, error), if it is.
    pub fn closed(&self) -> Option<String> {
        self.shared.lock().closed.clone()
    }
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn read_loop(shared: &Shared, mut rd: TcpStream) {
    let why = loop {
        let mut head = [0u8; 9];
        if let Err(e) = rd.read_exact(&mut head) {
            break format!("read: {e}");
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if let Err(e) = rd.read_exact(&mut payload) {
            break format!("read: {e}");
        }
        match on_frame(shared, kind, flags, id, payload) {
            Ok(()) => {}
            Err(e) => break e.0,
        }
    };
    let mut st = shared.lock();
    st.closed.get_or_insert(why);
    for s in st.streams.values_mut() {
        s.ended = true;
    }
    drop(st);
    shared.cv.notify_all();
}

fn strip_padding(flags: u8, payload: &[u8]) -> &[u8] {
    if flags & PADDED != 0 && !payload.is_empty() {
        let pad = payload[0] as usize;
        payload
            .get(1..payload.len().saturating_sub(pad))
            .unwrap_or(&[])
    } else {
        payload
    }
}

fn on_frame(shared: &Shared, kind: u8, flags: u8, id: u32, payload: Vec<u8>) -> Result<()> {
    let mut reply = Vec::new();
    {
        let mut st = shared.lock();
        match kind {
            DATA => {
                let body = strip_padding(flags, &payload);
                if let Some(s) = st.streams.get_mut(&id) {
                    s.body.extend_from_slice(body);
                    if flags & END_STREAM != 0 {
                        s.ended = true;
                    }
                }
                if !payload.is_empty() {
                    let n = (payload.len() as u32).to_be_bytes();
                    reply.extend(frame(WINDOW_UPDATE, 0, 0, &n));
                }
            }
            HEADERS | CONTINUATION => {
                let fragment = if kind == HEADERS {
                    let p = strip_padding(flags, &payload);
                    if flags & PRIORITY != 0 {
                        p.get(5..).unwrap_or(&[]).to_vec()
                    } else {
                        p.to_vec()
                    }
                } else {
                    payload
                };
                let (sid, hflags, mut block) = match (kind, st.partial.take()) {
                    (HEADERS, _) => (id, flags, fragment),
                    (_, Some((sid, f, mut b))) => {
                        b.extend_from_slice(&fragment);
                        (sid, f, b)
                    }
                    (_, None) => bail!("h2: CONTINUATION without HEADERS"),
                };
                if flags & END_HEADERS == 0 {
                    st.partial = Some((sid, hflags, std::mem::take(&mut block)));
                } else if let Some(s) = st.streams.get_mut(&sid) {
                    if s.status == 0 || (100..200).contains(&s.status) {
                        s.status = decode_status(&block).unwrap_or(0);
                    }
                    if hflags & END_STREAM != 0 {
                        s.ended = true;
                    }
                }
            }
            RST_STREAM => {
                if let Some(s) = st.streams.get_mut(&id) {
                    let code = payload
                        .get(..4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    s.reset = code;
                    s.ended = true;
                }
            }
            SETTINGS if flags & ACK == 0 => {
                for s in payload.chunks_exact(6) {
                    let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    match u16::from_be_bytes([s[0], s[1]]) {
                        0x4 => {
                            let delta = v as i64 - st.initial_window;
                            st.initial_window = v as i64;
                            for s in st.streams.values_mut() {
                                s.window += delta;
                            }
                        }
                        0x5 => st.max_frame = v as usize,
                        _ => {}
                    }
                }
                st.settings_seen = true;
                reply.extend(frame(SETTINGS, ACK, 0, &[]));
            }
            PING if flags & ACK == 0 => reply.extend(frame(PING, ACK, 0, &payload)),
            GOAWAY => {
                let last = payload.get(..4).map_or(0, |c| {
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff
                });
                let code = payload
                    .get(4..8)
                    .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                for (sid, s) in st.streams.iter_mut() {
                    // An error code kills every stream (e.g. COMPRESSION_ERROR for a header
                    // list over the server's limit); NO_ERROR only those it did not take.
                    if *sid > last || code != 0 {
                        s.ended = true;
                        s.reset.get_or_insert(code);
                    }
                }
                st.closed
                    .get_or_insert(format!("GOAWAY last stream {last} code {code}"));
            }
            WINDOW_UPDATE => {
                let inc = payload.get(..4).map_or(0, |c| {
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff
                }) as i64;
                if id == 0 {
                    st.conn_window += inc;
                } else if let Some(s) = st.streams.get_mut(&id) {
                    s.window += inc;
                }
            }
            _ => {}
        }
    }
    shared.cv.notify_all();
    if !reply.is_empty() {
        shared.write_frames(&reply)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_static_index_and_literals() {
        assert_eq!(decode_status(&[0x88]), Some(200));
        assert_eq!(decode_status(&[0x20, 0x8d]), Some(404));
        // literal without indexing, name index 8, plain "428"
        assert_eq!(decode_status(&[0x08, 0x03, b'4', b'2', b'8']), Some(428));
        // literal with incremental indexing, Huffman "413": 011010 00001 011001, EOS-padded
        let bits = "01101000001011001";
        let mut s = bits.to_string();
        while !s.len().is_multiple_of(8) {
            s.push('1');
        }
        let bytes: Vec<u8> = (0..s.len() / 8)
            .map(|i| u8::from_str_radix(&s[i * 8..i * 8 + 8], 2).unwrap_or(0))
            .collect();
        let mut block = vec![0x48, 0x80 | bytes.len() as u8];
        block.extend_from_slice(&bytes);
        assert_eq!(decode_status(&block), Some(413));
    }

    #[test]
    fn long_header_lengths_use_continuation_bytes() {
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 7, 1337);
        let mut pos = 0;
        assert_eq!(read_int(&out, &mut pos, 7), Some(1337));
        assert_eq!(pos, out.len());
    }
}
