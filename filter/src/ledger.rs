//! The ledger: what became of each guarded request within the window.
//!
//! [`Entry`] is one fingerprint's record. [`Ledger`] is the interface the stream state machine
//! ([`crate::stream`]) decides against, through [`crate::engine::decide_with_ledger`]: load a
//! snapshot, decide with the pure core, then commit the new entry conditionally on the
//! snapshot (a compare-and-swap); a conflict means somebody else wrote first, so it loads
//! again and decides again. An asynchronous cluster-wide ledger (etcd through
//! `dispatch_http_call`, a transaction comparing the revision) implements the same
//! load/commit pair with the request paused in between; the policy core does not change.
//!
//! [`SlotLedger`] is the in-process implementation over Envoy shared data. Envoy never frees a
//! shared-data key and does not check CAS for a key that does not exist yet, so the ledger
//! pre-creates a fixed table of set keys ([`SlotLedger::ensure_slots`]) and only ever updates
//! existing keys with CAS. Each set key holds up to [`WAYS`] entries. Memory is bounded by
//! `max_entries` per table.
//!
//! The table cannot be flushed by a caller:
//! - attempt records and opaque-token records live in separate tables ([`Table`]), so a flood
//!   of new tokens cannot push attempts out, nor the reverse;
//! - an entry's set comes from a keyed hash ([`IndexKey`], SipHash-2-4 with a secret the proxy
//!   makes at start and shares between its VMs in shared data), not from the fingerprint a
//!   428 prints, so nobody outside the proxy can aim requests at one set;
//! - a full set evicts its oldest entry only if that entry is no longer needed or belongs to a
//!   route that is not sensitive ([`Entry::sensitive`]); a set full of live entries of
//!   sensitive routes refuses the new one ([`Commit::Full`]), and the route's fail policy
//!   decides the request. Every eviction and every refusal is counted.

use std::fmt;

use crate::policy::Outcome;

/// Entries per set key. Sets fill at random, so one set can be full of live sensitive entries
/// while the table is mostly empty: with four entries per set, refusals began below a tenth of
/// `max_entries`; with eight, above a fifth (`refusals_stay_rare_while_the_table_is_lightly_used`
/// prints where). A set of eight is at most 994 bytes, read and written whole by each tracked
/// decision; at the sizing the README advises it holds about one entry.
pub const WAYS: usize = 8;

/// Prefix of the shared-data keys of the attempt table. `v3`: sets of eight entries (`v2`
/// held four; a VM of an older version in the same process keeps its own keys).
pub const KEY_PREFIX: &str = "retry-guard/v3/a/";

/// Prefix of the shared-data keys of the opaque-token table.
pub const TOKEN_KEY_PREFIX: &str = "retry-guard/v3/t/";

/// Prefix of the shared-data keys of the same-body table.
pub const SAME_BODY_KEY_PREFIX: &str = "retry-guard/v3/b/";

/// The shared-data key that holds the set-index secret ([`IndexKey`]).
pub const INDEX_KEY_KEY: &str = "retry-guard/v2/index-key";

/// One of the in-process ledger's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// Attempt records, one per fingerprint.
    Attempts,
    /// When each opaque bearer token was first seen.
    Tokens,
    /// The latest idempotency key each natural key was sent with, for a minute
    /// ([`crate::engine::note_keyed_attempt`]): evidence of clients that make a new key for a
    /// retry. Always in process, whatever the ledger backend.
    SameBody,
}

impl Table {
    /// The prefix of the table's shared-data keys.
    pub fn prefix(self) -> &'static str {
        match self {
            Table::Attempts => KEY_PREFIX,
            Table::Tokens => TOKEN_KEY_PREFIX,
            Table::SameBody => SAME_BODY_KEY_PREFIX,
        }
    }
}

/// The secret the set index is keyed with: 128 random bits the proxy makes once and every VM
/// of the plugin reads from shared data ([`IndexKey::shared`]). A caller who knows a
/// fingerprint (a 428 prints one) still cannot tell which set holds it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IndexKey([u8; 16]);

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IndexKey(..)")
    }
}

impl IndexKey {
    /// A key from its bytes (tests and tools; the filter uses [`IndexKey::shared`]).
    pub fn new(bytes: [u8; 16]) -> IndexKey {
        IndexKey(bytes)
    }

    /// The plugin's key from shared data, made from `fresh()` (128 random bits) when no VM
    /// has made it yet; also says whether this call made it.
    ///
    /// Envoy configures a plugin once on the main thread (a configuration check) before any
    /// worker VM starts, so in Envoy the first call makes the key and every later one reads
    /// it. Shared data has no insert-if-absent, so for hosts that configure VMs concurrently
    /// the key is created empty first and then filled with a CAS-checked write: of two VMs
    /// filling it at once one wins and the other reads the winner's key.
    pub fn shared<S: SharedStore>(
        store: &S,
        fresh: impl FnOnce() -> Option<[u8; 16]>,
    ) -> Result<(IndexKey, bool), LedgerError> {
        let current = match store.get(INDEX_KEY_KEY)? {
            Some(v) => v,
            None => {
                store.set(INDEX_KEY_KEY, &[], 0)?;
                store.get(INDEX_KEY_KEY)?.unwrap_or_default()
            }
        };
        if let Ok(bytes) = <[u8; 16]>::try_from(current.0.as_slice()) {
            return Ok((IndexKey(bytes), false));
        }
        let bytes = fresh().ok_or(LedgerError::NoRandom)?;
        match store.set(INDEX_KEY_KEY, &bytes, current.1) {
            Ok(()) => Ok((IndexKey(bytes), true)),
            Err(LedgerError::CasMismatch) => match store.get(INDEX_KEY_KEY)? {
                Some((v, _)) => <[u8; 16]>::try_from(v.as_slice())
                    .map(|b| (IndexKey(b), false))
                    .map_err(|_| LedgerError::CasMismatch),
                None => Err(LedgerError::CasMismatch),
            },
            Err(e) => Err(e),
        }
    }

    /// The set of `id` among `sets` sets: SipHash-2-4 of the id under this key.
    fn set_of(&self, id: &[u8; 32], sets: u32) -> u32 {
        use std::hash::Hasher;
        let [k0, k1] = [&self.0[..8], &self.0[8..]]
            .map(|half| u64::from_le_bytes(half.try_into().unwrap_or_default()));
        #[allow(deprecated)] // SipHash-2-4 with our own key: what core's SipHasher is.
        let mut h = core::hash::SipHasher::new_with_keys(k0, k1);
        h.write(id);
        (h.finish() % u64::from(sets)) as u32
    }
}

/// One fingerprint's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Fingerprint digest (or token-record id).
    pub id: [u8; 32],
    /// First attempt of the current window, Unix milliseconds.
    pub first_seen_ms: u64,
    /// Latest attempt, Unix milliseconds; the entry lives [`Entry::window_seconds`] after it.
    pub last_attempt_ms: u64,
    /// How long the entry lives after its latest attempt: its route's window when it was
    /// written. 0 for an entry of ledger format 1 (before per-route windows), which lives the
    /// ledger's global window ([`Entry::is_live`]).
    pub window_seconds: u32,
    /// Attempts that reached the upstream path so far.
    pub attempts: u32,
    /// Outcome of the latest attempt.
    pub outcome: Outcome,
    /// Status of the latest attempt (0 = none yet).
    pub status: u16,
    /// SHA-256 of the body of the first attempt.
    pub body_digest: [u8; 32],
    /// Outstanding challenge.
    pub challenge: Option<[u8; 16]>,
    /// Most recently consumed challenge (to tell `already_used` from `wrong_challenge`).
    pub consumed: Option<[u8; 16]>,
    /// Written for a sensitive route: while live, never evicted to make room.
    pub sensitive: bool,
}

/// The most bytes of a workload identity a credential record keeps ([`Entry::set_holder`]).
pub const HOLDER_BYTES: usize = 64;

/// Encoded size of one entry (ledger format 2).
pub const ENTRY_BYTES: usize = 32 + 8 + 8 + 4 + 4 + 1 + 2 + 32 + 1 + 16 + 16;
/// Encoded size of an entry of ledger format 1: times in seconds, no window.
const ENTRY_BYTES_V1: usize = ENTRY_BYTES - 4;
const SET_HEADER: usize = 2;
const FORMAT: u8 = 2;
const FORMAT_V1: u8 = 1;

impl Entry {
    /// When the entry stops counting, Unix milliseconds; `global_window_seconds` is the window
    /// of an entry that has none of its own (ledger format 1).
    pub fn expires_at_ms(&self, global_window_seconds: u64) -> u64 {
        let window = match self.window_seconds {
            0 => global_window_seconds,
            w => u64::from(w),
        };
        self.last_attempt_ms
            .saturating_add(window.saturating_mul(1000))
    }

    /// Is the entry still within its window at `now_ms` (Unix milliseconds)? See
    /// [`Entry::expires_at_ms`].
    pub fn is_live(&self, now_ms: u64, global_window_seconds: u64) -> bool {
        now_ms < self.expires_at_ms(global_window_seconds)
    }

    /// The workload identity a credential record names as the credential's first holder
    /// ([`Entry::set_holder`]); `None` when none is recorded.
    pub fn holder(&self) -> Option<String> {
        let len = usize::from(self.status & 0x7f);
        if len == 0 || len > HOLDER_BYTES {
            return None;
        }
        let packed = self.packed_holder();
        let mut text = String::from_utf8(packed.get(..len)?.to_vec()).ok()?;
        if self.status & 0x80 != 0 {
            text.push('…');
        }
        Some(text)
    }

    /// Does the recorded holder stand for `identity` (compared as recorded: cut to
    /// [`HOLDER_BYTES`])?
    pub fn holder_is(&self, identity: &str) -> bool {
        let (packed, status) = pack_holder(identity);
        let len = usize::from(status & 0x7f);
        status == self.status && packed.get(..len) == self.packed_holder().get(..len)
    }

    /// Records `identity` as the credential's first holder in a credential record (whose
    /// digest and challenge fields are otherwise unused): its first [`HOLDER_BYTES`] bytes
    /// (cut at a character boundary), marked when cut.
    pub fn set_holder(&mut self, identity: &str) {
        let (packed, status) = pack_holder(identity);
        let [digest, challenge, consumed] = [&packed[..32], &packed[32..48], &packed[48..]];
        self.body_digest.copy_from_slice(digest);
        self.challenge = challenge.try_into().ok();
        self.consumed = consumed.try_into().ok();
        self.status = status;
    }

    /// The bytes a credential record keeps its holder in (see [`Entry::set_holder`]).
    fn packed_holder(&self) -> [u8; HOLDER_BYTES] {
        let mut packed = [0u8; HOLDER_BYTES];
        packed[..32].copy_from_slice(&self.body_digest);
        packed[32..48].copy_from_slice(&self.challenge.unwrap_or_default());
        packed[48..].copy_from_slice(&self.consumed.unwrap_or_default());
        packed
    }

    /// The entry's bytes as one record (the cluster ledger's value; a shared-data set holds
    /// several).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_BYTES);
        self.encode_into(&mut out);
        out
    }

    /// An entry from [`Entry::to_bytes`] (or the bytes of ledger format 1); `None` for bytes
    /// of another length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Entry> {
        match bytes.len() {
            ENTRY_BYTES => Entry::decode(bytes, FORMAT),
            ENTRY_BYTES_V1 => Entry::decode(bytes, FORMAT_V1),
            _ => None,
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.first_seen_ms.to_le_bytes());
        out.extend_from_slice(&self.last_attempt_ms.to_le_bytes());
        out.extend_from_slice(&self.window_seconds.to_le_bytes());
        out.extend_from_slice(&self.attempts.to_le_bytes());
        out.push(self.outcome.code());
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&self.body_digest);
        let flags = u8::from(self.challenge.is_some())
            | (u8::from(self.consumed.is_some()) << 1)
            | (u8::from(self.sensitive) << 2);
        out.push(flags);
        out.extend_from_slice(&self.challenge.unwrap_or_default());
        out.extend_from_slice(&self.consumed.unwrap_or_default());
    }

    /// One entry of ledger format `format` (format 1: times in seconds, no window).
    fn decode(b: &[u8], format: u8) -> Option<Entry> {
        let mut r = Reader(b);
        let id = r.array::<32>()?;
        let mut first_seen_ms = u64::from_le_bytes(r.array()?);
        let mut last_attempt_ms = u64::from_le_bytes(r.array()?);
        let mut window_seconds = 0;
        if format == FORMAT_V1 {
            first_seen_ms = first_seen_ms.saturating_mul(1000);
            last_attempt_ms = last_attempt_ms.saturating_mul(1000);
        } else {
            window_seconds = u32::from_le_bytes(r.array()?);
        }
        let attempts = u32::from_le_bytes(r.array()?);
        let outcome = Outcome::from_code(r.array::<1>()?[0])?;
        let status = u16::from_le_bytes(r.array()?);
        let body_digest = r.array::<32>()?;
        let flags = r.array::<1>()?[0];
        let challenge = r.array::<16>()?;
        let consumed = r.array::<16>()?;
        Some(Entry {
            id,
            first_seen_ms,
            last_attempt_ms,
            window_seconds,
            attempts,
            outcome,
            status,
            body_digest,
            challenge: (flags & 1 != 0).then_some(challenge),
            consumed: (flags & 2 != 0).then_some(consumed),
            sensitive: flags & 4 != 0,
        })
    }
}

/// `identity` as a credential record keeps it: its first [`HOLDER_BYTES`] bytes, cut at a
/// character boundary, and the status that says how many (bit 7: it was cut).
fn pack_holder(identity: &str) -> ([u8; HOLDER_BYTES], u16) {
    let mut end = identity.len().min(HOLDER_BYTES);
    while !identity.is_char_boundary(end) {
        end -= 1;
    }
    let mut packed = [0u8; HOLDER_BYTES];
    for (slot, b) in packed.iter_mut().zip(identity.as_bytes().iter().take(end)) {
        *slot = *b;
    }
    (
        packed,
        end as u16 | if end < identity.len() { 0x80 } else { 0 },
    )
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }
}

/// The entries of one set key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Set(pub Vec<Entry>);

impl Set {
    /// Encodes the set: format byte, count, fixed-size entries.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SET_HEADER + self.0.len() * ENTRY_BYTES);
        out.push(FORMAT);
        out.push(u8::try_from(self.0.len()).unwrap_or(0));
        for e in &self.0 {
            e.encode_into(&mut out);
        }
        out
    }

    /// Decodes a set (of this format or of format 1, whose entries live the global window);
    /// an empty value is an empty set. `None` if the bytes are not a set of either format (the
    /// caller treats that as empty and overwrites it).
    pub fn decode(bytes: &[u8]) -> Option<Set> {
        if bytes.is_empty() {
            return Some(Set::default());
        }
        let (&[format, count], rest) = bytes.split_first_chunk::<SET_HEADER>()?;
        let count = usize::from(count);
        let size = match format {
            FORMAT => ENTRY_BYTES,
            FORMAT_V1 => ENTRY_BYTES_V1,
            _ => return None,
        };
        if count > WAYS || rest.len() != count * size {
            return None;
        }
        rest.chunks_exact(size)
            .map(|b| Entry::decode(b, format))
            .collect::<Option<Vec<_>>>()
            .map(Set)
    }

    /// The set after writing `entry` at `now_ms`: expired entries and the old record of the same
    /// id dropped, and if the set is still full, its oldest live entry that is neither
    /// [`Entry::sensitive`] nor in flight evicted. Returns whether a live entry was evicted, or
    /// `None` when every entry is live and sensitive or in flight (nothing may make room: the
    /// write is refused). An attempt in flight is never forgotten: its outcome could otherwise
    /// land on a successor's identical entry.
    /// `global_window_seconds` is the window of format-1 entries ([`Entry::is_live`]).
    pub fn with(
        &self,
        entry: &Entry,
        now_ms: u64,
        global_window_seconds: u64,
    ) -> Option<(Set, bool)> {
        let mut kept: Vec<Entry> = self
            .0
            .iter()
            .filter(|e| e.id != entry.id && e.is_live(now_ms, global_window_seconds))
            .cloned()
            .collect();
        let mut evicted = false;
        while kept.len() >= WAYS {
            let oldest = kept
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.sensitive && e.outcome != Outcome::InFlight)
                .min_by_key(|(_, e)| e.last_attempt_ms)
                .map(|(i, _)| i)?;
            kept.remove(oldest);
            evicted = true;
        }
        kept.push(entry.clone());
        Some((Set(kept), evicted))
    }
}

/// Why the ledger (or the store under it) could not do what it was asked. Its `Display` says
/// what failed, on which key, and what the host answered, for the operator's log.
///
/// Stored bytes that are not a set of this format are not an error: [`SlotLedger`] reads them
/// as an empty set and overwrites them with its next write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerError {
    /// Reading a key failed: the host answered `status` to `proxy_get_shared_data`.
    Get {
        /// The shared-data key.
        key: String,
        /// The proxy-wasm status the host returned.
        status: u32,
    },
    /// Writing a key failed for another reason than a CAS mismatch: the host answered `status`
    /// to `proxy_set_shared_data`.
    Set {
        /// The shared-data key.
        key: String,
        /// The proxy-wasm status the host returned.
        status: u32,
    },
    /// A conditional write found the key's CAS changed: somebody else wrote first.
    /// [`SharedStore::set`] returns it; [`SlotLedger`] turns it into [`Commit::Conflict`].
    CasMismatch,
    /// The store is unusable (the in-memory store's lock was poisoned by a panic).
    StoreUnavailable,
    /// The host's `random_get` failed, so no set-index secret could be made.
    NoRandom,
    /// Other workers wrote the same ledger set at every one of
    /// [`MAX_LEDGER_ROUNDS`](crate::engine::MAX_LEDGER_ROUNDS) attempts, so `what` was not
    /// recorded.
    Contention {
        /// The record that was not written.
        what: Record,
    },
}

/// A ledger record an update was for, in [`LedgerError::Contention`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// The outcome of an attempt.
    Outcome,
    /// When an opaque bearer token was first seen (its age).
    TokenAge,
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (doing, key, status) = match self {
            LedgerError::Get { key, status } => ("reading", key, status),
            LedgerError::Set { key, status } => ("writing", key, status),
            LedgerError::CasMismatch => {
                return f.write_str("ledger write lost a race: the key changed since it was read");
            }
            LedgerError::StoreUnavailable => {
                return f
                    .write_str("the in-memory ledger store is unusable: its lock was poisoned");
            }
            LedgerError::NoRandom => {
                return f.write_str(
                    "the host's random_get failed, so the ledger's set-index secret could not be made",
                );
            }
            LedgerError::Contention { what } => {
                return f.write_str(match what {
                    Record::Outcome => "ledger contention: outcome not recorded (other workers kept writing the same ledger set)",
                    Record::TokenAge => "ledger contention: token age not recorded (other workers kept writing the same ledger set)",
                });
            }
        };
        write!(
            f,
            "{doing} ledger key {key} in Envoy shared data failed: host status {status}"
        )
    }
}

impl std::error::Error for LedgerError {}

/// Envoy shared data, as the ledger needs it (`proxy_get_shared_data` /
/// `proxy_set_shared_data`, with Envoy's rules: CAS 0 overwrites, CAS is not checked for a
/// missing key).
pub trait SharedStore {
    /// The value and its CAS, or `None` if the key does not exist.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, LedgerError>;
    /// Writes `value` if the key's CAS still equals `cas` (0: unconditionally);
    /// [`LedgerError::CasMismatch`] if it does not.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), LedgerError>;
}

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Written; `evicted` if another live entry made room.
    Stored {
        /// A live entry was evicted.
        evicted: bool,
    },
    /// Somebody else wrote since the snapshot: load and decide again.
    Conflict,
    /// Not written: the set is full of live entries of sensitive routes, and forgetting one
    /// would let its retry pass. The route's fail policy decides the request.
    Full,
}

/// The ledger interface the stream state machine decides against (see the module
/// documentation); failures are [`LedgerError`]s.
pub trait Ledger {
    /// What a load returns and a commit is conditional on.
    type Snapshot;
    /// Loads the live entry for `id` at `now_ms` (Unix milliseconds).
    fn load(&self, id: &[u8; 32], now_ms: u64) -> Result<Self::Snapshot, LedgerError>;
    /// The live entry in a snapshot.
    fn entry(snapshot: &Self::Snapshot) -> Option<&Entry>;
    /// Writes `entry` at `now_ms` if nothing changed since `snapshot`.
    fn commit(
        &self,
        snapshot: &Self::Snapshot,
        entry: &Entry,
        now_ms: u64,
    ) -> Result<Commit, LedgerError>;
}

/// The in-process ledger over Envoy shared data: one [`Table`].
pub struct SlotLedger<S> {
    store: S,
    table: Table,
    sets: u32,
    /// The global window: how long an entry of ledger format 1 lives.
    window_seconds: u64,
    index_key: IndexKey,
}

/// A [`SlotLedger`] snapshot: the set as read and its CAS.
#[derive(Clone, Debug)]
pub struct SlotSnapshot {
    key: String,
    cas: u32,
    set: Set,
    live: Option<Entry>,
}

impl<S: SharedStore> SlotLedger<S> {
    /// The `table` of `max_entries` entries (rounded up to whole sets), its sets chosen with
    /// `index_key`; entries written before per-route windows (ledger format 1) live
    /// `window_seconds`.
    pub fn new(
        store: S,
        table: Table,
        max_entries: u32,
        window_seconds: u64,
        index_key: IndexKey,
    ) -> SlotLedger<S> {
        SlotLedger {
            store,
            table,
            sets: max_entries.div_ceil(WAYS as u32).max(1),
            window_seconds,
            index_key,
        }
    }

    /// The table this ledger works on.
    pub fn table(&self) -> Table {
        self.table
    }

    /// Number of set keys.
    pub fn sets(&self) -> u32 {
        self.sets
    }

    /// The shared-data key of set `i` of `table` (written without `format!`: this runs on
    /// every tracked request, twice or more).
    pub fn key(table: Table, i: u32) -> String {
        let prefix = table.prefix();
        let mut k = String::with_capacity(prefix.len() + 10);
        k.push_str(prefix);
        crate::json::push_u64(&mut k, u64::from(i));
        k
    }

    /// The set `id` lives in.
    pub fn set_of(&self, id: &[u8; 32]) -> u32 {
        self.index_key.set_of(id, self.sets)
    }

    /// Creates every set key that does not exist yet (empty value), so later writes are all
    /// CAS-checked. Run once per VM at configure time, before the VM serves requests.
    /// Returns how many keys this call created.
    pub fn ensure_slots(&self) -> Result<u32, LedgerError> {
        let mut created = 0;
        for i in 0..self.sets {
            let key = Self::key(self.table, i);
            if self.store.get(&key)?.is_none() {
                match self.store.set(&key, &[], 0) {
                    Ok(()) => created += 1,
                    Err(LedgerError::CasMismatch) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(created)
    }

    /// Store access for callers that need it (tests, tooling).
    pub fn store(&self) -> &S {
        &self.store
    }
}

impl<S: SharedStore> Ledger for SlotLedger<S> {
    type Snapshot = SlotSnapshot;

    fn load(&self, id: &[u8; 32], now_ms: u64) -> Result<SlotSnapshot, LedgerError> {
        let key = Self::key(self.table, self.set_of(id));
        let (set, cas) = match self.store.get(&key)? {
            Some((bytes, cas)) => (Set::decode(&bytes).unwrap_or_default(), cas),
            None => (Set::default(), 0),
        };
        let live = set
            .0
            .iter()
            .find(|e| e.id == *id && e.is_live(now_ms, self.window_seconds))
            .cloned();
        Ok(SlotSnapshot {
            key,
            cas,
            set,
            live,
        })
    }

    fn entry(snapshot: &SlotSnapshot) -> Option<&Entry> {
        snapshot.live.as_ref()
    }

    fn commit(
        &self,
        snap: &SlotSnapshot,
        entry: &Entry,
        now_ms: u64,
    ) -> Result<Commit, LedgerError> {
        let Some((set, evicted)) = snap.set.with(entry, now_ms, self.window_seconds) else {
            return Ok(Commit::Full);
        };
        match self.store.set(&snap.key, &set.encode(), snap.cas) {
            Ok(()) => Ok(Commit::Stored { evicted }),
            Err(LedgerError::CasMismatch) => Ok(Commit::Conflict),
            Err(e) => Err(e),
        }
    }
}

/// An in-memory [`SharedStore`] with Envoy's exact CAS rules (proxy-wasm-cpp-host
/// `shared_data.cc`): CAS values increase per write, CAS 0 overwrites, and CAS is not checked
/// when the key does not exist. For native tests and tools.
#[derive(Default)]
pub struct MemoryStore {
    inner: std::sync::Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    map: std::collections::HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl MemoryStore {
    /// Number of keys ever created.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.map.len()).unwrap_or(0)
    }

    /// True if no key exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, LedgerError> {
        let g = self
            .inner
            .lock()
            .map_err(|_| LedgerError::StoreUnavailable)?;
        Ok(g.map.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), LedgerError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| LedgerError::StoreUnavailable)?;
        g.next_cas = g.next_cas.wrapping_add(1).max(1);
        let next = g.next_cas;
        match g.map.get_mut(key) {
            Some(slot) => {
                if cas != 0 && cas != slot.1 {
                    return Err(LedgerError::CasMismatch);
                }
                *slot = (value.to_vec(), next);
            }
            None => {
                g.map.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        Ok(())
    }
}

impl<T: SharedStore> SharedStore for &T {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, LedgerError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), LedgerError> {
        (**self).set(key, value, cas)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn entry(id: u8, last: u64) -> Entry {
        Entry {
            id: [id; 32],
            first_seen_ms: last * 1000,
            last_attempt_ms: last * 1000,
            window_seconds: 900,
            attempts: 1,
            outcome: Outcome::Succeeded,
            status: 200,
            body_digest: [3; 32],
            challenge: Some([5; 16]),
            consumed: None,
            sensitive: false,
        }
    }

    /// The attempt table of `max_entries` over `store`, with a fixed index key.
    pub(crate) fn slots<S: SharedStore>(store: S, max_entries: u32) -> SlotLedger<S> {
        SlotLedger::new(
            store,
            Table::Attempts,
            max_entries,
            900,
            IndexKey::new([7; 16]),
        )
    }

    #[test]
    fn an_attempt_in_flight_is_never_evicted() {
        let in_flight = |id, last| Entry {
            outcome: Outcome::InFlight,
            status: 0,
            ..entry(id, last)
        };
        // A full set: entry 2 answered, the others in flight, entry 1 the oldest.
        let s = Set((1..=WAYS as u8)
            .map(|i| match i {
                2 => entry(2, 110),
                _ => in_flight(i, 100 + u64::from(i) * 2),
            })
            .collect());
        // The oldest entry is in flight: the oldest answered one makes room instead.
        let (after, evicted) = s.with(&entry(99, 200), 200_000, 900).unwrap();
        assert!(evicted);
        let ids: Vec<u8> = after.0.iter().map(|e| e.id[0]).collect();
        let mut expected: Vec<u8> = (1..=WAYS as u8).filter(|&i| i != 2).collect();
        expected.push(99);
        assert_eq!(ids, expected);
        // A set of attempts in flight refuses a new record (the route's fail policy decides).
        let full = Set((1..=WAYS as u8).map(|i| in_flight(i, 100)).collect());
        assert_eq!(full.with(&entry(99, 200), 200_000, 900), None);
        // Once expired, an entry in flight no longer holds its place.
        assert!(full.with(&entry(99, 2000), 2_000_000, 900).is_some());
    }

    #[test]
    fn entries_of_ledger_format_1_are_read_and_live_the_global_window() {
        // Format 1 (before per-route windows): times in Unix seconds, no window.
        let mut v1 = vec![FORMAT_V1, 1];
        v1.extend_from_slice(&[1; 32]);
        v1.extend_from_slice(&100u64.to_le_bytes());
        v1.extend_from_slice(&160u64.to_le_bytes());
        v1.extend_from_slice(&2u32.to_le_bytes());
        v1.push(Outcome::Succeeded.code());
        v1.extend_from_slice(&200u16.to_le_bytes());
        v1.extend_from_slice(&[3; 32]);
        v1.push(4); // sensitive
        v1.extend_from_slice(&[0; 32]);
        assert_eq!(v1.len(), 2 + ENTRY_BYTES_V1);
        let set = Set::decode(&v1).unwrap();
        let e = &set.0[0];
        assert_eq!(
            (
                e.first_seen_ms,
                e.last_attempt_ms,
                e.window_seconds,
                e.attempts
            ),
            (100_000, 160_000, 0, 2)
        );
        assert!(e.sensitive && e.outcome == Outcome::Succeeded && e.status == 200);
        assert_eq!(Entry::from_bytes(&v1[2..]).as_ref(), Some(e));
        // It lives the ledger's global window after its latest attempt.
        assert!(e.is_live(160_000 + 899_999, 900));
        assert!(!e.is_live(160_000 + 900_000, 900));
        // Rewritten, it is format 2 with its own window.
        let mut again = e.clone();
        again.window_seconds = 30;
        assert_eq!(
            Set::decode(&Set(vec![again.clone()]).encode()).unwrap().0,
            [again]
        );
    }

    #[test]
    fn entries_round_trip_and_bad_bytes_are_rejected() {
        let s = Set(vec![entry(1, 10), entry(2, 20)]);
        let bytes = s.encode();
        assert_eq!(bytes.len(), 2 + 2 * ENTRY_BYTES);
        assert_eq!(Set::decode(&bytes), Some(s));
        assert_eq!(Set::decode(&[]), Some(Set::default()));
        assert_eq!(Set::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Set::decode(&[9, 0]), None);
        assert_eq!(Set::decode(&[1, 200]), None);
    }

    #[test]
    fn a_credential_record_keeps_its_first_holder() {
        let mut e = entry(1, 100);
        assert_eq!(e.holder(), None, "status 0: no holder");
        e.set_holder("spiffe://cluster.local/ns/ci/sa/deployer");
        assert_eq!(
            Entry::from_bytes(&e.to_bytes())
                .and_then(|e| e.holder())
                .as_deref(),
            Some("spiffe://cluster.local/ns/ci/sa/deployer")
        );
        let long = format!("spiffe://cluster.local/ns/{}/sa/é", "n".repeat(40));
        e.set_holder(&long);
        let kept = e.holder().unwrap();
        assert!(
            kept.ends_with('…') && long.starts_with(kept.trim_end_matches('…')),
            "{kept}"
        );
        // A cut inside a two-byte character backs up to its start.
        e.set_holder(&format!("{}é", "x".repeat(63)));
        assert_eq!(e.holder().unwrap(), format!("{}…", "x".repeat(63)));
    }

    #[test]
    fn full_set_evicts_its_oldest_entry() {
        let s = Set((1..=WAYS as u8)
            .map(|i| entry(i, 100 + u64::from(i)))
            .collect());
        let (s2, evicted) = s.with(&entry(99, 200), 200 * 1000, 900).unwrap();
        assert!(evicted);
        assert_eq!(s2.0.len(), WAYS);
        assert!(!s2.0.iter().any(|e| e.id == [1; 32]), "oldest went");
        // Expired entries make room without counting as evictions.
        let (s3, evicted) = s.with(&entry(99, 2000), 2000 * 1000, 900).unwrap();
        assert!(!evicted);
        assert_eq!(s3.0.len(), 1);
        // Rewriting an id replaces it.
        let (s4, evicted) = s.with(&entry(2, 300), 300 * 1000, 900).unwrap();
        assert!(!evicted);
        assert_eq!(s4.0.len(), WAYS);
    }

    #[test]
    fn memory_store_has_envoys_cas_rules() {
        let m = MemoryStore::default();
        assert_eq!(m.get("k").unwrap(), None);
        m.set("k", b"a", 12345).unwrap(); // CAS not checked for a missing key
        let (_, cas) = m.get("k").unwrap().unwrap();
        assert_eq!(
            m.set("k", b"b", cas.wrapping_add(1)),
            Err(LedgerError::CasMismatch)
        );
        m.set("k", b"b", cas).unwrap();
        assert_eq!(
            m.set("k", b"c", cas),
            Err(LedgerError::CasMismatch),
            "stale CAS"
        );
        m.set("k", b"d", 0).unwrap(); // 0 overwrites
        assert_eq!(m.get("k").unwrap().unwrap().0, b"d");
    }

    #[test]
    fn ledger_commits_conditionally_and_stays_bounded() {
        let store = MemoryStore::default();
        let l = slots(&store, 16);
        assert_eq!(l.ensure_slots().unwrap(), 16 / WAYS as u32);
        assert_eq!(l.ensure_slots().unwrap(), 0, "idempotent");
        let e = entry(1, 100);
        let a = l.load(&e.id, 100_000).unwrap();
        let b = l.load(&e.id, 100_000).unwrap();
        assert!(SlotLedger::<&MemoryStore>::entry(&a).is_none());
        assert_eq!(
            l.commit(&a, &e, 100_000).unwrap(),
            Commit::Stored { evicted: false }
        );
        assert_eq!(
            l.commit(&b, &e, 100_000).unwrap(),
            Commit::Conflict,
            "second writer loses"
        );
        let c = l.load(&e.id, 100_000).unwrap();
        assert_eq!(SlotLedger::<&MemoryStore>::entry(&c), Some(&e));
        let expired = l.load(&e.id, (100 + 900) * 1000).unwrap();
        assert!(SlotLedger::<&MemoryStore>::entry(&expired).is_none());
        // A flood of unique ids never creates keys beyond the table.
        let mut evictions = 0;
        for i in 0..10_000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            id[4] = 1;
            let mut e = entry(0, 200);
            e.id = id;
            let s = l.load(&id, 200_000).unwrap();
            if let Commit::Stored { evicted: true } = l.commit(&s, &e, 200_000).unwrap() {
                evictions += 1;
            }
        }
        assert_eq!(store.len(), 16 / WAYS);
        assert!(evictions >= 10_000 - 16);
    }

    #[test]
    fn live_sensitive_entries_are_never_evicted_and_the_full_set_refuses() {
        let sensitive = |id, last| Entry {
            sensitive: true,
            ..entry(id, last)
        };
        let s = Set((1..=WAYS as u8)
            .map(|i| sensitive(i, 100 + u64::from(i)))
            .collect());
        assert_eq!(s.with(&entry(99, 200), 200 * 1000, 900), None, "refused");
        assert_eq!(
            s.with(&sensitive(99, 200), 200 * 1000, 900),
            None,
            "refused"
        );
        // The same id still updates in place; an expired sensitive entry makes room.
        assert!(s.with(&sensitive(2, 300), 300 * 1000, 900).is_some());
        assert_eq!(
            s.with(&entry(99, 1002), 1002 * 1000, 900).map(|(_, ev)| ev),
            Some(false)
        );
        // With one entry that is not sensitive, that one goes, however young it is.
        let mut mixed = s.clone();
        mixed.0[WAYS - 1].sensitive = false;
        let (after, evicted) = mixed.with(&sensitive(99, 200), 200 * 1000, 900).unwrap();
        assert!(evicted);
        assert!(!after.0.iter().any(|e| e.id == [WAYS as u8; 32]));
        assert!(after.0.iter().all(|e| e.sensitive));
        // The flag survives encoding (shared-data sets and etcd values alike).
        assert_eq!(Set::decode(&s.encode()), Some(s.clone()));
        assert_eq!(Entry::from_bytes(&s.0[0].to_bytes()), Some(s.0[0].clone()));
    }

    #[test]
    fn a_full_table_of_sensitive_entries_refuses_instead_of_forgetting() {
        let store = MemoryStore::default();
        let l = slots(&store, 16);
        l.ensure_slots().unwrap();
        let (mut stored, mut refused) = (Vec::new(), 0);
        for i in 0..200u32 {
            let mut e = entry(0, 100);
            e.id[..4].copy_from_slice(&i.to_le_bytes());
            e.sensitive = true;
            let snap = l.load(&e.id, 100_000).unwrap();
            match l.commit(&snap, &e, 100_000).unwrap() {
                Commit::Stored { evicted } => {
                    assert!(!evicted, "a live sensitive entry was evicted");
                    stored.push(e.id);
                }
                Commit::Full => refused += 1,
                Commit::Conflict => unreachable!(),
            }
        }
        assert_eq!(stored.len(), 16, "the table fills up");
        assert_eq!(refused, 200 - 16);
        for id in &stored {
            assert!(SlotLedger::<&MemoryStore>::entry(&l.load(id, 100_000).unwrap()).is_some());
        }
    }

    /// The README's sizing advice: in a default table filled at random with live sensitive
    /// entries (four set-index secrets), nothing is refused below 10% of `max_entries`, and
    /// fewer than 0.1% of new records up to 25%.
    #[test]
    fn refusals_stay_rare_while_the_table_is_lightly_used() {
        const MAX: u32 = 65_536;
        // Each table is filled to a quarter of `max_entries`, under each of four secrets.
        const FILL: u32 = MAX / 4;
        const SECRETS: u8 = 4;
        let (mut refused, mut firsts) = (0u32, Vec::new());
        for secret in 1..=SECRETS {
            let store = MemoryStore::default();
            let l = SlotLedger::new(
                &store,
                Table::Attempts,
                MAX,
                900,
                IndexKey::new([secret; 16]),
            );
            let mut first_refusal = None;
            for i in 0..FILL {
                let mut e = entry(0, 100);
                e.id[..4].copy_from_slice(&i.to_le_bytes());
                e.sensitive = true;
                let snap = l.load(&e.id, 100_000).unwrap();
                if l.commit(&snap, &e, 100_000).unwrap() == Commit::Full {
                    refused += 1;
                    first_refusal.get_or_insert(i);
                }
            }
            firsts.push(first_refusal.unwrap_or(MAX));
        }
        println!("first refusals at entries {firsts:?} of {MAX}; {refused} refused up to 25%");
        assert!(
            firsts.iter().all(|&f| f >= MAX / 10),
            "first refusals at entries {firsts:?}"
        );
        assert!(
            refused < u32::from(SECRETS) * FILL / 1000,
            "{refused} refused"
        );
    }

    #[test]
    fn the_set_index_is_keyed_and_the_tables_are_apart() {
        let store = MemoryStore::default();
        let a = SlotLedger::new(&store, Table::Attempts, 4096, 900, IndexKey::new([1; 16]));
        let b = SlotLedger::new(&store, Table::Attempts, 4096, 900, IndexKey::new([2; 16]));
        // Ids that agree in their first bytes (what a fingerprint shows) land in unrelated
        // sets, and another key puts them elsewhere again.
        let ids: Vec<[u8; 32]> = (0..64u8)
            .map(|i| {
                let mut id = [9; 32];
                id[31] = i;
                id
            })
            .collect();
        let sets_a: std::collections::HashSet<u32> = ids.iter().map(|id| a.set_of(id)).collect();
        assert!(sets_a.len() > 56, "{} distinct sets", sets_a.len());
        let same = ids.iter().filter(|id| a.set_of(id) == b.set_of(id)).count();
        assert!(same < 4, "{same} ids in the same set under both keys");
        // A token record never shares a key with an attempt record.
        let t = SlotLedger::new(&store, Table::Tokens, 4096, 900, IndexKey::new([1; 16]));
        t.ensure_slots().unwrap();
        a.ensure_slots().unwrap();
        assert_eq!(store.len(), 2 * 4096 / WAYS);
        let e = entry(3, 100);
        let snap = t.load(&e.id, 100_000).unwrap();
        t.commit(&snap, &e, 100_000).unwrap();
        assert!(SlotLedger::<&MemoryStore>::entry(&a.load(&e.id, 100_000).unwrap()).is_none());
        assert!(SlotLedger::<&MemoryStore>::entry(&t.load(&e.id, 100_000).unwrap()).is_some());
    }

    #[test]
    fn the_index_key_is_made_once_and_read_by_every_later_vm() {
        let store = MemoryStore::default();
        let (first, made) = IndexKey::shared(&store, || Some([4; 16])).unwrap();
        assert!(made);
        let (second, made) = IndexKey::shared(&store, || Some([5; 16])).unwrap();
        assert!(!made);
        assert_eq!(first, second);
        assert_eq!(
            IndexKey::shared(&MemoryStore::default(), || None),
            Err(LedgerError::NoRandom)
        );
        // A VM that finds the key created but still empty (another VM between its two
        // writes) fills it with CAS; the loser of that race reads the winner's key.
        let racing = MemoryStore::default();
        racing.set(INDEX_KEY_KEY, &[], 0).unwrap();
        let (_, cas) = racing.get(INDEX_KEY_KEY).unwrap().unwrap();
        let (winner, made) = IndexKey::shared(&racing, || Some([6; 16])).unwrap();
        assert!(made);
        assert_eq!(
            racing.set(INDEX_KEY_KEY, &[8; 16], cas),
            Err(LedgerError::CasMismatch)
        );
        assert_eq!(
            IndexKey::shared(&racing, || Some([8; 16])).unwrap(),
            (winner, false)
        );
        assert_eq!(
            format!("{winner:?}"),
            "IndexKey(..)",
            "the secret is not logged"
        );
    }

    /// A store whose host answers every call with `InternalFailure` (status 10).
    pub(crate) struct FailingStore;

    impl SharedStore for FailingStore {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, LedgerError> {
            Err(LedgerError::Get {
                key: key.to_string(),
                status: 10,
            })
        }
        fn set(&self, key: &str, _: &[u8], _: u32) -> Result<(), LedgerError> {
            Err(LedgerError::Set {
                key: key.to_string(),
                status: 10,
            })
        }
    }

    #[test]
    fn store_failures_reach_the_caller_typed_and_say_what_failed() {
        let l = slots(FailingStore, 4);
        let e = l.ensure_slots().unwrap_err();
        assert_eq!(
            e,
            LedgerError::Get {
                key: "retry-guard/v3/a/0".into(),
                status: 10
            }
        );
        assert_eq!(
            e.to_string(),
            "reading ledger key retry-guard/v3/a/0 in Envoy shared data failed: host status 10"
        );
        assert!(matches!(
            l.load(&[0; 32], 1_000),
            Err(LedgerError::Get { .. })
        ));
        let snap = slots(MemoryStore::default(), 4)
            .load(&[0; 32], 1_000)
            .unwrap();
        let e = l.commit(&snap, &entry(0, 1_000), 1).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "writing ledger key retry-guard/v3/a/0 in Envoy shared data failed: host status 10"
            ),
            "{e}"
        );
        assert!(LedgerError::Contention {
            what: Record::Outcome
        }
        .to_string()
        .starts_with("ledger contention: outcome not recorded"));
    }

    #[test]
    fn corrupt_sets_read_as_empty() {
        let store = MemoryStore::default();
        store
            .set(
                &SlotLedger::<&MemoryStore>::key(Table::Attempts, 0),
                b"garbage",
                0,
            )
            .unwrap();
        let l = slots(&store, 4);
        let s = l.load(&[0; 32], 1_000).unwrap();
        assert!(SlotLedger::<&MemoryStore>::entry(&s).is_none());
        assert_eq!(
            l.commit(&s, &entry(0, 1_000), 1).unwrap(),
            Commit::Stored { evicted: false }
        );
    }
}
